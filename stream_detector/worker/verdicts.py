"""The worker's verdict follower: moderators' verdicts into the ``VerdictBook``, at once.

Every worker reads the whole verdicts topic (a global table, no consumer group): at start
from the beginning, before an event is consumed (the allowlists hold from the first
decision after a restart or a rebalance), then as it grows. Verdicts are human-rate and
small, so the book lives in memory; what a verdict *did* to a video lives in its decision
state in Redis (``moderation``), so a replay applies nothing twice.

A new verdict on a video marks it due now in the partition its events come from (the
window's header knows it): the owner's next scoring pass (within a second) withdraws its
flag. A bad verdict is dead-lettered with its reason; an episode verdict naming a flag the
worker has not seen is kept ``DETECTOR_VERDICT_PENDING_SECONDS`` and then dead-lettered as
``unknown_flag`` (once, whichever worker gets there first: a Redis ``SET NX`` decides).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_detector import keys
from stream_detector.events import Rejection
from stream_detector.moderation import VerdictBook
from stream_detector.schedule import now_ms
from stream_detector.verdicts import Verdict, parse_verdict
from stream_detector.worker.context import WorkerContext

log = logging.getLogger("stream_detector.verdicts")

SWEEP_S = 1.0  # pending verdicts are looked at this often
JUDGED_WINDOW = 200  # judged precision over the last this many confirmed / false-positive verdicts
CATCH_UP_TIMEOUT_S = 60.0
DLQ_ONCE_S = 14 * 24 * 3600  # an unknown flag's verdict is dead-lettered once within this (older: not again)


@dataclass
class Pending:
    verdict: Verdict
    raw: bytes
    tp: TopicPartition
    offset: int
    deadline: float


class VerdictFollower:
    def __init__(self, ctx: WorkerContext, book: VerdictBook) -> None:
        self.ctx = ctx
        self.book = book
        self.topic = ctx.settings.verdicts_topic
        self.consumer: AIOKafkaConsumer | None = None
        self.pending: dict[str, Pending] = {}
        self.judged: deque[bool] = deque(maxlen=JUDGED_WINDOW)  # True: confirmed
        self.invalid = 0
        self.applied_at_start = 0

    async def start(self) -> None:
        s = self.ctx.settings
        self.consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest")
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not parts and time.monotonic() < deadline:  # metadata of a topic created just now
            await self.consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
            parts = self.consumer.partitions_for_topic(self.topic) or set()
            if not parts:
                await asyncio.sleep(0.2)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if not tps:
            raise RuntimeError(f"verdicts topic {self.topic} has no partitions (DETECTOR_VERDICTS_TOPIC)")
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        end = await self.consumer.end_offsets(tps)
        while [tp for tp in tps if await self.consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"verdicts topic {self.topic} not read to its end within {CATCH_UP_TIMEOUT_S:g} s")
            await self.take(await self.consumer.getmany(timeout_ms=500), replay=True)
        log.info("verdicts %s read: %d allowlists, %d pending, %d invalid", self.topic,
                 len(self.book.active_allowlists(time.time())), len(self.pending), self.invalid)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def run(self) -> None:
        """Follow the topic and sweep the pending verdicts, until the worker stops."""
        assert self.consumer is not None
        last_sweep = 0.0
        while not self.ctx.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200)
            await self.take(batch, replay=False)
            if time.monotonic() - last_sweep >= SWEEP_S:
                last_sweep = time.monotonic()
                if self.pending:  # a guarded call that touches no Redis would mark Redis up
                    await self.ctx.guard.call("redis", "verdict sweep", self.sweep, self.ctx.stopping)

    async def take(self, batch: dict, *, replay: bool) -> None:
        ctx, m = self.ctx, self.ctx.metrics
        dead, due, users = [], [], set()
        for tp, records in batch.items():
            for rec in records:
                got = parse_verdict(rec.value, key=f"{tp.partition}:{rec.offset}")
                if isinstance(got, Rejection):
                    self.invalid += 1
                    if not replay:  # a replayed bad verdict was dead-lettered when it first came
                        dead.append((rec, tp, got))
                    continue
                self.book.add(got)
                if got.verdict in ("confirmed", "false_positive") and got.flag_id is not None:
                    self.judged.append(got.verdict == "confirmed")
                    m.judged_precision.set(sum(self.judged) / len(self.judged))
                    m.judged_verdicts.set(len(self.judged))
                if not replay:
                    m.verdicts.labels(verdict=got.verdict, scope=got.scope).inc()
                    log.info("verdict %s scope=%s flag_id=%s video=%s user=%s reviewer=%s", got.verdict, got.scope,
                             got.flag_id, got.video_id, got.user_id, got.reviewer)
                arrived = (rec.timestamp / 1000.0) if rec.timestamp else time.time()
                if got.scope == "episode" and got.verdict == "false_positive" and arrived > time.time() - DLQ_ONCE_S:
                    self.pending[got.key] = Pending(got, rec.value, tp, rec.offset,
                                                    arrived + ctx.settings.verdict_pending_seconds)
                if not replay or got.holds(time.time()):
                    if got.video_id is not None:
                        due.append(got)
                    elif got.user_id is not None:
                        users.add(got.user_id)
        # Redis and the broker come and go: retried as every other loop does (dependencies.py)
        if dead:
            await ctx.guard.call("broker", "verdict dead letters", lambda: self.dead_letter(dead), ctx.stopping)
        if due and ctx.windows is not None and ctx.schedule is not None:
            await ctx.guard.call("redis", "verdict marks", lambda: self.mark_due(due), ctx.stopping)
        if users and ctx.accounts is not None:  # account verdicts: judged again now, in their shards
            await ctx.guard.call("redis", "verdict marks", lambda: ctx.accounts.mark_due(users), ctx.stopping)

    async def mark_due(self, verdicts: list[Verdict]) -> None:
        """The videos named, due now in their partitions (a video never seen has no window)."""
        ctx = self.ctx
        ids = sorted({v.video_id for v in verdicts if v.video_id is not None})
        parts = await ctx.windows.partitions(ids)
        marks: dict[int, dict[str, int]] = {}
        now = now_ms()
        for vid, p in parts.items():
            if p is not None:
                marks.setdefault(p, {})[vid] = now
        if marks:
            await ctx.schedule.mark(marks)
        await self._observe_latency(verdicts)

    async def _observe_latency(self, verdicts: list[Verdict]) -> None:
        ctx = self.ctx
        judged = [v for v in verdicts if v.flag_id is not None and v.video_id is not None]
        if not judged:
            return
        raw = await ctx.redis.mget([ctx.flag_key(v.video_id) for v in judged])
        for v, doc in zip(judged, raw, strict=True):
            flagged_at = json.loads(doc).get("flagged_at") if doc else None
            if flagged_at:
                ctx.metrics.flag_to_verdict.observe(max(0.0, v.ts - float(flagged_at)))

    async def sweep(self) -> None:
        """Pending episode verdicts: applied ones are dropped; expired ones dead-lettered once."""
        ctx = self.ctx
        if not self.pending or ctx.redis is None:
            return
        items = list(self.pending.values())
        prefix = ctx.settings.key_prefix
        raw = await ctx.redis.mget([ctx.flag_key(p.verdict.video_id) if p.verdict.video_id is not None
                                    else keys.account_flag(prefix, p.verdict.user_id or "") for p in items])
        now = time.time()
        applied, expired = [], []
        for p, doc in zip(items, raw, strict=True):
            state = json.loads(doc) if doc else {}
            if p.verdict.flag_id in state.get("episode_ids", ()) or \
                    (state.get("cleared") or {}).get("flag_id") == p.verdict.flag_id:
                applied.append(p)
            elif now >= p.deadline:
                expired.append(p)
        first = [p for p in expired  # whichever worker gets there first dead-letters it
                 if await ctx.redis.set(keys.verdict_dead_lettered(prefix, p.verdict.key), 1, nx=True, ex=DLQ_ONCE_S)]
        if first:
            dead = [(_Record(p.raw, p.verdict.video_id or p.verdict.user_id, p.offset), p.tp,
                     Rejection("unknown_flag", f"flag_id {p.verdict.flag_id} not seen within "
                                               f"{ctx.settings.verdict_pending_seconds:g} s")) for p in first]
            await ctx.guard.call("broker", "verdict dead letters", lambda: self.dead_letter(dead), ctx.stopping)
        for p in applied + expired:
            self.pending.pop(p.verdict.key, None)

    async def dead_letter(self, dead: list[tuple]) -> None:
        """Bad verdicts to the dead-letter topic, as bad events go (``WorkerContext.send_dead_letters``)."""
        ctx = self.ctx
        await ctx.send_dead_letters(dead)
        for _, _, rejection in dead:
            ctx.metrics.verdicts_invalid.labels(reason=rejection.reason).inc()
            log.warning("verdict dead-lettered: %s (%s)", rejection.reason, rejection.detail)

    def status(self) -> dict:
        """``/verdicts``: what moderation has told this worker, and what it holds back."""
        now = time.time()
        return {
            "topic": self.topic,
            "counts": {f"{v}/{s}": n for (v, s), n in sorted(self.book.counts.items())},
            "allowlists": [v.to_dict() for v in self.book.active_allowlists(now)],
            "cleared_episodes": sum(len(e) for e in self.book.episodes.values()),
            "pending": [p.verdict.to_dict() | {"expires_in_s": round(p.deadline - now, 1)}
                        for p in self.pending.values()],
            "invalid": self.invalid,
            "judged_precision": (round(sum(self.judged) / len(self.judged), 4) if self.judged else None),
            "judged_verdicts": len(self.judged),
        }


@dataclass
class _Record:
    """A pending verdict's record, as the dead-letter path takes records."""

    value: bytes
    key_text: str | None
    offset: int

    @property
    def key(self) -> bytes | None:
        return self.key_text.encode() if self.key_text else None
