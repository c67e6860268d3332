"""State loss: a partition whose windows Redis lost is rebuilt from the input topic.

The retained last window (168 h, located by record time) is re-applied up to what this worker
had written, and every video in it is judged again (its decision state went with Redis). A
partition found lost when it is assigned has no event clock yet: the rebuilt events set it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_detector.events import parse_records
from stream_detector.schedule import now_ms
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.marks import DueMarks

log = logging.getLogger("stream_detector.rebuild")


class Rebuilder:
    def __init__(self, ctx: WorkerContext, checkpoint: Checkpoint, marks: DueMarks) -> None:
        self.ctx = ctx
        self.checkpoint = checkpoint
        self.marks = marks

    async def rebuild(self, tp: TopicPartition) -> None:
        """Re-apply the retained last window (168 h, located by record time) of a partition whose
        windows Redis lost, up to what this worker had written, then re-judge every video in it.
        The input topic's retention must cover the window (README: "State in Redis")."""
        ctx, cp = self.ctx, self.checkpoint
        s = ctx.settings
        self.marks.written.forget(tp.partition)  # Redis lost what it remembers
        upto = cp.positions.get(tp)
        if upto is None:
            committed = await ctx.consumer.committed(tp) if ctx.consumer is not None else None
            upto = committed or 0
        if upto <= 0:
            return
        t0 = time.monotonic()
        since_ms = int((time.time() - s.window_hours * 3600 - s.allowed_lateness_seconds) * 1000)
        reader = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
                                  max_partition_fetch_bytes=4 * 1024 * 1024)
        await reader.start()
        applied = 0
        videos: set[str] = set()
        # found lost at assignment, the partition has no event clock yet: the rebuilt events set it
        clock_unknown = cp.clock.open_hour(tp.partition) is None
        try:
            reader.assign([tp])
            found = await reader.offsets_for_times({tp: max(since_ms, 0)})
            first = (await reader.beginning_offsets([tp]))[tp]
            start = found[tp].offset if found.get(tp) is not None else first
            if start > first:
                log.warning("partition %s[%d]: rebuilding from offset %d (the last %d h); older retained records "
                            "are outside the window", tp.topic, tp.partition, start, s.window_hours)
            reader.seek(tp, start)
            now = time.time()
            while await reader.position(tp) < upto:
                got = await reader.getmany(tp, timeout_ms=2000, max_records=s.consume_max_records)
                recs = [r for r in got.get(tp, []) if r.offset < upto]
                if not got:
                    break  # nothing more retained
                parsed = parse_records(recs, now=now, max_bytes=s.max_event_bytes,
                                       max_count=s.max_count_per_event, max_future_s=s.max_future_seconds)
                if len(parsed):
                    await ctx.guard.call("redis", "rebuild", lambda parsed=parsed: ctx.windows.apply(
                        parsed.columns, parsed.offsets, np.full(len(parsed), tp.partition, dtype=np.int64)))
                    applied += len(parsed)
                    videos.update(parsed.columns.video_ids)
                    if clock_unknown:
                        cp.clock.robust_high(tp.partition, parsed.columns.ts)
        finally:
            await reader.stop()
        if clock_unknown and applied:  # the open event hour, as if the rebuilt events had just been consumed
            cp.clock.start_from_high(tp.partition)
        if videos:  # every rebuilt video is judged again (its decision state went with Redis)
            await ctx.schedule.mark({tp.partition: dict.fromkeys(videos, now_ms())})
            await ctx.redis.zadd(ctx.active_key(tp.partition),
                                 {v: (cp.clock.open_hour(tp.partition) or 0) - 1 for v in videos}, gt=True)
        await cp.save()
        ctx.metrics.state_rebuilds.inc()
        ctx.metrics.state_rebuilt_events.inc(applied)
        log.error("partition %s[%d]: Redis had lost its windows; rebuilt %d events of %d videos from the input topic "
                  "in %.1f s", tp.topic, tp.partition, applied, len(videos), time.monotonic() - t0)
