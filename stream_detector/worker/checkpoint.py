"""Offsets and commit order: what has been written, and what may be committed.

- ``positions``: per owned partition, the next offset whose predecessors are all written
  (windows, schedule marks, dead letters); commits carry exactly these, never the consumer's
  fetch positions.
- Event time per partition lives in ``clock`` (``event_clock.EventClock``); its watermarks
  are persisted here after each commit, never before (a watermark ahead of the committed
  offsets would make replayed events look late after a crash).
- The persisted watermark doubles as the partition's **state marker**: a worker that wrote it
  and later finds it gone knows Redis lost the partition's windows (``lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from aiokafka import TopicPartition

from stream_detector import redis_client
from stream_detector.dependencies import TRANSIENT
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.event_clock import EventClock

log = logging.getLogger("stream_detector.checkpoint")

COMMIT_TIMEOUT_S = 5.0


class Checkpoint:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.positions: dict[TopicPartition, int] = {}
        # next offset the consumer should fetch per partition: the next batch may be fetched
        # and prepared before this one is written, so continuity is judged against this
        self.fetched_to: dict[TopicPartition, int] = {}
        self.clock = EventClock(ctx.settings.allowed_lateness_seconds)
        self.saved: set[int] = set()  # partitions whose state marker this worker wrote or found
        self.lost: set[TopicPartition] = set()  # partitions whose windows Redis lost: to rebuild
        # per partition: offsets below this belong to a log that started again (a rewind seen
        # while consuming): the windows' replay guard knows the old log's offsets, not these
        self.fresh_below: dict[int, int] = {}
        self.uncommitted = False
        self.last_commit = 0.0

    def check_continuity(self, tp: TopicPartition, first_offset: int) -> None:
        """A fetch that does not start where the last one ended means the log moved under us:
        records deleted or truncated (a gap: those events were never seen) or the position
        reset backwards (a topic re-created, an offset reset: events replay)."""
        m = self.ctx.metrics
        expected = self.fetched_to.get(tp, self.positions.get(tp))
        if expected is None or first_offset == expected:
            return
        if first_offset > expected:
            m.log_discontinuities.labels(kind="gap").inc()
            m.log_records_skipped.inc(first_offset - expected)
            log.error("partition %s[%d]: offsets %d..%d are gone from the log (retention, truncation or a "
                      "re-created topic); their events were never applied", tp.topic, tp.partition, expected,
                      first_offset - 1)
        else:
            # Only the log can move a running consumer back (an out-of-range reset after the log
            # was truncated, re-created or restarted empty; an operator's reset needs the group
            # stopped): the offsets from here to where we were are new records, not replays.
            m.log_discontinuities.labels(kind="rewind").inc()
            self.fresh_below[tp.partition] = max(self.fresh_below.get(tp.partition, 0), expected)
            log.error("partition %s[%d]: the log position went back from %d to %d (a truncated, re-created or "
                      "restarted log); records below offset %d are applied as new (replay guard reset)",
                      tp.topic, tp.partition, expected, first_offset, expected)

    # -- commit order ------------------------------------------------------------------------
    def written(self, fetched: dict[TopicPartition, int]) -> None:
        """Everything before these offsets is written: they may be committed."""
        self.positions.update(fetched)
        self.uncommitted = True
        for tp, pos in fetched.items():
            if pos > self.fresh_below.get(tp.partition, pos):
                del self.fresh_below[tp.partition]  # past the old log's offsets: the guard holds again

    def fresh(self, offsets: np.ndarray, partitions: np.ndarray) -> np.ndarray | None:
        """Per event: whether its offset belongs to a log that started again (see ``fresh_below``)."""
        if not self.fresh_below:
            return None
        out = np.zeros(len(offsets), dtype=bool)
        for p, below in self.fresh_below.items():
            out |= (partitions == p) & (offsets < below)
        return out if out.any() else None

    async def commit(self, reason: str) -> None:
        ctx = self.ctx
        self.last_commit = time.monotonic()
        consumer = ctx.consumer
        if consumer is None or not consumer.assignment() or not self.uncommitted:
            return
        owned = consumer.assignment()
        offsets = {tp: pos for tp, pos in self.positions.items() if tp in owned}
        if not offsets:
            return
        try:  # a frozen coordinator must not hang the consume loop
            await asyncio.wait_for(consumer.commit(offsets), timeout=COMMIT_TIMEOUT_S)
        except TRANSIENT["broker"] as exc:
            ctx.guard.mark_down("broker", f"commit: {type(exc).__name__}")
            ctx.guard.check_limit("broker")
            return
        except Exception as exc:  # CommitFailedError during a rebalance: the events replay
            log.warning("commit (%s) failed (%s); events since the last commit will replay", reason, exc)
            return
        ctx.guard.mark_up("broker")
        self.uncommitted = False
        await ctx.guard.call("redis", "watermarks", self.save, ctx.stopping)

    # -- persistence and state markers ------------------------------------------------------
    async def load(self, assigned) -> None:
        """Resume event-time watermarks so a restarted worker judges lateness as before. A
        partition whose group has committed offsets but whose watermark is gone lost its state
        while nobody owned it (Redis restarted empty): it is marked to be rebuilt."""
        ctx = self.ctx
        if ctx.redis is None or not assigned:
            return
        parts = sorted(tp.partition for tp in assigned)
        values = await ctx.guard.call("redis", "watermarks", lambda: ctx.metrics.timed_redis(
            "watermark", redis_client.mget(ctx.redis, [ctx.watermark_key(p) for p in parts])))
        for p, v in zip(parts, values, strict=True):
            if v is None:
                tp = TopicPartition(ctx.settings.events_topic, p)
                committed = await ctx.consumer.committed(tp) if ctx.consumer is not None else None
                if committed:
                    self.lost.add(tp)
                    self.positions[tp] = committed
                continue
            self.saved.add(p)
            self.clock.resume(p, float(v))

    async def save(self) -> None:
        ctx = self.ctx
        watermark = self.clock.watermark
        if ctx.redis is None or not watermark:
            return
        await ctx.metrics.timed_redis("watermark", redis_client.mset(
            ctx.redis, {ctx.watermark_key(p): str(v) for p, v in watermark.items()}))
        self.saved.update(watermark)

    async def find_lost(self, partitions: set[int]) -> set[TopicPartition]:
        """Owned partitions among ``partitions`` whose state marker this worker wrote and which
        is gone now, plus those found lost at assignment."""
        ctx = self.ctx
        owned = [tp for tp in ctx.owned() if tp.partition in self.saved and tp.partition in partitions]
        if owned:
            values = await ctx.metrics.timed_redis("watermark", redis_client.mget(
                ctx.redis, [ctx.watermark_key(tp.partition) for tp in owned]))
            self.lost.update(tp for tp, v in zip(owned, values, strict=True) if v is None)
        return {tp for tp in self.lost if tp in ctx.owned()}

    def forget(self, tp: TopicPartition) -> None:
        """Drop per-partition state of a partition this worker no longer owns."""
        p = tp.partition
        self.positions.pop(tp, None)
        self.fetched_to.pop(tp, None)
        self.fresh_below.pop(p, None)
        self.clock.forget(p)
        self.saved.discard(p)
        self.lost.discard(tp)
        with contextlib.suppress(KeyError):
            self.ctx.metrics.consumer_lag.remove(tp.topic, str(p))
