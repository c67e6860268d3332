"""The user level in the worker: account actions in, account flags out.

The consume side hands each written batch's account actions (events with a ``user_id``) to
``AccountLoop.ingest``: they are applied to the shared account state (``account_store``) and the
accounts due for a judgement are marked in a durable schedule sharded by events partition
(``accounts.shard_of``), so the owner of partition p judges the accounts of shard p. The lane
(``judge``) claims due accounts of the owned shards (and accounts gone quiet, from a schedule in
event time: ``accounts.next_quiet_judgement``), reads their activity and co-engagers, judges
them (``accounts.AccountJudge``), decides (``accounts.decide_account``), publishes account flags to
their own topic (key = ``user_id``), keeps the latest judgement for ``/accounts/{user_id}``, and,
when an account is newly flagged, counts its actions as flagged in their videos' hours and marks
those videos due: the video level judges them again with that evidence.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import numpy as np
from aiokafka import AIOKafkaProducer

from stream_detector import keys, redis_client
from stream_detector.accounts import (
    THRESHOLD,
    AccountFlagState,
    AccountJudge,
    Action,
    account_record,
    carried_share,
    carried_suspicion,
    channel_hash,
    decide_account,
    group_of,
    near_hours,
    next_quiet_judgement,
    shard_of,
    suspicion,
)
from stream_detector.events import EventColumns
from stream_detector.moderation import VerdictBook, moderate_account, verdict_words
from stream_detector.schedule import EventTimeSchedule, RescoreSchedule, now_ms
from stream_detector.worker.account_store import AccountStore
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext

log = logging.getLogger("stream_detector.accounts")

BATCH = 256  # accounts judged per claim
QUIET_BATCH = 64  # ... and accounts gone quiet with them: a quiet judgement never waits behind a backlog for long
SCORE_TTL_S = 8 * 24 * 3600
ACTIVE_CHECK_S = 30.0


def actions_of(events: EventColumns, partitions: np.ndarray) -> dict[str, list[Action]]:
    """The account actions of a batch's events (the rows with a ``user_id``), per account."""
    users = events.user_ids
    if users is None:
        return {}
    channels = events.channel_ids
    minutes = (events.ts // 60).astype(np.int64).tolist()
    counts = events.counts.tolist()
    parts = np.asarray(partitions).tolist()
    out: dict[str, list[Action]] = {}
    cache: dict[tuple[str | None, str], int] = {}
    for k, user in enumerate(users):
        if user is None:
            continue
        video = events.video_ids[k]
        ch = channels[k] if channels is not None else None
        h = cache.get((ch, video))
        if h is None:
            h = cache[(ch, video)] = channel_hash(ch, video)
        c = counts[k]
        out.setdefault(user, []).append(Action(minutes[k], video, h, (c[0], c[1], c[2], c[3]), parts[k]))
    return out


class AccountLoop:
    def __init__(self, ctx: WorkerContext, store: AccountStore, producer: AIOKafkaProducer,
                 checkpoint: Checkpoint, book: VerdictBook | None = None) -> None:
        self.ctx = ctx
        self.book = book  # moderators' verdicts (moderation.py); None: no moderation loop
        self.checkpoint = checkpoint
        self.store = store
        self.producer = producer
        s = ctx.settings
        self.topic = s.account_flags_topic
        self.schedule = RescoreSchedule(ctx.redis, prefix=s.key_prefix, topic=f"{s.events_topic}#accounts",
                                        metrics=ctx.metrics, delay=ctx.metrics.account_judge_delay)
        self.quiet = EventTimeSchedule(ctx.redis, prefix=s.key_prefix, topic=f"{s.events_topic}#accounts-quiet",
                                       metrics=ctx.metrics)
        self.judge_core = AccountJudge()
        self.published = 0
        self._turn = 0
        self._active = False
        self._checked = 0.0

    def partitions(self) -> int:
        """Partitions of the events topic (the shards of the account schedule)."""
        c = self.ctx.consumer
        parts = c.partitions_for_topic(self.ctx.settings.events_topic) if c is not None else None
        return len(parts) if parts else max(self.ctx.settings.topic_partitions, 1)

    async def active(self) -> bool:
        """Whether the deployment sees account events at all (this worker ingested some, or
        another did: a marker in Redis, looked up at most every ``ACTIVE_CHECK_S``): a stream
        without user ids pays nothing for the user level."""
        if self._active:
            return True
        now = time.monotonic()
        if now - self._checked >= ACTIVE_CHECK_S and self.ctx.redis is not None:
            self._checked = now
            self._active = bool(await self.ctx.metrics.timed_redis(
                "accounts", self.ctx.redis.exists(keys.accounts_seen(self.ctx.settings.key_prefix))))
        return self._active

    async def video_evidence(self, video_ids: list[str]) -> dict[str, tuple[dict[int, tuple[int, int]], list[dict]]]:
        """Per video: its hours' account actions and flagged accounts' actions, and their groups."""
        return await self.store.video_hours(video_ids) if await self.active() else {}

    async def note_suspicion(self, scores, evidence: dict | None, threshold: float) -> None:
        """The video level's suspicious hours (confirmed hours at or above ``threshold``, the
        scoring model's ``Thresholds.suspect``, kept on the user level's scale: ``accounts.suspicion``;
        and hours flagged accounts carry: ``evidence`` is ``video_evidence`` of the same videos):
        kept for the account judgement; the accounts that engaged in hours suspicious for the
        first time are due now."""
        if not await self.active():
            return
        hours: dict[str, dict[int, float]] = {}
        for vs in scores:
            p = vs.hour_probability[:-1]  # confirmed hours (the last closed one awaits the next)
            idx = np.flatnonzero(p >= threshold)
            mine = dict(zip((vs.start_hour + idx).tolist(), suspicion(p[idx], threshold).tolist(), strict=True))
            for h, (total, flagged) in ((evidence or {}).get(vs.video_id, (None,))[0] or {}).items():
                share = carried_share(total, flagged)
                if share:
                    mine[h] = max(mine.get(h, 0.0), carried_suspicion(share))
            if mine:
                hours[vs.video_id] = mine
        fresh = await self.store.note_suspicion(hours)
        if not fresh:
            return
        users: set[str] = set()
        for v, hs in fresh.items():  # the engagers of those hours and of the hours next to them
            near = sorted({n for h in hs[-24:] for n in near_hours(h)})
            for lo, hi in _runs(near):
                users.update(await self.store.engaged_in(v, lo, hours=hi - lo + 1))
        await self.mark_due(users, ahead=True)  # before routine judgements: where flags come from

    async def mark_due(self, users, *, ahead: bool = False) -> None:
        """Accounts due for a judgement now, each in its shard (the owner of that partition judges it)."""
        if not users:
            return
        await self.schedule.mark(self._by_shard(dict.fromkeys(users, now_ms())), ahead=ahead)

    def _by_shard(self, due: dict[str, int]) -> dict[int, dict[str, int]]:
        """{account: due ms} as schedule marks: each account in its shard."""
        shards = self.partitions()
        marks: dict[int, dict[str, int]] = {}
        for u, t in due.items():
            marks.setdefault(shard_of(u, shards), {})[u] = t
        return marks

    async def ingest(self, events: EventColumns, partitions: np.ndarray) -> int:
        """Apply a written batch's account actions; mark the accounts due. Returns the actions."""
        actions = actions_of(events, partitions)
        if not actions:
            return 0
        if not self._active:
            self._active = True
            await self.ctx.metrics.timed_redis(
                "accounts", self.ctx.redis.set(keys.accounts_seen(self.ctx.settings.key_prefix), 1,
                                               ex=self.ctx.settings.idle_ttl_seconds))
        n = sum(len(a) for a in actions.values())
        self.ctx.metrics.account_actions.inc(n)
        await self.mark_due(await self.store.apply(actions))
        return n

    async def judge(self) -> int:
        """One claim of due accounts in the owned shards (in turn), with the shard's accounts
        gone quiet by the watermark: judge, decide, publish."""
        ctx = self.ctx
        owned = sorted(tp.partition for tp in ctx.owned())
        if not owned or ctx.redis is None:
            return 0
        self._turn = (self._turn + 1) % len(owned)
        event_ms = int(self._watermark() * 1000)
        for k in range(len(owned)):
            p = owned[(self._turn + k) % len(owned)]
            users, lease = await self.schedule.claim(p, BATCH)
            quiet, quiet_lease = await self.quiet.claim(p, QUIET_BATCH, at_ms=event_ms) if event_ms else ([], 0)
            batch = list(dict.fromkeys(users + quiet))
            if batch:
                ctx.metrics.account_quiet_judgements.inc(len(batch) - len(users))
                await self._judge(batch)
                await self.schedule.release(p, users, lease)
                await self.quiet.release(p, quiet, quiet_lease)
                return len(batch)
        return 0

    def _watermark(self) -> float:
        """The event time the user level has reached (seconds): the latest of the owned partitions'."""
        return max(self.checkpoint.clock.watermark.values(), default=0.0)

    async def _judge(self, users: Sequence[str]) -> None:
        ctx, m = self.ctx, self.ctx.metrics
        t0 = time.perf_counter()
        acts = await self.store.activity(users)
        queries = sorted({q for a in acts.values() for q in self.judge_core.sync_queries(a)})
        engaged = await self.store.co_engagers(queries)
        suspicious = await self.store.suspicion(sorted({q for a in acts.values()
                                                        for q in self.judge_core.suspicion_queries(a)}))
        scores = {}
        for u, act in acts.items():
            mine = {q: engaged[q] for q in self.judge_core.sync_queries(act) if q in engaged}
            scores[u] = self.judge_core.judge(act, mine, suspicious)
        m.accounts_judged.inc(len(scores))
        m.account_judge_latency.observe(time.perf_counter() - t0)
        states = await self._states(list(scores))
        wm = self._watermark()
        now = time.time()
        sends, new_states, docs, newly = [], {}, {}, []
        standing_clear: dict[str, int] = {}  # accounts not flagged after this judgement: their last minute
        for u, sc in scores.items():
            old = states.get(u)
            state, status = decide_account(old, sc, last_minute=acts[u].last_minute)
            moderation = None
            if self.book is not None:
                mod = moderate_account(self.book, u, old, state, status, now)
                state, status, moderation = mod.state, mod.status, mod.moderation
                if mod.suppressed is not None:
                    m.moderation_suppressed.labels(reason=mod.suppressed).inc()
                if moderation is not None:
                    m.moderation_withdrawn.labels(scope=moderation["scope"]).inc()
                if state != (old or AccountFlagState()) and status is None:
                    new_states[keys.account_flag(ctx.settings.key_prefix, u)] = json.dumps(state.to_dict())
            doc = {"user_id": u, "score": round(sc.score, 4), "threshold": THRESHOLD, "flagged": sc.flagged,
                   "evidence": {k: round(v, 3) for k, v in sc.evidence.items()}, "patterns": sc.patterns,
                   "group": group_of(u, sc.partners), "explanation": sc.explanation, "judged_at": now,
                   "videos": sc.videos[:20],
                   "flag": {"flag_id": state.flag_id, "status": state.status} if state.flag_id else None}
            if status is not None:
                rec = account_record(sc, state, status, watermark=wm, detected_at=now, moderation=moderation)
                if moderation is not None:
                    rec["explanation"] = "withdrawn: cleared by moderation" + verdict_words(moderation)
                sends.append((u, rec))
                new_states[keys.account_flag(ctx.settings.key_prefix, u)] = json.dumps(state.to_dict())
                if status == "new":
                    newly.append(u)
                elif status == "withdrawn":
                    await self.store.mark_flagged(u, False)
            docs[keys.account_score(ctx.settings.key_prefix, u)] = json.dumps(doc)
            if not state.active:
                standing_clear[u] = acts[u].last_minute
        futs = []
        for u, rec in sends:
            futs.append(await self.producer.send(self.topic, value=json.dumps(rec, separators=(",", ":")).encode(),
                                                 key=u.encode()))
        for f in futs:
            await f
        for _, rec in sends:
            m.account_flags.labels(status=rec["status"]).inc()
            for p in rec["patterns"]:
                m.account_flag_patterns.labels(pattern=p).inc()
            log.info("account flag user=%s flag_id=%s status=%s score=%.3f patterns=%s", rec["user_id"],
                     rec["flag_id"], rec["status"], rec["score"], ",".join(rec["patterns"]))
        self.published += len(sends)
        await ctx.metrics.timed_redis("accounts", redis_client.set_ex(ctx.redis, new_states, SCORE_TTL_S))
        await ctx.metrics.timed_redis("accounts", redis_client.set_ex(ctx.redis, docs, SCORE_TTL_S))
        await self._mark_quiet(standing_clear, int(wm // 60))
        if newly:
            await self._newly_flagged([(acts[u], group_of(u, scores[u].partners)) for u in newly])

    async def _mark_quiet(self, last_minutes: dict[str, int], now_minute: int) -> None:
        """Accounts not flagged are judged again if they go quiet (``accounts.next_quiet_judgement``):
        the suspicion of the hours they engaged in may come after their last action."""
        due = {u: next_quiet_judgement(last, now_minute) for u, last in last_minutes.items()}
        await self.quiet.mark(self._by_shard({u: m * 60_000 for u, m in due.items() if m is not None}))

    async def _newly_flagged(self, flagged) -> None:
        """Their actions count as flagged in their videos' hours; those videos are judged again
        (with that evidence) by their partitions' owners."""
        for act, group in flagged:
            await self.store.mark_flagged(act.user_id, True)
            await self.store.count_flagged(act.actions, group)
        actions = [a for act, _ in flagged for a in act.actions]
        marks: dict[int, dict[str, int]] = {}
        now = now_ms()
        for a in actions:
            if a.partition >= 0:
                marks.setdefault(a.partition, {})[a.video_id] = now
        if marks and self.ctx.schedule is not None:
            await self.ctx.schedule.mark(marks)

    async def _states(self, users: list[str]) -> dict[str, AccountFlagState]:
        ks = [keys.account_flag(self.ctx.settings.key_prefix, u) for u in users]
        raw = await self.ctx.metrics.timed_redis("accounts", redis_client.mget(self.ctx.redis, ks))
        return {u: AccountFlagState.from_dict(json.loads(r)) for u, r in zip(users, raw, strict=True) if r}

    async def current(self, user_id: str) -> dict | None:
        raw = await self.ctx.metrics.timed_redis(
            "accounts", self.ctx.redis.get(keys.account_score(self.ctx.settings.key_prefix, user_id)))
        return json.loads(raw) if raw else None


def _runs(hours: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs [(first, last)] of sorted hours (one range read each)."""
    runs: list[tuple[int, int]] = []
    for h in hours:
        if runs and h == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], h)
        else:
            runs.append((h, h))
    return runs
