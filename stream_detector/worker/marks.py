"""Schedule marks: which videos a written batch makes worth scoring, and when.

A video is due when an event hour it was active in closes (now), at once for a minute
spike (``URGENT_DUE_MS``, the immediate path), at the cadence for late events into closed
hours; a partition that went quiet closes its open hour once (idle closure). Which hours are
closed is the event clock's answer (``event_clock``); the marks live in the durable schedule
(``schedule.RescoreSchedule``), the per-partition active sets in Redis.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from stream_detector import keys
from stream_detector.events import Event, EventColumns
from stream_detector.flags import iso
from stream_detector.schedule import now_ms
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext

log = logging.getLogger("stream_detector.marks")

URGENT_DUE_MS = 0  # the immediate path: due before any other mark


class AlreadyWritten:
    """What this worker has written lately to the per-partition active sets (each video's
    newest event hour) and to the hour's HyperLogLog of active videos, so that a batch sends
    only what changed: most events of a video fall in an hour it was already written for
    (bench/throughput.py: those writes were most of the consume loop's Redis packing). Each
    memory is dropped when it grows past ``limit`` entries, a partition's when its event clock
    moves or its windows are rebuilt, the HyperLogLog's every wall-clock hour: forgetting only
    costs writing again what Redis already holds (both writes are idempotent)."""

    def __init__(self, limit: int = 250_000) -> None:
        self.limit = limit
        self.heads: dict[int, dict[str, int]] = {}  # partition -> video -> newest hour written
        self.counted: set[str] = set()  # videos added to the HyperLogLog of ``counted_hour``
        self.counted_hour = -1

    def new_heads(self, partition: int, head: dict[str, int]) -> dict[str, int]:
        seen = self.heads.get(partition)
        if not seen:
            return head
        return {v: h for v, h in head.items() if h > seen.get(v, -1)}

    def wrote_heads(self, partition: int, head: dict[str, int]) -> None:
        seen = self.heads.setdefault(partition, {})
        if len(seen) + len(head) > self.limit:
            seen.clear()
        seen.update(head)

    def forget(self, partition: int) -> None:
        self.heads.pop(partition, None)

    def new_counted(self, hour: int, videos: set[str]) -> set[str]:
        if hour != self.counted_hour:
            self.counted, self.counted_hour = set(), hour
        return videos - self.counted

    def wrote_counted(self, videos: set[str]) -> None:
        if len(self.counted) + len(videos) > self.limit:
            self.counted = set()
        self.counted |= videos


def due_and_heads(cols: EventColumns, partitions: np.ndarray, clocks: dict[int, tuple[int, int]],
                  spikes: set[str], now: int, cadence: int) -> tuple[dict[int, dict[str, int]], dict[int, dict[str, int]]]:
    """What a batch makes due, per partition and video, and each video's newest event hour per
    partition (``clocks``: each partition's event clock before and after the batch). A minute
    spike is due before anything else; a video active in an hour that just closed, now; one
    with only late events (into closed hours), at the cadence. Per video, not per event."""
    g = cols.groups()
    videos = g.videos
    key = partitions * max(len(videos), 1) + g.index  # (partition, video)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if len(sk) else np.zeros(0, np.int64)
    hours = np.floor_divide(cols.ts, 3600.0).astype(np.int64)[order]
    newest = np.maximum.reduceat(hours, starts) if len(starts) else hours
    oldest = np.minimum.reduceat(hours, starts) if len(starts) else hours
    group_part = partitions[order][starts]
    group_video = g.index[order][starts]
    due: dict[int, dict[str, int]] = {}
    heads: dict[int, dict[str, int]] = {}
    for p, (old, new) in clocks.items():
        sel = group_part == p
        vids = [videos[k] for k in group_video[sel].tolist()]
        top, low = newest[sel], oldest[sel]
        heads[p] = dict(zip(vids, top.tolist(), strict=True))
        marks = due[p] = dict.fromkeys((v for v, late in zip(vids, (low < old).tolist(), strict=True) if late),
                                       cadence)
        if new > old:
            marks.update(dict.fromkeys((v for v, c in zip(vids, (top >= old).tolist(), strict=True) if c), now))
        if spikes:
            marks.update(dict.fromkeys((v for v in vids if v in spikes), URGENT_DUE_MS))
    return due, heads


class DueMarks:
    def __init__(self, ctx: WorkerContext, checkpoint: Checkpoint, confirm_hours) -> None:
        self.ctx = ctx
        self.checkpoint = checkpoint
        self.confirm_hours = confirm_hours  # callable: the serving decision's confirm_hours
        self.written = AlreadyWritten()
        self._active_refreshed = 0.0

    async def mark_due(self, events: EventColumns | list[Event], partitions, spikes: set[str]) -> set[int]:
        """Schedule what the new events make worth scoring (see the module docstring). Returns
        the partitions where a spike's mark was written."""
        ctx, cp = self.ctx, self.checkpoint
        assert ctx.schedule is not None and ctx.redis is not None
        cols = events if isinstance(events, EventColumns) else EventColumns.of_events(events)
        partitions = np.asarray(partitions, dtype=np.int64)
        confirm = self.confirm_hours()
        now = now_ms()
        cadence = now + int(ctx.settings.score_interval_seconds * 1000)
        clocks = {p: cp.clock.hours_to_close(p) for p in np.unique(partitions).tolist()}
        due, heads = due_and_heads(cols, partitions, clocks, spikes, now, cadence)
        videos = cols.groups().videos
        # The closing hours' idle videos are read first (a second round trip, once per event
        # hour and partition); everything else this batch writes goes in one pipeline.
        closing = [p for p, (old, new) in clocks.items() if new > old]
        if closing:
            pipe = ctx.redis.pipeline(transaction=False)
            for p in closing:  # idle videos whose last active hour (or the one after) just closed
                old, new = clocks[p]
                pipe.zrangebyscore(ctx.active_key(p), old - confirm, new - 1)
            results = await ctx.metrics.timed_redis("schedule", pipe.execute())
            for p, members in zip(closing, results, strict=True):
                marks = due.setdefault(p, {})
                for raw in members:
                    vid = raw.decode() if isinstance(raw, bytes) else raw
                    marks[vid] = min(marks.get(vid, now), now)
                old, new = clocks[p]
                ctx.metrics.hours_closed.labels(reason="events").inc(new - old)
        pipe = ctx.redis.pipeline(transaction=False)
        written = self.written
        fresh_heads = {}
        for p, head in heads.items():
            old, new = clocks[p]
            if new > old:
                written.forget(p)  # the trim below may drop what it remembers
            fresh = fresh_heads[p] = written.new_heads(p, head)
            if fresh:
                pipe.zadd(ctx.active_key(p), fresh, gt=True)
            if new > old:
                pipe.zremrangebyscore(ctx.active_key(p), "-inf", new - confirm - 2)
        ctx.schedule.queue_marks(pipe, due)
        wall_hour = int(time.time() // 3600)
        counted = written.new_counted(wall_hour, set(videos))
        if counted:
            self.queue_active(pipe, wall_hour, counted)
        # The clock moves before the marks land: a pass that claims a closure's mark the
        # moment it is written must judge the closed hour, not the clock before it (it would
        # release the mark having scored the old window, and an idle video gets no other).
        # Put back if the write fails, so that the retry still sees the closure.
        before = cp.clock.set_open({p: new for p, (_, new) in clocks.items()})
        try:
            if len(pipe):
                await ctx.metrics.timed_redis("schedule", pipe.execute())
        except BaseException:
            cp.clock.restore(before)
            raise
        for p, fresh in fresh_heads.items():
            written.wrote_heads(p, fresh)
        written.wrote_counted(counted)
        return {p for p, marks in due.items() if URGENT_DUE_MS in marks.values()} if spikes else set()

    async def close_idle_partitions(self) -> None:
        """A partition with no events for ``DETECTOR_IDLE_CLOSE_SECONDS`` closes its open event
        hour (and the ``confirm_hours`` after it), once: the last hours of a stream that
        stopped are judged too. Events that come later for those hours are late events."""
        ctx, cp = self.ctx, self.checkpoint
        if ctx.consumer is None or ctx.schedule is None or ctx.redis is None:
            return
        limit = ctx.settings.idle_close_seconds
        if limit <= 0:
            return
        t = time.monotonic()
        confirm = self.confirm_hours()
        due: dict[int, dict[str, int]] = {}
        for tp in ctx.owned():
            p = tp.partition
            idle = cp.clock.idle_for(p, t)
            if idle is None or idle < limit:
                continue
            old = cp.clock.open_hour(p)
            assert old is not None  # idle_for says None for an unknown clock
            new = old + 1 + confirm
            members = await ctx.metrics.timed_redis(
                "schedule", ctx.redis.zrangebyscore(ctx.active_key(p), old - 1 - confirm, new - 1))
            now = now_ms()
            due[p] = {(x.decode() if isinstance(x, bytes) else x): now for x in members}
            cp.clock.close_idle(p, confirm)
            ctx.metrics.hours_closed.labels(reason="idle").inc(new - old)
            log.info("partition %d idle for %.0f s: closed event hours up to %s (%d videos to judge)", p,
                     idle, iso(new * 3600), len(members))
        if due:
            await ctx.schedule.mark(due)

    def queue_active(self, pipe, wall_hour: int, video_ids: set[str]) -> None:
        """Distinct videos updated per hour in a HyperLogLog (a PFADD in the batch's pipeline)."""
        key = keys.active_videos(self.ctx.settings.key_prefix, wall_hour)
        pipe.pfadd(key, *video_ids)
        pipe.expire(key, 25 * 3600)

    async def refresh_active_gauge(self) -> None:
        """The gauge is the union of the last 24 hours, across all workers, refreshed every 10 s."""
        ctx = self.ctx
        assert ctx.redis is not None
        now = time.monotonic()
        if now - self._active_refreshed >= 10.0:
            self._active_refreshed = now
            hour = int(time.time() // 3600)
            names = [keys.active_videos(ctx.settings.key_prefix, h) for h in range(hour - 23, hour + 1)]
            ctx.metrics.active_videos.set(await ctx.metrics.timed_redis("active", ctx.redis.pfcount(*names)))
