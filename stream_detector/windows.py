"""Per-video rolling windows in Redis: hour buckets plus a small minute ring.

Layout: one Redis string per video, key ``{prefix}:w:{<video_id>}`` (hash-tagged by video),
created once at its exact size so it carries no allocator slack, holding big-endian u32
cells (see ``windows.lua`` for the byte layout): a 32-byte header (layout, head hour, head
minute, published hour, partition, last applied Kafka offset), a ring of ``W`` hours × 4
metrics and a ring of ``MINUTE_SLOTS`` minutes × 4 metrics. For W=168 the value is 2,976
bytes: ``MEMORY USAGE`` ≈ 3.0-3.2 KiB per active video (jemalloc class 3072 + object,
key and dict entry), under the 4 KiB budget. Counts saturate at 2**32-1.

Hot path: :meth:`WindowStore.apply` aggregates a consumed batch in numpy (one increment per
video-hour-metric and video-minute-metric), packs it into three binary blobs and applies it
with one ``EVALSHA`` per ``VIDEOS_PER_CALL`` videos (one for most batches). The script is replay-safe: each video stores the last
applied Kafka offset (and its partition); a batch slice whose offsets were all applied is
skipped (counted as replayed), a partly applied slice is re-sent with only the unapplied
events (a second call, rare). Idle videos expire between ``ttl_seconds`` and
``ttl_seconds`` + 1 h after their last update (the script refreshes EXPIRE at most once per
wall-clock hour per video, with one hour of margin, which saves a command per update).

Spikes: ``ApplyResult.spikes`` names the videos where a metric incremented by this batch
reached ``spike_minute_count`` in its minute (the minute ring keeps ``MINUTE_SLOTS`` minutes
ending at the newest one; older minutes still count in their hour).

Replay protection assumes the producer contract (key = video_id): offsets of one video are
compared within one partition. Events of one video from several partitions in a batch, or
from a partition other than the stored one, are applied without de-duplication (never
silently skipped) and counted in ``ApplyResult.no_dedup``. A log that started again (the
consumer's position went back: truncated, re-created, a broker restarted empty) reuses offsets
the windows hold: the worker marks those events ``fresh`` (``Checkpoint.fresh_below``) and they
are applied, their offsets becoming the guard's.

Redis Cluster: keys are hash-tagged by video and every script call only touches the keys it
declares. With a ``redis.asyncio.cluster.RedisCluster`` client the batch is split into one
call per hash slot (correct, but about one call per video: for cluster throughput, tag by
Kafka partition instead). Tested on a real three-master cluster (``tests/test_redis_cluster.py``).

The client must be created with ``decode_responses=False`` (values are binary).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from redis.exceptions import NoScriptError

from . import keys
from .events import Event, EventColumns, VideoGroups
from .metrics import Metrics
from .series import METRICS, HourlySeries

if TYPE_CHECKING:
    import redis.asyncio

MINUTE_SLOTS = 16
"""Minutes kept per video in the minute ring (the spike path looks at these)."""

VIDEOS_PER_CALL = 2000
"""Videos per window script call. The script blocks Redis while it runs (~10 us a video), and
one call for a whole 20,000-record fetch would hold every other client (the scoring side's
reads and writes, the immediate path's) for ~0.1 s: calls are sent one after the other, so
other clients' commands run between them."""

HEADER_CELLS = 8
U32_MAX = 2**32 - 1
_NO_PARTITION = 0
_FLAG_NO_DEDUP = 1
_FLAG_FRESH = 2  # applied without the replay check; its offsets become the stored ones
_MAX_RETRIES = 3

_SCRIPT = (Path(__file__).with_name("windows.lua")).read_text()

_VIDEO_DTYPE = np.dtype(
    [
        ("min_off", ">i8"),
        ("max_off", ">i8"),
        ("partition", ">u4"),
        ("flags", ">u4"),
        ("pub_hour", ">u4"),
        ("n_hours", ">u4"),
        ("n_minutes", ">u4"),
        ("max_hour", ">u4"),
        ("max_minute", ">u4"),
    ]
)
_RESULT_DTYPE = np.dtype([("status", "u1"), ("bits", "u1"), ("head", ">u4"), ("stored", ">i8")])
_APPLIED, _REPLAYED, _PARTIAL = 0, 1, 2
_BIT_SPIKE, _BIT_CHANGED = 1, 2


@dataclass
class ApplyResult:
    changed: set[str] = field(default_factory=set)
    late: list[int] = field(default_factory=list)  # indices into the input events
    replayed: int = 0  # events skipped because their offset was already applied
    spikes: set[str] = field(default_factory=set)
    no_dedup: int = 0  # videos whose events came from several partitions in one batch


class WindowStore:
    """Rolling per-video windows in Redis (see module docstring)."""

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        *,
        window_hours: int = 168,
        ttl_seconds: int,
        prefix: str = "sd",
        spike_minute_count: int = 500,
        metrics: Metrics | None = None,
    ) -> None:
        if not 1 <= window_hours <= 65535:
            raise ValueError("window_hours must be in 1..65535")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be > 0")
        kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValueError("WindowStore needs a Redis client with decode_responses=False")
        self.redis = redis
        self.window_hours = int(window_hours)
        self.ttl_seconds = int(ttl_seconds)
        self.prefix = prefix
        self.spike_minute_count = int(spike_minute_count)
        self.metrics = metrics
        self.value_bytes = 4 * (HEADER_CELLS + 4 * self.window_hours + 4 * MINUTE_SLOTS)
        self.layout = self.window_hours * 65536 + MINUTE_SLOTS
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()
        self._script_loaded = False
        self._cluster = type(redis).__name__ == "RedisCluster"

    def key(self, video_id: str) -> str:
        return keys.window(self.prefix, video_id)

    # ------------------------------------------------------------------ metrics
    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        m = self.metrics
        t0 = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            expected = asyncio.CancelledError | GeneratorExit | NoScriptError  # not failures
            if m is not None and not isinstance(exc, expected):
                m.redis_errors.labels(operation=operation).inc()
            raise
        finally:
            if m is not None:
                m.redis_latency.labels(operation=operation).observe(time.perf_counter() - t0)

    # ------------------------------------------------------------------ apply
    async def apply(
        self,
        events: EventColumns | Sequence[Event],
        offsets: Sequence[int] | np.ndarray | None,
        partitions: Sequence[int] | np.ndarray | None = None,
        fresh: np.ndarray | None = None,
    ) -> ApplyResult:
        """Add a consumed batch to the windows, exactly once per (partition, offset).

        ``events``: columns (the consume path's form) or ``Event`` objects. ``offsets[i]`` is
        the Kafka offset of event i; ``partitions[i]`` its partition (default: all 0; pass it
        when a batch spans partitions so a video keyed to the wrong partition cannot make valid
        events look replayed). ``offsets=None`` disables replay protection for this batch;
        ``fresh[i]`` for event i alone (its offset belongs to a log that started again, which
        the stored offsets know nothing of: the video is applied and its stored offset reset). Late
        events (older than the video's head hour − (W−1)) are not stored and are returned in
        ``result.late``.
        """
        cols = events if isinstance(events, EventColumns) else EventColumns.of_events(events)
        result = ApplyResult()
        n = len(cols)
        if n == 0:
            return result
        if offsets is None:
            off = np.arange(n, dtype=np.int64)
            forced = True
            new_log = np.zeros(n, dtype=bool)
        else:
            off = np.asarray(offsets, dtype=np.int64)
            forced = False
            new_log = np.zeros(n, dtype=bool) if fresh is None else np.asarray(fresh, dtype=bool)
            if new_log.shape != (n,):
                raise ValueError("fresh must have one entry per event")
            if off.shape != (n,):
                raise ValueError("offsets must have one entry per event")
            if n and off.min() < 0:
                raise ValueError("Kafka offsets are >= 0")
        part = (
            np.zeros(n, dtype=np.int64)
            if partitions is None
            else np.asarray(partitions, dtype=np.int64)
        )
        if part.shape != (n,):
            raise ValueError("partitions must have one entry per event")

        hours = np.floor_divide(cols.ts, 3600.0).astype(np.int64)
        minutes = np.floor_divide(cols.ts, 60.0).astype(np.int64)
        batch = _Batch(cols.video_ids, hours, minutes, cols.counts, off, part, cols.published, forced, new_log)
        if self._cluster:  # one call per hash slot, concurrently
            outcomes = await asyncio.gather(*(self._apply_group(batch, g, None)
                                              for g in self._slot_groups(cols.video_ids)))
        else:  # calls of at most VIDEOS_PER_CALL videos, one after the other (see the constant)
            outcomes = [await self._apply_group(batch, idx, g) for idx, g in _chunks(cols.groups())]
        for late, replayed, changed, spikes, no_dedup in outcomes:
            result.late.extend(late)
            result.replayed += replayed
            result.changed |= changed
            result.spikes |= spikes
            result.no_dedup += no_dedup
        result.late.sort()
        if self.metrics is not None and result.replayed:
            self.metrics.events_replayed.inc(result.replayed)
        return result

    def _slot_groups(self, video_ids: list[str]) -> list[np.ndarray]:
        from redis.crc import key_slot

        slots: dict[int, list[int]] = {}
        cache: dict[str, int] = {}
        for i, v in enumerate(video_ids):
            s = cache.get(v)
            if s is None:
                s = cache[v] = key_slot(self.key(v).encode())
            slots.setdefault(s, []).append(i)
        return [np.asarray(ix, dtype=np.int64) for ix in slots.values()]

    async def _apply_group(self, b: _Batch, idx: np.ndarray, groups: VideoGroups | None):
        """The events ``idx`` (``groups``: their grouping by video, if known) in one script call,
        and again for the events of videos whose stored offset overlapped them."""
        late: list[int] = []
        replayed = 0
        changed: set[str] = set()
        spikes: set[str] = set()
        no_dedup = 0
        for _attempt in range(_MAX_RETRIES):
            packed = self._pack(b, idx, groups)
            groups = None  # a retry sends fewer events
            no_dedup += packed.no_dedup
            raw = await self._eval(packed)
            res = np.frombuffer(raw, dtype=_RESULT_DTYPE)
            if res.shape[0] != len(packed.videos):
                raise RuntimeError(
                    f"window script returned {res.shape[0]} records for {len(packed.videos)} videos"
                )
            status = res["status"]
            ev_status = status[packed.vidx]
            # applied: late = hour below the window of the head after the update
            low = res["head"].astype(np.int64) - (self.window_hours - 1)
            is_late = (ev_status == _APPLIED) & (b.hours[idx] < low[packed.vidx])
            late.extend(idx[is_late].tolist())
            bits = res["bits"]
            for j in np.flatnonzero((status == _APPLIED) & ((bits & _BIT_CHANGED) > 0)):
                changed.add(packed.videos[j])
            for j in np.flatnonzero((status == _APPLIED) & ((bits & _BIT_SPIKE) > 0)):
                spikes.add(packed.videos[j])
            replayed += int(np.count_nonzero(ev_status == _REPLAYED))
            partial = ev_status == _PARTIAL
            if not partial.any():
                break
            # partial overlap: re-send only the events after the stored offset
            stored = res["stored"].astype(np.int64)[packed.vidx]
            fresh = partial & (b.off[idx] > stored)
            replayed += int(np.count_nonzero(partial & ~fresh))
            idx = idx[fresh]
            if idx.size == 0:
                break
        else:
            raise RuntimeError("window offsets kept moving under a concurrent writer")
        return late, replayed, changed, spikes, no_dedup

    def _pack(self, b: _Batch, idx: np.ndarray, groups: VideoGroups | None) -> _Packed:
        """Aggregate the events ``idx`` per video-hour and video-minute into script blobs."""
        vids = b.video_ids
        g = groups if groups is not None else VideoGroups.of([vids[i] for i in idx.tolist()])
        videos, vidx = g.videos, g.index
        nv = len(videos)
        off = b.off[idx]
        part = b.part[idx]
        hours = b.hours[idx]
        minutes = b.minutes[idx]
        counts = b.counts[idx]

        rec = np.zeros(nv, dtype=_VIDEO_DTYPE)
        rec["min_off"] = g.reduce(np.minimum, off)
        rec["max_off"] = g.reduce(np.maximum, off)
        pmin = g.reduce(np.minimum, part)
        pmax = g.reduce(np.maximum, part)
        mixed = pmin != pmax
        rec["partition"] = pmin
        fresh = g.reduce(np.maximum, b.fresh[idx].astype(np.int8)) > 0
        rec["flags"] = np.where(mixed | b.forced, _FLAG_NO_DEDUP, np.where(fresh, _FLAG_FRESH, 0))
        rec["max_hour"] = g.reduce(np.maximum, hours)
        rec["max_minute"] = g.reduce(np.maximum, minutes)
        if b.pub:
            pub_hour = np.zeros(nv, dtype=np.int64)
            pos = {int(i): k for k, i in enumerate(idx.tolist())} if idx.size != len(vids) else None
            for i, p in b.pub:
                k = i if pos is None else pos.get(i)
                if k is not None and pub_hour[vidx[k]] == 0:
                    pub_hour[vidx[k]] = int(p // 3600)
            rec["pub_hour"] = pub_hour

        hblob, nh = _entries(vidx, hours, counts, nv)
        mblob, nm = _entries(vidx, minutes, counts, nv)
        rec["n_hours"] = nh
        rec["n_minutes"] = nm
        return _Packed(
            videos=videos,
            vidx=vidx,
            keys=[self.key(v) for v in videos],
            vblob=rec.tobytes(),
            hblob=hblob,
            mblob=mblob,
            no_dedup=0 if b.forced else int(np.count_nonzero(mixed)),
        )

    async def _eval(self, p: _Packed) -> bytes:
        args = (
            self.window_hours,
            self.ttl_seconds,
            self.spike_minute_count,
            MINUTE_SLOTS,
            int(time.time() // 3600),
            p.vblob,
            p.hblob,
            p.mblob,
        )
        if not self._script_loaded:
            await self._load_script()
        try:
            with self._timed("apply"):
                return await self.redis.evalsha(self._sha, len(p.keys), *p.keys, *args)
        except NoScriptError:  # Redis restarted, failed over or SCRIPT FLUSH
            await self._load_script()
            with self._timed("apply"):
                return await self.redis.evalsha(self._sha, len(p.keys), *p.keys, *args)

    async def _load_script(self) -> None:
        with self._timed("script_load"):
            sha = await self.redis.script_load(_SCRIPT)
        if isinstance(sha, bytes):
            sha = sha.decode()
        if sha != self._sha:
            raise RuntimeError(f"script sha mismatch: {sha} != {self._sha}")
        self._script_loaded = True

    # ------------------------------------------------------------------ read
    async def partitions(self, video_ids: Sequence[str]) -> dict[str, int | None]:
        """The Kafka partition each video's events were last applied from (header cell 4;
        None for a video without a window, or whose partition is unknown)."""
        if not video_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for v in video_ids:
            pipe.getrange(self.key(v), 16, 19)
        raw = await pipe.execute()
        out: dict[str, int | None] = {}
        for v, cell in zip(video_ids, raw, strict=True):
            p = int.from_bytes(cell, "big") if cell and len(cell) == 4 else None
            out[v] = None if p is None or p == 0xFFFFFFFF else p
        return out

    async def read(self, video_ids: Sequence[str]) -> dict[str, HourlySeries]:
        """Windows of the given videos: exactly W hours ending at each video's head hour.

        Videos without a window (never seen, or expired) are absent from the result.
        ``meta`` carries ``minute_head`` (minutes since the epoch) and ``minute_counts``
        (4 × MINUTE_SLOTS, oldest minute first, ending at ``minute_head``).
        """
        a = await self.read_arrays(video_ids)
        W = self.window_hours
        return {
            vid: HourlySeries(vid, int(a.head_hours[r]) - (W - 1), a.counts[r],
                              int(a.published_hours[r]) if a.published_hours[r] >= 0 else None,
                              {"minute_head": int(a.minute_heads[r]), "minute_counts": a.minute_counts[r]})
            for r, vid in enumerate(a.video_ids)
        }

    async def read_arrays(self, video_ids: Sequence[str]) -> WindowArrays:
        """The same windows as :meth:`read`, as arrays (one row per video found, in the order
        asked): what the scoring loop reads, without an object per video."""
        W = self.window_hours
        if not video_ids:
            return WindowArrays.empty(W)
        keys = [self.key(v) for v in video_ids]
        with self._timed("read"):
            if self._cluster:
                values = await self.redis.mget_nonatomic(keys)
            else:
                values = await self.redis.mget(keys)
        size = self.value_bytes
        ok = [
            j
            for j, v in enumerate(values)
            if v is not None and len(v) == size and int.from_bytes(v[:4], "big") == self.layout
        ]
        if not ok:
            return WindowArrays.empty(W)
        cells = np.frombuffer(b"".join(values[j] for j in ok), dtype=">u4").reshape(len(ok), -1)
        head = cells[:, 1].astype(np.int64)
        mhead = cells[:, 2].astype(np.int64)
        pub = cells[:, 3].astype(np.int64)
        ring = cells[:, HEADER_CELLS : HEADER_CELLS + 4 * W].reshape(len(ok), W, 4)
        start = head - (W - 1)
        slots = (start[:, None] + np.arange(W)[None, :]) % W
        rows = np.arange(len(ok))[:, None]
        hourly = ring[rows, slots].transpose(0, 2, 1).astype(np.uint32)  # (V, 4, W), native byte order
        mring = cells[:, HEADER_CELLS + 4 * W :].reshape(len(ok), MINUTE_SLOTS, 4)
        mslots = (mhead[:, None] - (MINUTE_SLOTS - 1) + np.arange(MINUTE_SLOTS)) % MINUTE_SLOTS
        mcounts = mring[rows, mslots].transpose(0, 2, 1).astype(np.int64)
        return WindowArrays([video_ids[j] for j in ok], head, hourly, np.where(pub > 0, pub, -1), mhead, mcounts)

    async def memory_usage(self, video_id: str) -> int:
        """``MEMORY USAGE`` of the video's key (0 if absent)."""
        with self._timed("memory_usage"):
            used = await self.redis.memory_usage(self.key(video_id), samples=0)
        return int(used or 0)


@dataclass
class WindowArrays:
    """Windows read from Redis, one row per video: ``counts[r]`` (4, W) are the W hours ending
    at ``head_hours[r]``; ``published_hours`` -1 when unknown; the minute ring (4, MINUTE_SLOTS)
    oldest minute first, ending at ``minute_heads[r]``."""

    video_ids: list[str]
    head_hours: np.ndarray  # (V,)
    counts: np.ndarray  # (V, 4, W) uint32 (as stored: a quarter of float64's bytes to copy and send)
    published_hours: np.ndarray  # (V,)
    minute_heads: np.ndarray  # (V,)
    minute_counts: np.ndarray  # (V, 4, MINUTE_SLOTS) int64

    @classmethod
    def empty(cls, window_hours: int) -> WindowArrays:
        z = np.zeros(0, dtype=np.int64)
        return cls([], z, np.zeros((0, len(METRICS), window_hours), dtype=np.uint32), z, z,
                   np.zeros((0, len(METRICS), MINUTE_SLOTS), dtype=np.int64))


@dataclass
class _Batch:
    video_ids: list[str]
    hours: np.ndarray
    minutes: np.ndarray
    counts: np.ndarray
    off: np.ndarray
    part: np.ndarray
    pub: list[tuple[int, float]]
    forced: bool  # no offsets: applied without the replay check
    fresh: np.ndarray  # per event: its offset belongs to a log that started again


@dataclass
class _Packed:
    videos: list[str]
    vidx: np.ndarray  # per event: index into videos
    keys: list[str]
    vblob: bytes
    hblob: bytes
    mblob: bytes
    no_dedup: int


def _chunks(g: VideoGroups) -> list[tuple[np.ndarray, VideoGroups]]:
    """A batch's events split into runs of at most ``VIDEOS_PER_CALL`` videos (all the events
    of a video in one), each with its own grouping."""
    n = len(g.index)
    if len(g.videos) <= VIDEOS_PER_CALL:
        return [(np.arange(n), g)]
    chunk = g.index // VIDEOS_PER_CALL
    out = []
    for c in range(int(chunk.max()) + 1):
        idx = np.flatnonzero(chunk == c)
        first = c * VIDEOS_PER_CALL
        out.append((idx, VideoGroups(g.videos[first : first + VIDEOS_PER_CALL], g.index[idx] - first)))
    return out


def _entries(vidx: np.ndarray, bucket: np.ndarray, counts: np.ndarray, nv: int):
    """Sum counts per (video, bucket); entries grouped by video, ascending bucket."""
    key = (vidx << 32) | bucket  # bucket < 2**32 (minutes since epoch until year 10135)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    sums = np.add.reduceat(counts[order], starts, axis=0)
    np.minimum(sums, U32_MAX, out=sums)
    ent = np.empty((starts.size, 1 + len(METRICS)), dtype=">u4")
    ent[:, 0] = sk[starts] & 0xFFFFFFFF
    ent[:, 1:] = sums
    per_video = np.bincount(sk[starts] >> 32, minlength=nv)
    return ent.tobytes(), per_video
