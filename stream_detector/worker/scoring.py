"""The scoring side: claim due videos → score their closed windows → decide → publish → release.

Two kinds of pass run at once: the immediate path (``score_immediate``: videos a minute spike
made due, every owned partition, small batches) and the cadence lanes (``score_cadence``: one
bounded batch of videos due after an hour closure or late events, each lane for its own
partitions). A spike never waits behind a cadence batch: not in this loop, and not in the
scoring process either (the immediate path has a child of its own). A video being decided by
one batch is handed back, due again, by any other claim (``_busy``), so no two batches decide
the same video at once. A batch is scored by one model in the scoring process
(``score_process``), or with a shadow model in a thread of the worker; then decided and
published by the ``FlagPublisher``, and released. A scorer that dies holding a lease leaves
its videos due again when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import numpy as np

from stream_detector import redis_client
from stream_detector.decision import StreamDecision, closed_windows
from stream_detector.dependencies import TRANSIENT
from stream_detector.models import ModelArtifact
from stream_detector.patterns import Burst, BurstDetector
from stream_detector.publisher import JSON_ENCODER, FlagPublisher, Scored
from stream_detector.schedule import now_ms
from stream_detector.scoring import Scorer, VideoScore
from stream_detector.windows import WindowArrays
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.ingest import Arrivals
from stream_detector.worker.marks import URGENT_DUE_MS
from stream_detector.worker.model_slot import ModelSlot
from stream_detector.worker.quarantine import Failure, Quarantine
from stream_detector.worker.score_process import ScoringProcess, WindowBatch

log = logging.getLogger("stream_detector.scoring_loop")

IMMEDIATE_SWEEP_S = 1.0  # the immediate path claims in every owned partition this often
CADENCE_YIELD_S = 0.5  # at most this long a cadence lane waits for a spike's pass before claiming
CLOCK_UNKNOWN_RETRY_MS = 5_000  # a video due in a partition without an event clock is looked at again after this


class ScoringLoop:
    def __init__(self, ctx: WorkerContext, slot: ModelSlot, checkpoint: Checkpoint, arrivals: Arrivals,
                 publisher: FlagPublisher, process: ScoringProcess | None = None, *,
                 urgent_process: ScoringProcess | None = None) -> None:
        self.ctx = ctx
        self.slot = slot
        self.checkpoint = checkpoint
        self.arrivals = arrivals
        self.publisher = publisher
        assert ctx.redis is not None
        self.quarantine = Quarantine(ctx.redis, ctx.settings.key_prefix, ctx.metrics,
                                     retry_s=ctx.settings.scoring_retry_seconds)
        self.process = process  # None: score in a thread of this process
        self.urgent_process = urgent_process or process  # the immediate path's own child
        self.bursts = BurstDetector()
        self._next_partition: dict[int, int] = {}  # per lane: whose turn it is
        self._busy: set[str] = set()  # videos a batch is deciding now
        self._handed_back: set[str] = set()  # spiked videos the immediate path left to a busy batch
        self._shadow_publishers: dict[str, FlagPublisher] = {}
        self._swept = 0.0  # monotonic time of the immediate path's last claim in every partition

    async def warm(self) -> None:
        """Start the scoring processes with the serving model loaded (see ``ScoringProcess.warm``)."""
        scorer, _ = self.slot.take()
        for proc in {id(p): p for p in (self.process, self.urgent_process) if p is not None}.values():
            await proc.warm(scorer)

    async def score_immediate(self) -> int:
        """The immediate path: videos a minute spike made due (due time ``URGENT_DUE_MS``), in
        small batches of their own, never behind a cadence batch. It claims in the partitions
        where spikes were marked, all at once, and in every owned partition once per
        ``IMMEDIATE_SWEEP_S`` (marks from before a restart or a rebalance)."""
        self.slot.take()  # also when idle, so /model shows a pushed model at once
        ctx = self.ctx
        if ctx.consumer is None or ctx.schedule is None:
            return 0
        owned = {tp.partition for tp in ctx.owned()}
        parts = self.arrivals.take_spiked() & owned
        now = time.monotonic()
        if now - self._swept >= IMMEDIATE_SWEEP_S:
            parts, self._swept = owned, now
        try:
            done = await asyncio.gather(*(self._score_claimed(p, ctx.settings.score_batch_size, URGENT_DUE_MS,
                                                              "immediate") for p in sorted(parts)))
        finally:
            if not self.arrivals.spiked_partitions:
                self.arrivals.calm.set()
        return sum(done)

    async def score_cadence(self, lane: int = 0, lanes: int = 1) -> int:
        """One cadence batch (videos due after an hour closure or late events), from the owned
        partitions of this lane in turn (partition % lanes == lane). Returns videos scored."""
        self.slot.take()  # every pass, idle too: /model shows a pushed model within a poll
        ctx = self.ctx
        if ctx.consumer is None or ctx.schedule is None:
            return 0
        owned = sorted(tp.partition for tp in ctx.owned() if tp.partition % lanes == lane)
        if not owned:
            return 0
        turn = self._next_partition[lane] = (self._next_partition.get(lane, 0) + 1) % len(owned)
        limit = min(ctx.settings.cadence_batch_size, ctx.settings.score_batch_size)
        if not self.arrivals.calm.is_set():  # a spike is being judged: it goes first, for a while
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrivals.calm.wait(), CADENCE_YIELD_S)
        for k in range(len(owned)):
            n = await self._score_claimed(owned[(turn + k) % len(owned)], limit, None, "cadence")
            if n:
                return n
        return 0

    async def _score_claimed(self, partition: int, limit: int, at_ms: int | None, path: str) -> int:
        """Claim, score, release. A claimed video another batch is deciding right now (a spike
        on a video in a cadence batch, say) is handed back, due again, for the next pass: two
        batches never decide the same video at once."""
        schedule = self.ctx.schedule
        assert schedule is not None
        after = URGENT_DUE_MS if path == "cadence" else None
        ids, lease = await schedule.claim(partition, limit, at_ms=at_ms, after_ms=after)
        if not ids:
            return 0
        clash = [v for v in ids if v in self._busy]
        if clash:
            due = URGENT_DUE_MS if path == "immediate" else now_ms()
            await schedule.mark({partition: dict.fromkeys(clash, due)})
            if path == "immediate":
                self._handed_back.update(clash)
            ids = [v for v in ids if v not in self._busy]
            if not ids:
                return 0
        self._busy.update(ids)
        retry: dict[str, int] = {}
        try:
            arrival, urgent = self.arrivals.take(ids)
            scorer, shadow = self.slot.take()  # a pushed model takes over here, between two scoring batches
            sha = scorer.model.sha256
            aside = await self.quarantine.set_aside(ids, sha)
            judged = [v for v in ids if v not in aside] if aside else ids
            failures = await self._judge(judged, arrival, "immediate" if urgent else path, partition, scorer, shadow,
                                         immediate_pass=path == "immediate")
            for failure in failures:
                delay = await self.quarantine.record(failure, sha)
                if delay is not None:
                    retry[failure.video_id] = now_ms() + int(delay * 1000)
        finally:
            self._busy.difference_update(ids)
            if self._handed_back.intersection(ids):  # their spikes can be judged now
                self._handed_back.difference_update(ids)
                self.arrivals.spike({partition})
        await schedule.release(partition, ids, lease)
        if retry:
            await schedule.mark({partition: retry})
        return len(ids)

    async def _judge(self, ids: list[str], arrival: dict[str, float], path: str, partition: int, scorer: Scorer,
                     shadow: Scorer | None, *, immediate_pass: bool) -> list[Failure]:
        """Score, decide and publish ``ids``; a batch that raises (other than a Redis or broker
        outage, which the lane rides out) is split in halves until the videos that fail are
        found: they are returned, every other video is judged."""
        if not ids:
            return []
        try:
            await self._score_batch(ids, arrival, path, partition, scorer, shadow, immediate_pass=immediate_pass)
        except TRANSIENT["redis"] + TRANSIENT["broker"]:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated below, every failing video recorded with its traceback
            if len(ids) == 1:
                failure = Failure.of(ids[0], partition, path, exc)
                self.quarantine.failed(failure)  # raises when nothing scores any more: a broken scorer
                return [failure]
            half = len(ids) // 2
            return (await self._judge(ids[:half], arrival, path, partition, scorer, shadow, immediate_pass=immediate_pass)
                    + await self._judge(ids[half:], arrival, path, partition, scorer, shadow,
                                        immediate_pass=immediate_pass))
        self.quarantine.succeeded()
        return []

    def _bursts(self, win: WindowArrays, closed: np.ndarray, now_hour: int) -> list[Burst | None]:
        """The minute ring's burst evidence per video, judged against its closed hours: only for
        videos whose newest hour is still open and whose ring holds a minute big enough."""
        out: list[Burst | None] = [None] * len(win.video_ids)
        if not len(out):
            return out
        ring_peak = win.minute_counts.max(axis=(1, 2))
        for r in np.flatnonzero((win.head_hours >= now_hour) & (ring_peak >= self.bursts.min_peak)).tolist():
            out[r] = self.bursts.judge(win.minute_counts[r], closed[r], int(win.minute_heads[r]))
        return out

    async def _score_batch(self, ids: list[str], arrival: dict[str, float], path: str, partition: int,
                           scorer: Scorer, shadow: Scorer | None, *, immediate_pass: bool = False) -> None:
        ctx, m = self.ctx, self.ctx.metrics
        assert ctx.windows is not None and ctx.schedule is not None
        decision = self.slot.decision_for(scorer.model)
        now_hour = self.checkpoint.clock.open_hour(partition)
        if now_hour is None:  # event time unknown (no event consumed, nothing rebuilt): which hours
            # are closed is unknown too; judged once the partition's clock is set, not released
            await ctx.schedule.mark({partition: dict.fromkeys(ids, now_ms() + CLOCK_UNKNOWN_RETRY_MS)})
            m.videos_deferred.inc(len(ids))
            return
        win = await ctx.windows.read_arrays(ids)
        keep, closed, first = closed_windows(win.counts, win.head_hours, now_hour,
                                             decision.thresholds.confirm_hours, scorer.window)
        bursts = self._bursts(win, closed, now_hour)
        rows = np.flatnonzero(keep).tolist()
        if immediate_pass:
            # The immediate path decides what a burst changes now. A video whose minute ring
            # holds no burst that fires has nothing to judge now but its closed hours: the
            # cadence path judges those (the same answer, in its batches of hundreds, where
            # a video costs a fraction of a batch of a few). Its mark goes back to them.
            calm = [r for r in range(len(win.video_ids)) if not decision.fires(bursts[r])]
            if calm:
                ids_calm = [win.video_ids[r] for r in calm]
                await ctx.schedule.mark({partition: dict.fromkeys(ids_calm, now_ms())})
                self.arrivals.add([{v: arrival[v] for v in ids_calm if arrival.get(v)}], set(), set())
                m.videos_deferred.inc(len(calm))
                rows = [r for r in rows if decision.fires(bursts[r])]
        if not rows:
            return
        windows = WindowBatch([win.video_ids[r] for r in rows], first[rows].tolist(),
                              [int(h) if h >= 0 else None for h in win.published_hours[rows].tolist()], closed[rows])
        prepared = [(win.video_ids[r], bursts[r]) for r in rows]

        def run() -> tuple[list[VideoScore], float, list[VideoScore] | None]:
            t0 = time.perf_counter()
            present = windows.series()
            ours = scorer.score(present)
            spent = time.perf_counter() - t0
            theirs = self.slot.shadow_score(shadow, present, ours) if shadow is not None else None
            return ours, spent, theirs

        process = self.urgent_process if path == "immediate" else self.process
        prior = await self.publisher.states([vid for vid, _ in prepared])
        evidence = await ctx.accounts.video_evidence([vid for vid, _ in prepared]) if ctx.accounts else {}
        if process is not None and shadow is None:
            t0 = time.perf_counter()
            keep_ids = frozenset(vid for vid, burst in prepared
                                 if decision.uses_detail(prior[vid], burst, evidence.get(vid, (None,))[0]))
            scores = await process.score(scorer, windows, keep_ids=keep_ids, detail_floor=decision.detail_floor)
            spent, shadow_scores = time.perf_counter() - t0, None
        else:  # a shadow compares on the same batch in the same thread
            scores, spent, shadow_scores = await asyncio.to_thread(run)
        m.inference_latency.observe(spent)
        m.inference_batch_size.observe(len(prepared))
        m.videos_scored.labels(path=path).inc(len(prepared))
        batch = [Scored(vs, now_hour, burst, arrival.get(vid, 0.0), *evidence.get(vid, (None, None)))
                 for (vid, burst), vs in zip(prepared, scores, strict=True)]
        wm = max(self.checkpoint.clock.watermark.values(), default=0.0)
        sent = await self.publisher.run(batch, decision, scorer.model, watermark=wm, prior=prior)
        if ctx.accounts is not None:  # the suspicious hours make their engagers due (the user level)
            await ctx.accounts.note_suspicion(scores, evidence, threshold=decision.thresholds.suspect)
        await self._store_scores(batch, scorer, decision, shadow, shadow_scores, {s.score.video_id: d for s, d in sent})
        if shadow is not None and shadow_scores:
            shadow_batch = [Scored(vs, now_hour, b.burst, b.arrival_ms) for b, vs in zip(batch, shadow_scores, strict=True)]
            published = await self._shadow_publisher(shadow.model).run(
                shadow_batch, self.slot.decision_for(shadow.model), shadow.model, watermark=wm)
            st = self.slot.shadow_stats
            st["flags_published"] = st.get("flags_published", 0) + len(published)

    def _shadow_publisher(self, model: ModelArtifact) -> FlagPublisher:
        """Shadow flags go to their own topic with their own state per shadow model."""
        ctx = self.ctx
        pub = self._shadow_publishers.get(model.sha256)
        if pub is None:
            assert ctx.redis is not None and ctx.producer is not None
            pub = self._shadow_publishers[model.sha256] = FlagPublisher(
                ctx.redis, ctx.producer, ctx.metrics, topic=ctx.settings.shadow_flags_topic,
                state_key=lambda v: ctx.shadow_flag_key(v, model.sha256), shadow=True,
                book=self.publisher.book, channel_key=ctx.channel_key)
        return pub

    async def _store_scores(self, batch: list[Scored], scorer: Scorer, decision: StreamDecision,
                            shadow: Scorer | None = None, shadow_scores: list[VideoScore] | None = None,
                            sent: dict[str, dict] | None = None) -> None:
        """Keep the latest score per video for /score/{video_id} (one write per batch): the
        scoring of its closed window (the offline verdict, as `stream-detector score` gives it)
        and, under ``stream``, the last flag record published now."""
        ctx = self.ctx
        assert ctx.redis is not None
        model = scorer.model
        model_doc = {"name": model.name, "version": model.version, "sha256": model.sha256}
        publish = round(decision.thresholds.publish, 4)
        now = time.time()
        docs = {}
        for i, item in enumerate(batch):
            vs = item.score
            stream = {"publish_threshold": publish, "statistic": round(decision.statistic(vs), 4),
                      "burst": round(item.burst.evidence, 4) if item.burst is not None else None}
            doc = vs.to_dict()  # the offline verdict, then what the stream made of it
            doc.update(threshold=round(vs.threshold, 4), explanation=vs.explanation, end_hour=vs.end_hour,
                       model=model_doc, scored_at=now, stream=stream)
            rec = (sent or {}).get(vs.video_id)
            if rec is not None:
                stream["published"] = {"flag_id": rec["flag_id"], "status": rec["status"]}
            if shadow is not None and shadow_scores:
                other = shadow_scores[i]
                doc["shadow"] = {"score": round(other.score, 4), "flagged": other.flagged,
                                 "model": {"name": shadow.model.name, "version": shadow.model.version,
                                           "sha256": shadow.model.sha256}}
            docs[ctx.score_key(vs.video_id)] = JSON_ENCODER.encode(doc)
        await ctx.metrics.timed_redis("store_scores", redis_client.set_ex(ctx.redis, docs, ctx.settings.idle_ttl_seconds))

    async def current_score(self, video_id: str) -> dict | None:
        ctx = self.ctx
        assert ctx.redis is not None
        raw = await ctx.metrics.timed_redis("score_view", ctx.redis.get(ctx.score_key(video_id)))
        entry = await self.quarantine.entry(video_id)
        if raw is None and entry is None:
            return None
        doc = json.loads(raw) if raw else {"video_id": video_id}
        if entry is not None:  # its judgement raised: what, how often, and whether it is set aside
            doc["quarantine"] = entry.to_dict()
        return doc
