"""The consume side: one fetched batch → parsed events → windows → schedule marks → dead letters.

Every record is parsed on its own (a failure is that record's ``internal_error``); valid
events are judged late against their partition's event time before the batch, applied to
the windows in one Lua call (a batch that fails for any reason but the connection is bisected
down to the failing records), and the videos worth scoring are marked due in the durable
schedule (``marks``). Only then are the batch's offsets handed to the
checkpoint as committable. Before a partition's batch is written, its state marker is checked:
a partition whose windows Redis lost is rebuilt from the input topic first (``rebuild``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiokafka import TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream_detector.events import (
    Event,
    EventColumns,
    ParsedRecords,
    Rejection,
    parse_records,
)
from stream_detector.series import METRICS
from stream_detector.windows import ApplyResult
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.marks import DueMarks
from stream_detector.worker.rebuild import Rebuilder

log = logging.getLogger("stream_detector.ingest")

MAX_TRACKED_VIDEOS = 1_000_000  # bound of the in-memory arrival-time map (~100 MB)


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


class Ingest:
    def __init__(self, ctx: WorkerContext, checkpoint: Checkpoint, arrivals: Arrivals,
                 confirm_hours) -> None:
        self.ctx = ctx
        self.checkpoint = checkpoint
        self.arrivals = arrivals
        self.confirm_hours = confirm_hours  # callable: the serving decision's confirm_hours
        self.consumed = 0
        self._channels: dict[str, str] = {}  # what remember_channels wrote lately
        self.marks = DueMarks(ctx, checkpoint, confirm_hours)
        self.rebuilder = Rebuilder(ctx, checkpoint, self.marks)

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
                    await self.rebuilder.rebuild(tp)
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
                                          lambda: self.marks.mark_due(events, partitions, result.spikes), ctx.stopping)
            if events.channel_ids is not None:  # event 1.1: the moderation loop's channel scope
                await ctx.guard.call("redis", "channels", lambda: self.remember_channels(events), ctx.stopping)
            if ctx.accounts is not None and events.user_ids is not None:  # the user level (event 1.1)
                await ctx.guard.call("redis", "accounts", lambda: ctx.accounts.ingest(events, partitions),
                                     ctx.stopping)
            await ctx.guard.call("redis", "active videos", self.marks.refresh_active_gauge, ctx.stopping)
            self.arrivals.add(b.arrivals(), result.spikes, spiked)
            self._count_consumed(events)  # replayed events are counted by the window store
        if dead:
            await ctx.guard.call("broker", "dead letters", lambda: self.dead_letter(dead), ctx.stopping)
        cp.written(b.fetched)  # committable: windows, marks and dead letters are written

    async def remember_channels(self, events: EventColumns) -> None:
        """The latest channel of each video (event 1.1 ``channel_id``), written when it changes:
        a channel allowlist (moderation.py) holds for every video of the channel."""
        ctx = self.ctx
        latest = {v: ch for v, ch in zip(events.video_ids, events.channel_ids or (), strict=True) if ch is not None}
        changed = {v: ch for v, ch in latest.items() if self._channels.get(v) != ch}
        if not changed:
            return
        ttl = int(ctx.settings.idle_ttl_seconds)
        pipe = ctx.redis.pipeline(transaction=False)
        for v, ch in changed.items():
            pipe.set(ctx.channel_key(v), ch, ex=ttl)
        await ctx.metrics.timed_redis("verdicts", pipe.execute())
        if len(self._channels) + len(changed) > MAX_TRACKED_VIDEOS:
            self._channels.clear()
        self._channels.update(changed)

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
        """Send rejected records to the dead-letter topic (``WorkerContext.send_dead_letters``)."""
        ctx = self.ctx
        await ctx.send_dead_letters(dead)
        for _, _, rejection in dead:  # counted once delivered (a retried send is not counted twice)
            ctx.metrics.events_invalid.labels(reason=rejection.reason).inc()
