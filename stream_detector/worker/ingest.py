"""The consume side: one fetched batch → parsed events → windows → schedule marks → dead letters.

Every record is parsed on its own (a failure is that record's ``internal_error``); valid
events are judged late against their partition's event time before the batch, applied to
the windows in one Lua call (a batch that fails for any reason but the connection is bisected
down to the failing records), and the videos worth scoring are marked due in the durable
schedule: when an event hour they were active in closes, at once for a minute spike, at the
cadence for late events into closed hours. Only then are the batch's offsets handed to the
checkpoint as committable. Before a partition's batch is written, its state marker is checked:
a partition whose windows Redis lost is rebuilt from the input topic first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream_detector import keys
from stream_detector.events import (
    Event,
    EventColumns,
    ParsedRecords,
    Rejection,
    dead_letter_headers,
    parse_records,
)
from stream_detector.flags import iso
from stream_detector.schedule import now_ms
from stream_detector.series import METRICS
from stream_detector.windows import ApplyResult
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext

log = logging.getLogger("stream_detector.ingest")

URGENT_DUE_MS = 0  # the immediate path: due before any other mark
MAX_TRACKED_VIDEOS = 1_000_000  # bound of the in-memory arrival-time map (~100 MB)
MAX_DLQ_KEY_BYTES = 1024  # a dead-letter copy's key beyond this is cut (its partition does not matter)


class Arrivals:
    """Newest Kafka timestamp per video not yet scored (end-to-end latency), and the videos
    and partitions the immediate path marked: handed from the consume side to the scoring side.

    ``calm`` is clear from a spike's mark until the immediate pass that judges it has ended:
    cadence lanes wait for it (boundedly) before they claim, so that in an hour closure's storm
    of cadence batches a spike does not queue for the cores behind them."""

    def __init__(self) -> None:
        self.arrival_ms: dict[str, float] = {}
        self.urgent: set[str] = set()
        self.spiked = asyncio.Event()  # set once a spike's mark is written: the immediate path looks now
        self.spiked_partitions: set[int] = set()  # whose marks the immediate path has not claimed yet
        self.calm = asyncio.Event()
        self.calm.set()

    def spike(self, partitions: set[int]) -> None:
        """Spike marks are written in these partitions: the immediate path looks there now."""
        if partitions:
            self.spiked_partitions |= partitions
            self.calm.clear()
            self.spiked.set()

    def take_spiked(self) -> set[int]:
        taken, self.spiked_partitions = self.spiked_partitions, set()
        return taken

    def add(self, arrivals: Sequence[Mapping[str, float]], spikes: set[str], spiked_partitions: set[int]) -> None:
        """Newest arrival per video (one mapping per slice of a batch), the spiked videos and
        the partitions their marks are in."""
        if len(self.arrival_ms) > MAX_TRACKED_VIDEOS:
            # entries of videos now scored by another worker (after a rebalance) never pop here;
            # dropping them only loses latency samples and the "immediate" label, not scoring
            log.warning("dropping %d tracked arrival times (bound %d)", len(self.arrival_ms), MAX_TRACKED_VIDEOS)
            self.arrival_ms.clear()
            self.urgent.clear()
        known = self.arrival_ms
        for arrival in arrivals:
            for vid, t in arrival.items():
                if t > known.get(vid, 0.0):
                    known[vid] = t
        self.urgent |= spikes
        self.spike(spiked_partitions)

    def take(self, ids: list[str]) -> tuple[dict[str, float], bool]:
        urgent = any(v in self.urgent for v in ids)
        self.urgent.difference_update(ids)
        return {v: self.arrival_ms.pop(v, 0.0) for v in ids}, urgent


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


@dataclass
class Slice:
    """Records of one partition from one fetch, parsed, and their timely valid events."""

    tp: TopicPartition
    records: list
    parsed: ParsedRecords


@dataclass
class Prepared:
    """A fetched batch, parsed and judged, not yet written: its slices (the valid events as
    columns, with the Kafka offset and source record of each), what is to be dead-lettered, and
    where each partition's fetch ended."""

    slices: list[Slice] = field(default_factory=list)
    tps: dict[int, TopicPartition] = field(default_factory=dict)  # partition -> its TopicPartition
    dead: list[tuple] = field(default_factory=list)  # (record, tp, rejection)
    fetched: dict[TopicPartition, int] = field(default_factory=dict)  # next offset per partition
    highs: dict[int, float] = field(default_factory=dict)  # event-time high mark per partition
    n: int = 0

    def __len__(self) -> int:
        """Valid, timely events."""
        return sum(len(s.parsed) for s in self.slices)

    def columns(self) -> EventColumns:
        return EventColumns.concat([s.parsed.columns for s in self.slices])

    def offsets(self) -> np.ndarray:
        return np.concatenate([s.parsed.offsets for s in self.slices]) if self.slices else np.zeros(0, np.int64)

    def partitions(self) -> np.ndarray:
        if not self.slices:
            return np.zeros(0, np.int64)
        return np.concatenate([np.full(len(s.parsed), s.tp.partition, dtype=np.int64) for s in self.slices])

    def records(self) -> list:
        """The source record of each valid event (the dead-letter path's, not the hot path's)."""
        return [s.records[r] for s in self.slices for r in s.parsed.rows.tolist()]

    def arrivals(self) -> list[dict[str, int]]:
        """Newest Kafka timestamp per video, one mapping per slice."""
        return [s.parsed.arrival for s in self.slices]

    def keep_owned(self, owned: set) -> None:
        """Drop what belongs to partitions revoked since the batch was prepared."""
        gone = {tp for tp in self.fetched if tp not in owned} | {tp for _, tp, _ in self.dead if tp not in owned}
        if not gone:
            return
        self.slices = [s for s in self.slices if s.tp not in gone]
        self.dead = [d for d in self.dead if d[1] not in gone]
        self.fetched = {tp: o for tp, o in self.fetched.items() if tp not in gone}
        parts = {tp.partition for tp in gone}
        self.highs = {p: h for p, h in self.highs.items() if p not in parts}


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


class Ingest:
    def __init__(self, ctx: WorkerContext, checkpoint: Checkpoint, arrivals: Arrivals,
                 confirm_hours) -> None:
        self.ctx = ctx
        self.checkpoint = checkpoint
        self.arrivals = arrivals
        self.confirm_hours = confirm_hours  # callable: the serving decision's confirm_hours
        self.consumed = 0
        self._active_refreshed = 0.0
        self.written = AlreadyWritten()

    # -- one batch ---------------------------------------------------------------------------
    def prepare(self, batches: dict[TopicPartition, list], into: Prepared | None = None) -> Prepared:
        """Parse and judge a fetched batch (CPU only, no I/O): the consume loop runs this for the
        next batch while the previous one's writes wait on Redis. Event time advances here, in
        fetch order; records of partitions no longer owned are left to their new owner."""
        ctx, cp = self.ctx, self.checkpoint
        s, m = ctx.settings, ctx.metrics
        now = time.time()
        b = Prepared() if into is None else into
        owned = ctx.owned()
        for tp, records in batches.items():
            if tp not in owned:
                continue  # revoked since the fetch: never committed here, the new owner replays them
            p = tp.partition
            b.tps[p] = tp
            b.n += len(records)
            parsed = parse_records(records, now=now, max_bytes=s.max_event_bytes,
                                   max_count=s.max_count_per_event, max_future_s=s.max_future_seconds)
            for i, rejection in parsed.rejected:
                b.dead.append((records[i], tp, rejection))
                if rejection.reason == "internal_error":
                    m.internal_errors.labels(stage="parse").inc()
            # judged against the event time before the batch: a replayed batch can span hours
            # of event time, and its own events must not make each other late
            ts = parsed.columns.ts
            low = cp.clock.robust_high(p) - s.allowed_lateness_seconds
            high = cp.clock.robust_high(p, ts)
            if len(ts):
                late = ts < low
                if late.any():
                    for k in np.flatnonzero(late).tolist():
                        b.dead.append((records[int(parsed.rows[k])], tp,
                                       Rejection("late", f"ts {ts[k]:.0f} < watermark {low:.0f}")))
                        m.events_late.inc()
                    parsed = parsed.without(late, records)
                b.slices.append(Slice(tp, records, parsed))
                mismatched = int(np.count_nonzero(parsed.key_mismatch))
                if mismatched:
                    m.key_mismatch.inc(mismatched)
            b.highs[p] = max(b.highs.get(p, 0.0), high)  # applied when written (see write)
            if records:
                cp.check_continuity(tp, records[0].offset)
                cp.fetched_to[tp] = records[-1].offset + 1
                b.fetched[tp] = records[-1].offset + 1
        return b

    async def write(self, b: Prepared) -> None:
        """Windows, schedule marks and dead letters of a prepared batch, then its offsets become
        committable. Called under the detector's batch lock, batches in fetch order."""
        ctx, cp = self.ctx, self.checkpoint
        s, m = ctx.settings, ctx.metrics
        b.keep_owned(ctx.owned())
        # event time moves on only with what is written: a watermark persisted ahead of the
        # committed offsets would make a dropped prepared batch's events look late on replay
        for p, high in b.highs.items():
            cp.clock.advance(p, high)
        dead = b.dead
        self.consumed += b.n
        m.consume_batch_size.observe(b.n)
        if cp.clock.watermark:
            m.watermark.set(max(cp.clock.watermark.values()))
        if len(b):
            events = b.columns()
            offsets = b.offsets()
            partitions = b.partitions()

            async def write_windows():
                for tp in await cp.find_lost({sl.tp.partition for sl in b.slices}):
                    await self.rebuild(tp)
                cp.lost.clear()
                return await self.apply_isolating(events, offsets, partitions, cp.fresh(offsets, partitions))

            result, poisoned = await ctx.guard.call("redis", "windows", write_windows, ctx.stopping)
            records = b.records() if poisoned or result.late else None
            if poisoned:
                for idx, reason in poisoned.items():
                    dead.append((records[idx], b.tps[int(partitions[idx])], Rejection("internal_error", reason)))
                keep = [i for i in range(len(events)) if i not in poisoned]
                events, partitions = events.take(keep), partitions[keep]
                records = [records[i] for i in keep]
                position = {i: k for k, i in enumerate(keep)}
                late = [position[i] for i in result.late]
            else:
                late = result.late
            for idx in late:
                dead.append((records[idx], b.tps[int(partitions[idx])],
                             Rejection("late", f"ts {events.ts[idx]:.0f} older than the {s.window_hours} h window")))
            if late:  # dead-lettered: not consumed, not scheduled, not an account's action
                dropped = set(late)
                keep = [i for i in range(len(events)) if i not in dropped]
                events, partitions = events.take(keep), partitions[keep]
            spiked = await ctx.guard.call("redis", "schedule",
                                          lambda: self.mark_due(events, partitions, result.spikes), ctx.stopping)
            if ctx.accounts is not None and events.user_ids is not None:  # the user level (event 1.1)
                await ctx.guard.call("redis", "accounts", lambda: ctx.accounts.ingest(events, partitions),
                                     ctx.stopping)
            await ctx.guard.call("redis", "active videos", self.refresh_active_gauge, ctx.stopping)
            self.arrivals.add(b.arrivals(), result.spikes, spiked)
            self._count_consumed(events)  # replayed events are counted by the window store
        if dead:
            await ctx.guard.call("broker", "dead letters", lambda: self.dead_letter(dead), ctx.stopping)
        cp.written(b.fetched)  # committable: windows, marks and dead letters are written

    def _count_consumed(self, events: EventColumns) -> None:
        totals = np.count_nonzero(events.counts > 0, axis=0)
        for name, k in zip(METRICS, totals.tolist(), strict=True):
            if k:
                self.ctx.metrics.events_consumed.labels(metric=name).inc(k)

    async def apply_isolating(self, events: EventColumns | list[Event], offsets, partitions,
                              fresh: np.ndarray | None = None) -> tuple[ApplyResult, dict[int, str]]:
        """Apply a batch to the windows; if it fails for a reason that is not the connection
        (one record the code cannot handle), bisect down to the failing records so that they
        alone are dead-lettered and the rest of the partition goes on. Re-applying a half that
        already landed is safe: the windows skip offsets they hold."""
        windows, m = self.ctx.windows, self.ctx.metrics
        assert windows is not None
        cols = events if isinstance(events, EventColumns) else EventColumns.of_events(events)
        offsets = np.asarray(offsets, dtype=np.int64)
        partitions = np.asarray(partitions, dtype=np.int64)
        poisoned: dict[int, str] = {}
        merged = ApplyResult()

        async def run(idx: list[int]) -> None:
            whole = len(idx) == len(cols)
            try:
                part = await windows.apply(cols if whole else cols.take(idx), offsets if whole else offsets[idx],
                                           partitions if whole else partitions[idx],
                                           None if fresh is None else fresh if whole else fresh[idx])
            except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the record, never crash-loop on it
                if len(idx) == 1:
                    log.error("window update failed for one record (dead-lettered as internal_error): %s: %s",
                              type(exc).__name__, exc)
                    poisoned[idx[0]] = f"windows: {type(exc).__name__}: {exc}"
                    return
                half = len(idx) // 2
                await run(idx[:half])
                await run(idx[half:])
                return
            merged.late.extend(idx[j] for j in part.late)
            merged.replayed += part.replayed
            merged.changed |= part.changed
            merged.spikes |= part.spikes
            merged.no_dedup += part.no_dedup
            if part.no_dedup:
                m.no_dedup.inc(part.no_dedup)

        await run(list(range(len(cols))))
        merged.late.sort()
        if poisoned:
            m.internal_errors.labels(stage="windows").inc(len(poisoned))
        return merged, poisoned

    async def dead_letter(self, dead: list[tuple]) -> None:
        """Send rejected records to the dead-letter topic: their original bytes (truncated, with
        headers saying so, when the copy would exceed the producer's request limit)."""
        ctx = self.ctx
        assert ctx.producer is not None
        limit = ctx.settings.dlq_max_value_bytes
        futures = []
        for rec, tp, rejection in dead:
            value, key = rec.value, rec.key
            headers = dead_letter_headers(rejection, tp.topic, tp.partition, rec.offset)
            if value is not None and len(value) > limit:
                headers += [("dlq.truncated", b"true"), ("dlq.original_size", str(len(value)).encode())]
                value = value[:limit]
            if key is not None and len(key) > MAX_DLQ_KEY_BYTES:
                headers += [("dlq.key_truncated", b"true"), ("dlq.original_key_size", str(len(key)).encode())]
                key = key[:MAX_DLQ_KEY_BYTES]
            futures.append(await ctx.producer.send(ctx.settings.dlq_topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)
        for _, _, rejection in dead:  # counted once delivered (a retried send is not counted twice)
            ctx.metrics.events_invalid.labels(reason=rejection.reason).inc()

    # -- the schedule ------------------------------------------------------------------------
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

    # -- state loss --------------------------------------------------------------------------
    async def rebuild(self, tp: TopicPartition) -> None:
        """Re-apply the retained last window (168 h, located by record time) of a partition whose
        windows Redis lost, up to what this worker had written, then re-judge every video in it.
        The input topic's retention must cover the window (README: "State in Redis")."""
        ctx, cp = self.ctx, self.checkpoint
        s = ctx.settings
        self.written.forget(tp.partition)  # Redis lost what it remembers
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
