"""Throughput, latency, memory and inference benchmark of one worker process.

One run on the embedded stack (Tansu + redis-server on free loopback ports):

1. ceiling   raw aiokafka ``getmany`` + ``json.loads`` of the pre-produced events;
2. worker    a real ``python -m stream_detector.cli worker`` process against the same,
             already filled topic: events/s from first to last consumption (its
             ``/metrics``), CPU per 1k events (its /proc CPU time over the same interval);
3. latency   a paced stream at ``--load`` (default 50 %) of the measured worker rate for
             ``--latency-seconds``, with like spikes (thousands of likes in one minute) on
             reserved videos; event -> flag latency measured by the client (flag arrival on
             the flags topic minus the Kafka timestamp of the spike event it sent) and by the
             worker's ``detector_end_to_end_latency_seconds`` histogram (bucket delta);
4. memory    ``MEMORY USAGE`` of the window / score / flag keys of sampled videos;
5. inference ``Scorer.score`` on batches of simulated 168 h windows (after the stack stops).

Event time runs on a virtual clock: the pre-filled topic covers 168 h of event time (the
full window of every video), and the latency phase continues that clock at the same events
per virtual hour, so organic videos keep their hourly rates (no flag flood) while the
spiked videos are obviously anomalous. Timestamps stay in the past (the worker rejects
events more than an hour in the future).

    .venv/bin/python bench/throughput.py                       # defaults: 300k events, 5k videos
    .venv/bin/python bench/throughput.py --events 40000 --videos 1000 --latency-seconds 8 --json

Prints a Markdown table; with ``--json`` the last line is one JSON object. Every process it
starts is stopped on exit (also on errors and Ctrl-C); every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.partitioner import murmur2  # noqa: E402

from stream_detector.dev.embedded import EmbeddedStack, free_port  # noqa: E402
from stream_detector.metrics import scrape  # noqa: E402
from stream_detector.topics import ensure_topics  # noqa: E402

TARGETS = {
    "events_per_s": 50_000,
    "ratio_to_ceiling": 0.30,
    "p99_latency_s": 1.0,
    "inference_p99_ms": 10.0,
    "redis_bytes_per_video": 4096,
}
WINDOW_HOURS = 168
METRIC_NAMES = ("views", "likes", "comments", "shares")
METRIC_MIX = (0.75, 0.15, 0.06, 0.04)  # single-metric raw events: which metric
CATEGORIES = ("music", "gaming", "news", "education", "comedy", "sports", "howto", "vlog")
SOURCES = ("android", "ios", "web", "tv", "embed")
REGIONS = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "MX", "ES", "IT")
SPIKE_EVENTS = 4  # a spike = this many pre-aggregated like events in one event-time minute
PRODUCER_BATCH_BYTES = 256 * 1024
POLL_S = 0.2  # /metrics and CPU sampling period during the throughput phase


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- events
@dataclass
class Workload:
    """Pre-serialised events on one virtual event-time clock.

    Shape: the event contract plus the fields real producers add and the worker ignores
    (``event_id``, ``source``), ~150 bytes. Mostly single-metric raw events, a share of
    pre-aggregated ones (views with likes/comments), some ISO-8601 timestamps, some with
    ``published_at``; video popularity is log-normal.
    """

    n_videos: int
    partitions: int
    seed: int
    iso_fraction: float
    published_fraction: float
    aggregated_fraction: float
    video_ids: list[str] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    partition_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    published: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    region: list[str] = field(default_factory=list)

    def setup(self, t_origin: float) -> None:
        rng = np.random.default_rng([self.seed, 0])
        n = self.n_videos
        self.video_ids = [f"vid-{i:07d}" for i in range(n)]
        self.keys = [v.encode() for v in self.video_ids]
        self.partition_of = np.array(
            [(murmur2(k) & 0x7FFFFFFF) % self.partitions for k in self.keys], dtype=np.int64
        )
        # Popularity: log-normal (a few busy videos, a long tail of quiet ones).
        w = rng.lognormal(0.0, 1.0, n)
        self.weights = w / w.sum()
        pub = t_origin - rng.uniform(1, 30, n) * 86400
        self.published = [_iso(p) for p in pub]
        self.category = [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), n)]
        self.region = [REGIONS[i] for i in rng.integers(0, len(REGIONS), n)]

    def generate(
        self, n: int, t0: float, sec_per_event: float, exclude: np.ndarray, stream: int
    ) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """``n`` events; event i at virtual time t0 + i * sec_per_event (minus <= 5 min jitter).

        Returns (values, video index per event, virtual ts per event).
        """
        rng = np.random.default_rng([self.seed, stream])
        w = self.weights.copy()
        w[exclude] = 0.0
        w /= w.sum()
        vids = rng.choice(self.n_videos, size=n, p=w)
        ts = t0 + np.arange(n) * sec_per_event - rng.uniform(0, 300, n)
        ts = np.round(ts, 3)
        agg = rng.random(n) < self.aggregated_fraction
        metric = rng.choice(4, size=n, p=METRIC_MIX)
        # Pre-aggregated: a few seconds of one video's engagement (small counts; large
        # counts on a quiet video would be exactly the spike the detector looks for).
        views = 1 + rng.poisson(2.0, n)
        likes = rng.binomial(views, 0.12)
        comments = rng.binomial(views, 0.04)
        iso = rng.random(n) < self.iso_fraction
        with_pub = rng.random(n) < self.published_fraction
        meta = rng.random(n) < 0.7
        source = rng.integers(0, len(SOURCES), n)
        event_ids = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        values: list[bytes] = []
        dumps = json.dumps
        for i in range(n):
            v = int(vids[i])
            ev: dict = {"event_id": f"{int(event_ids[i]):016x}", "video_id": self.video_ids[v],
                        "ts": _iso(ts[i]) if iso[i] else float(ts[i]), "source": SOURCES[source[i]]}
            if agg[i]:
                ev["views"] = int(views[i])
                if likes[i]:
                    ev["likes"] = int(likes[i])
                if comments[i]:
                    ev["comments"] = int(comments[i])
            else:
                ev[METRIC_NAMES[metric[i]]] = 1
            if with_pub[i]:
                ev["published_at"] = self.published[v]
            if meta[i]:
                ev["category"] = self.category[v]
                ev["region"] = self.region[v]
            values.append(dumps(ev).encode())
        return values, vids, ts

    def spike(self, video: int, ts: float, likes: int) -> list[bytes]:
        """A like spike: ``likes`` likes in one event-time minute, as a few aggregated events."""
        each = max(1, likes // SPIKE_EVENTS)
        return [
            json.dumps({"video_id": self.video_ids[video], "ts": round(ts + j, 3), "likes": each}).encode()
            for j in range(SPIKE_EVENTS)
        ]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- kafka helpers
async def produce_prefill(bootstrap: str, topic: str, wl: Workload, values: list[bytes], vids: np.ndarray) -> float:
    """Send all events as fast as possible (batched per partition); returns events/s."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=PRODUCER_BATCH_BYTES,
        request_timeout_ms=60000,
    )
    await producer.start()
    t0 = time.monotonic()
    try:
        futures: list[asyncio.Future] = []
        chunk = 20_000
        for start in range(0, len(values), chunk):
            stop = min(start + chunk, len(values))
            futures.extend(await _send_grouped(producer, topic, wl, values, vids, start, stop, None))
            if len(futures) > 200:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(values) / max(time.monotonic() - t0, 1e-9)


async def _send_grouped(producer, topic, wl, values, vids, start, stop, ts_ms):
    """One batch per partition for values[start:stop] (order kept within each partition)."""
    by_part: dict[int, list[int]] = {}
    parts = wl.partition_of[vids[start:stop]]
    for off, p in enumerate(parts.tolist()):
        by_part.setdefault(p, []).append(start + off)
    futures = []
    stamp = ts_ms if ts_ms is not None else int(time.time() * 1000)
    for p, idx in by_part.items():
        batch = producer.create_batch()
        for i in idx:
            if batch.append(key=wl.keys[vids[i]], value=values[i], timestamp=stamp) is None:
                futures.append(await producer.send_batch(batch, topic, partition=p))
                batch = producer.create_batch()
                batch.append(key=wl.keys[vids[i]], value=values[i], timestamp=stamp)
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=p))
    return futures


def _consumer_kwargs() -> dict:
    # The worker's fetch settings (stream_detector/worker/detector.py), for a like-for-like ceiling.
    return {"max_partition_fetch_bytes": 4 * 1024 * 1024, "fetch_max_bytes": 16 * 1024 * 1024}


class RateMeter:
    """Events per second of a consume loop, between its first and its last non-empty fetch
    (the first fetch's own events are left out: when they started arriving is unknown)."""

    def __init__(self) -> None:
        self.n = self.first_n = 0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def add(self, got: int) -> None:
        if got:
            self.n += got
            self.t_last = time.monotonic()
            if self.t_first is None:
                self.t_first, self.first_n = self.t_last, got

    @property
    def seconds(self) -> float:
        return (self.t_last - self.t_first) if self.t_first is not None else 0.0

    @property
    def events_per_s(self) -> float:
        return (self.n - self.first_n) / max(self.seconds, 1e-9)


async def measure_ceiling(bootstrap: str, topic: str, partitions: int, expect: int, timeout_s: float) -> dict:
    """Raw aiokafka getmany + json.loads of the whole topic from offset 0 (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", **_consumer_kwargs())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loads = json.loads
        meter = RateMeter()
        deadline = time.monotonic() + timeout_s
        while meter.n < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            got = 0
            for recs in batches.values():
                for r in recs:
                    loads(r.value)
                got += len(recs)
            meter.add(got)
        if meter.n < expect:
            raise RuntimeError(f"ceiling consumer read {meter.n}/{expect} events in {timeout_s:.0f}s")
        return {"events_per_s": meter.events_per_s, "seconds": meter.seconds}
    finally:
        await consumer.stop()


class GroupOffsets:
    """Committed offsets of the worker's group vs end offsets (a group-aware, non-member consumer)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    async def __aenter__(self) -> GroupOffsets:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def behind(self) -> int:
        ends = await self.consumer.end_offsets(self.tps)
        lag = 0
        for tp in self.tps:
            done = await self.consumer.committed(tp)
            lag += max(0, ends[tp] - (done or 0))
        return lag


async def wait_committed(bootstrap: str, group: str, topic: str, partitions: int, timeout_s: float, alive) -> float:
    """Seconds until the group has committed every record of the topic."""
    t0 = time.monotonic()
    async with GroupOffsets(bootstrap, group, topic, partitions) as offsets:
        while time.monotonic() - t0 < timeout_s:
            alive()
            if await offsets.behind() == 0:
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
    raise RuntimeError(f"worker did not commit the whole topic within {timeout_s:.0f}s")


# --------------------------------------------------------------------------- worker process
class Worker:
    """``python -m stream_detector.cli worker`` as a child process (stopped in ``stop``)."""

    def __init__(self, bootstrap: str, redis_url: str, names: dict[str, str], partitions: int,
                 log_dir: Path, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = log_dir / "worker.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            REDIS_URL=redis_url,
            DETECTOR_EVENTS_TOPIC=names["events"],
            DETECTOR_FLAGS_TOPIC=names["flags"],
            DETECTOR_DLQ_TOPIC=names["dlq"],
            DETECTOR_CONSUMER_GROUP=names["group"],
            DETECTOR_KEY_PREFIX=names["prefix"],
            DETECTOR_WEB_PORT=str(self.port),
            DETECTOR_TOPIC_PARTITIONS=str(partitions),
        )
        env.update(extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "worker"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(ROOT), start_new_session=True,
        )
        self.spawned = time.monotonic()

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """'name{labels}' -> value, plus 'name' -> sum over its label sets."""
        return scrape(self.port)

    def try_metrics(self) -> dict[str, float] | None:
        try:
            return self.metrics()
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def stop(self, timeout_s: float = 40.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(Exception):
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (psutil if installed, else /proc)."""
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except ImportError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_all(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except Exception:  # noqa: BLE001 - a process that is gone reports no CPU
            out[name] = math.nan
    return out


class PySpy:
    """Optional ``py-spy record`` of the worker (raw collapsed stacks), stopped with SIGINT."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists() and not shutil.which(exe):
            raise RuntimeError("py-spy not found (pip install py-spy into the venv)")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", str(out), "--nonblocking", "--full-filenames"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def summarize_profile(path: Path, top: int = 14) -> list[str]:
    """Top self-time and inclusive-time frames of a py-spy raw (collapsed) profile."""
    if not path.exists():
        return ["(no profile written)"]
    self_t: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return ["(empty profile)"]
    lines = [f"py-spy: {total} samples of the worker during the throughput phase", "", "self time:"]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in self_t.most_common(top)]
    lines += ["", "inclusive time (stream_detector, json, redis, aiokafka, numpy, onnxruntime):"]
    keep = ("stream_detector/", "json/", "redis/", "aiokafka/", "numpy/", "onnxruntime/", "prometheus_client/")
    skip = ("stream_detector/cli.py", "stream_detector/app.py")
    shown = [(f, c) for f, c in incl.most_common() if any(k in f for k in keep) and not any(k in f for k in skip)]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in shown[: top + 12]]
    return lines


def _short_frame(frame: str) -> str:
    # "func (path/to/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    path = loc.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


# --------------------------------------------------------------------------- histogram maths
def histogram(metrics: dict[str, float], name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for key, value in metrics.items():
        if key.startswith(prefix):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if le == "+Inf" else float(le)] = value
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus-style quantile (linear within a bucket) of the observations between two scrapes."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    if not cum or cum[-1] <= 0:
        return None
    rank = q * cum[-1]
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if math.isinf(b):
                return prev_b  # above the highest finite bucket: report its bound (a floor)
            if c == prev_c:
                return b
            return prev_b + (b - prev_b) * (rank - prev_c) / (c - prev_c)
        prev_b, prev_c = b, c
    return bounds[-2] if len(bounds) > 1 else None


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --------------------------------------------------------------------------- phases
def run_worker_phase(worker: Worker, pids: dict[str, int], expect: int, timeout_s: float,
                     profile: Path | None, profile_rate: int) -> dict:
    """Sample /metrics and CPU until the worker consumed ``expect`` events."""
    deadline = time.monotonic() + timeout_s
    start = None  # (t, consumed, cpu)
    end = None
    spy = None
    ready_s = None
    try:
        while time.monotonic() < deadline:
            worker.alive()
            m = worker.try_metrics()
            t = time.monotonic()
            cpu = cpu_all(pids)
            if m is not None:
                consumed = m.get("detector_consume_batch_size_sum", 0.0)
                if start is None and consumed > 0:
                    start = (t, consumed, cpu)
                    ready_s = t - worker.spawned
                    if profile is not None:
                        spy = PySpy(pids["worker"], profile, profile_rate)
                if start is not None and consumed >= expect:
                    end = (t, consumed, cpu, m)
                    break
            time.sleep(POLL_S)
    finally:
        if spy is not None:
            spy.stop()
    if start is None or end is None:
        raise RuntimeError(f"worker did not consume {expect} events in {timeout_s:.0f}s:\n{worker.log_tail()}")
    dt = end[0] - start[0]
    events = end[1] - start[1]
    cpu = {k: end[2][k] - start[2][k] for k in pids}
    m = end[3]
    return {
        "events_per_s": events / max(dt, 1e-9),
        "seconds": dt,
        "events_measured": events,
        "first_consume_after_spawn_s": ready_s,
        "cpu_ms_per_1k_events": 1e6 * cpu["worker"] / max(events, 1),
        "cpu_cores": {k: v / max(dt, 1e-9) for k, v in cpu.items()},
        "invalid_events": m.get("detector_events_invalid_total", 0.0),
        "late_events": m.get("detector_events_late_total", 0.0),
        "videos_scored": m.get("detector_videos_scored_total", 0.0),
        "flags": m.get("detector_flags_total", 0.0),
        "mean_fetch": m.get("detector_consume_batch_size_sum", 0.0) / max(m.get("detector_consume_batch_size_count", 1.0), 1.0),
    }


async def run_latency_phase(
    bootstrap: str, names: dict[str, str], wl: Workload, worker: Worker, pids: dict[str, int], *, rate: float,
    seconds: float, spikes_per_s: float, spike_likes: int, spike_videos: np.ndarray,
    t_virtual0: float, sec_per_event: float, flag_wait_s: float,
) -> dict:
    n_bg = int(rate * seconds) + 1
    log(f"latency: generating {n_bg:,} background events ({rate:,.0f}/s for {seconds:.0f}s)")
    values, vids, ts = wl.generate(n_bg, t_virtual0, sec_per_event, exclude=spike_videos, stream=2)
    n_spikes = min(len(spike_videos), int(spikes_per_s * seconds))

    flags_consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      fetch_max_wait_ms=10, auto_offset_reset="latest")
    await flags_consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1,
                                max_batch_size=PRODUCER_BATCH_BYTES, request_timeout_ms=30000)
    await producer.start()
    spike_sent: dict[str, tuple[int, int]] = {}  # video_id -> (first, last) Kafka timestamp ms
    flags: list[tuple[str, float, int, dict]] = []  # video, arrival (s), flag record ts (ms), doc
    stop_reading = asyncio.Event()

    async def read_flags() -> None:
        while not stop_reading.is_set():
            batches = await flags_consumer.getmany(timeout_ms=50)
            arrival = time.time()
            for recs in batches.values():
                for r in recs:
                    flags.append((r.key.decode() if r.key else "", arrival, r.timestamp, json.loads(r.value)))

    try:
        tps = [TopicPartition(names["flags"], p) for p in range(wl.partitions)]
        flags_consumer.assign(tps)
        await flags_consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now, not lazily after the first flags
            await flags_consumer.position(tp)
        before = worker.metrics()
        cpu0 = cpu_all(pids)
        reader = asyncio.create_task(read_flags())
        futures: list[asyncio.Future] = []
        sent = spikes = 0
        t0 = time.monotonic()
        end_at = t0 + seconds
        while True:
            now = time.monotonic()
            if now >= end_at and sent >= n_bg and spikes >= n_spikes:
                break
            if now > end_at + 30:  # bounded even if the producer cannot keep up
                break
            target = min(n_bg, int(rate * (now - t0)))
            if target > sent:
                futures.extend(await _send_grouped(producer, names["events"], wl, values, vids, sent, target,
                                                   int(time.time() * 1000)))
                sent = target
            due = min(n_spikes, int(spikes_per_s * (now - t0)) + 1)
            while spikes < due:
                v = int(spike_videos[spikes])
                vts = float(ts[min(sent, n_bg - 1)])
                stamps = []
                for value in wl.spike(v, vts, spike_likes):
                    stamp = int(time.time() * 1000)
                    futures.append(await producer.send(names["events"], value=value, key=wl.keys[v], timestamp_ms=stamp))
                    stamps.append(stamp)
                spike_sent[wl.video_ids[v]] = (stamps[0], stamps[-1])
                spikes += 1
            if len(futures) > 500:
                await asyncio.gather(*futures)
                futures.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
        produced_s = time.monotonic() - t0
        produced_rate = (sent + spikes * SPIKE_EVENTS) / produced_s
        log(f"latency: produced {sent:,} + {spikes * SPIKE_EVENTS} spike events in {produced_s:.1f}s")
        cpu1 = cpu_all(pids)
        # Catch-up: the worker commits only after scoring and flag acks, so a fully committed
        # topic means every flag has been published. Then wait (bounded) for their arrival.
        drain_s = await wait_committed(bootstrap, names["group"], names["events"], wl.partitions, 120, worker.alive)
        wait_until = time.monotonic() + flag_wait_s
        while time.monotonic() < wait_until:
            worker.alive()
            got = {f[0] for f in flags}
            if all(v in got for v in spike_sent):
                break
            await asyncio.sleep(0.1)
        after = worker.metrics()
        stop_reading.set()
        await asyncio.wait_for(reader, 5)
    finally:
        stop_reading.set()
        await producer.stop()
        await flags_consumer.stop()

    e2e, publish, immediate = [], [], []
    first_flag: dict[str, tuple[float, int, dict]] = {}
    for video, arrival, rec_ts, doc in flags:
        if video in spike_sent and video not in first_flag:
            first_flag[video] = (arrival, rec_ts, doc)
    for video, (arrival, rec_ts, doc) in first_flag.items():
        _first_ms, last_ms = spike_sent[video]
        e2e.append(arrival - last_ms / 1000.0)
        publish.append(rec_ts / 1000.0 - last_ms / 1000.0)
        # the immediate path explains a burst by its minute; the hourly path (a video without
        # the closed history a burst is judged against) by its hour, once the hour has closed
        if " in one minute" in doc.get("explanation", ""):
            immediate.append(e2e[-1])
    span = max((b - a for a, b in spike_sent.values()), default=0)
    hb = histogram(before, "detector_end_to_end_latency_seconds")
    ha = histogram(after, "detector_end_to_end_latency_seconds")
    organic = sum(1 for f in flags if f[0] not in spike_sent)
    return {
        "target_rate": rate,
        "produced_rate": produced_rate,
        "seconds": seconds,
        "spikes_sent": len(spike_sent),
        "spikes_flagged": len(first_flag),
        "spike_send_span_ms": span,
        "organic_flags": organic,
        "flags_total": len(flags),
        "client_p50_s": pct(e2e, 50),
        "client_p99_s": pct(e2e, 99),
        "client_max_s": max(e2e) if e2e else None,
        "spikes_flagged_immediately": len(immediate),
        "immediate_p50_s": pct(immediate, 50),
        "immediate_p99_s": pct(immediate, 99),
        "publish_p50_s": pct(publish, 50),
        "publish_p99_s": pct(publish, 99),
        "worker_hist_p50_s": histogram_quantile(0.5, hb, ha),
        "worker_hist_p99_s": histogram_quantile(0.99, hb, ha),
        "worker_hist_count": (ha.get(math.inf, 0.0) - hb.get(math.inf, 0.0)),
        "cpu_cores": {k: (cpu1[k] - cpu0[k]) / max(produced_s, 1e-9) for k in pids},
        "drain_after_s": drain_s,
        "worker_consumed": after.get("detector_consume_batch_size_sum", 0.0) - before.get("detector_consume_batch_size_sum", 0.0),
    }


def measure_redis(redis_url: str, prefix: str, wl: Workload, sample: int, seed: int, exclude: np.ndarray) -> dict:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        rng = np.random.default_rng([seed, 9])
        pool = np.setdiff1d(np.arange(wl.n_videos), exclude)
        # Busy videos first: the ones most certain to have events in all 168 hours.
        busy = pool[np.argsort(-wl.weights[pool])][: max(sample * 4, sample)]
        chosen = rng.choice(busy, size=min(sample, busy.size), replace=False)
        out: dict[str, list[int]] = {"w": [], "s": [], "f": []}
        strlen: list[int] = []
        for v in chosen.tolist():
            vid = wl.video_ids[v]
            for kind in ("w", "s"):
                used = client.memory_usage(f"{prefix}:{kind}:{{{vid}}}", samples=0)
                if used:
                    out[kind].append(int(used))
            strlen.append(int(client.strlen(f"{prefix}:w:{{{vid}}}")))
        # Flag keys exist only for flagged videos (the spiked ones, a few organic): scan them.
        cursor, seen = 0, 0
        for _ in range(1000):  # bounded
            cursor, keys = client.scan(cursor, match=f"{prefix}:f:*", count=500)
            for k in keys:
                if seen < sample:
                    used = client.memory_usage(k, samples=0)
                    if used:
                        out["f"].append(int(used))
                    seen += 1
            if cursor == 0 or seen >= sample:
                break
        info = client.info("memory")
        keys = client.dbsize()
        return {
            "sampled": int(chosen.size),
            "window_bytes": float(np.mean(out["w"])) if out["w"] else None,
            "window_value_bytes": float(np.mean(strlen)) if strlen else None,
            "window_keys_found": len(out["w"]),
            "score_bytes": float(np.mean(out["s"])) if out["s"] else None,
            "score_keys_found": len(out["s"]),
            "flag_bytes": float(np.mean(out["f"])) if out["f"] else None,
            "flag_keys_found": len(out["f"]),
            "used_memory": int(info.get("used_memory", 0)),
            "keys": int(keys),
        }
    finally:
        client.close()


def measure_inference(batch: int, reps: int, seed: int) -> dict:
    from stream_detector.config import DEFAULT_MODEL_PATH
    from stream_detector.dev.simulate import simulate
    from stream_detector.models import ModelArtifact
    from stream_detector.scoring import Scorer

    scorer = Scorer(ModelArtifact.load(str(DEFAULT_MODEL_PATH)))
    data = simulate(batch, seed=seed, hours=WINDOW_HOURS)
    series = list(data.iter_series())
    for _ in range(5):
        scorer.score(series)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        scorer.score(series)
        times.append(time.perf_counter() - t)
    ms = [1000 * t for t in times]
    return {"batch": batch, "reps": reps, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": max(ms),
            "per_video_us": 1000 * float(np.median(ms)) / batch}


# --------------------------------------------------------------------------- report
def fmt(v, unit: str = "", digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def render(r: dict) -> str:
    c, w, lat, mem, inf = r["ceiling"], r["worker"], r.get("latency") or {}, r.get("redis") or {}, r.get("inference") or {}
    ratio = w["events_per_s"] / c["events_per_s"] if c["events_per_s"] else None
    p99 = lat.get("client_p99_s")
    cores = w["cpu_cores"]
    rows = [
        ("raw aiokafka ceiling (`getmany` + `json.loads`)", fmt(c["events_per_s"], " ev/s"), "", ""),
        ("worker, sustained (first → last consumption)", fmt(w["events_per_s"], " ev/s"), "≥ 50,000 ev/s",
         verdict(w["events_per_s"] >= TARGETS["events_per_s"])),
        ("worker, first consumption → everything committed", fmt(w.get("events_per_s_to_commit"), " ev/s"), "", ""),
        ("worker / ceiling", fmt(100 * ratio if ratio else None, " %", 1), "≥ 30 %",
         verdict(ratio >= TARGETS["ratio_to_ceiling"] if ratio else None)),
        ("worker CPU per 1k events", fmt(w["cpu_ms_per_1k_events"], " ms", 1), "", ""),
        ("CPU while consuming: worker / Tansu / redis / bench", " / ".join(fmt(cores.get(k), "", 2) for k in ("worker", "tansu", "redis", "bench")) + " cores", "", ""),
        ("worker: first consumption after spawn", fmt(w["first_consume_after_spawn_s"], " s", 1), "", ""),
        ("worker: all committed after the last consumption", fmt(w.get("commit_after_s"), " s", 1), "", ""),
        ("worker: mean records per fetch", fmt(w["mean_fetch"]), "", ""),
        ("flags during the throughput run (organic)", fmt(w["flags"]), "", ""),
    ]
    if lat:
        rows += [
            ("latency load (target / produced)", f"{fmt(lat['target_rate'])} / {fmt(lat['produced_rate'])} ev/s for {fmt(lat['seconds'])} s", "50 % of worker rate", ""),
            ("**event → flag p50 / p99 (client)**", f"{fmt(lat['client_p50_s'], ' s', 3)} / {fmt(p99, ' s', 3)}", "p99 ≤ 1 s",
             verdict(p99 <= TARGETS["p99_latency_s"] if p99 is not None else None)),
            ("event → flag publish p50 / p99 (flag record ts)", f"{fmt(lat['publish_p50_s'], ' s', 3)} / {fmt(lat['publish_p99_s'], ' s', 3)}", "", ""),
            ("worker histogram p50 / p99 (`detector_end_to_end_latency_seconds`)",
             f"{fmt(lat['worker_hist_p50_s'], ' s', 3)} / {fmt(lat['worker_hist_p99_s'], ' s', 3)} (n={fmt(lat['worker_hist_count'])})", "", ""),
            ("spikes flagged / sent (organic flags)", f"{lat['spikes_flagged']} / {lat['spikes_sent']} ({lat['organic_flags']})", "all", verdict(lat["spikes_flagged"] == lat["spikes_sent"])),
            ("CPU at that load: worker / Tansu / redis / bench", " / ".join(fmt(lat["cpu_cores"].get(k), "", 2) for k in ("worker", "tansu", "redis", "bench")) + " cores", "", ""),
            ("all committed after the load stopped", fmt(lat["drain_after_s"], " s", 1), "", ""),
        ]
    if mem:
        wb = mem.get("window_bytes")
        rows += [
            ("Redis bytes per video: window key (`MEMORY USAGE`)", fmt(wb, " B"), "≤ 4,096 B", verdict(wb <= TARGETS["redis_bytes_per_video"] if wb else None)),
            ("Redis bytes per video: score key / flag key", f"{fmt(mem.get('score_bytes'), ' B')} / {fmt(mem.get('flag_bytes'), ' B')} (flag keys: {mem['flag_keys_found']} sampled)", "", ""),
        ]
    if inf:
        rows += [
            (f"inference p50 / p99, batch of {inf['batch']} ({inf['reps']} calls)", f"{fmt(inf['p50_ms'], ' ms', 2)} / {fmt(inf['p99_ms'], ' ms', 2)}", "p99 ≤ 10 ms",
             verdict(inf["p99_ms"] <= TARGETS["inference_p99_ms"])),
        ]
    out = [
        f"Workload: {r['events']:,} events (avg {r['avg_event_bytes']:.0f} B, {r['aggregated_pct']:.0f} % pre-aggregated) over "
        f"{r['videos']:,} videos, {r['partitions']} partitions; load average at start {r['loadavg']}.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    out += [f"| {a} | {b} | {t} | {ok} |" for a, b, t, ok in rows]
    out += ["", "Latency reported: client side (flag arrival on the flags topic minus the Kafka timestamp of the "
            "last event of the spike that triggered it). The worker histogram covers every flag it published "
            "(spikes and any organic flags), from the newest event's Kafka timestamp to the broker's ack."]
    return "\n".join(out)


def summary_json(r: dict) -> dict:
    c, w, lat, mem, inf = r["ceiling"], r["worker"], r.get("latency") or {}, r.get("redis") or {}, r.get("inference") or {}
    return {
        "events_per_s": round(w["events_per_s"], 1),
        "ceiling_events_per_s": round(c["events_per_s"], 1),
        "ratio_to_ceiling": round(w["events_per_s"] / c["events_per_s"], 4) if c["events_per_s"] else None,
        "events_per_s_to_commit": round(w["events_per_s_to_commit"], 1),
        "commit_after_last_consume_s": round(w["commit_after_s"], 3),
        "p50_latency_s": lat.get("client_p50_s"),
        "p99_latency_s": lat.get("client_p99_s"),
        "latency_source": "client: flag arrival - Kafka timestamp of the triggering spike event",
        "publish_p50_latency_s": lat.get("publish_p50_s"),
        "publish_p99_latency_s": lat.get("publish_p99_s"),
        "worker_hist_p50_latency_s": lat.get("worker_hist_p50_s"),
        "worker_hist_p99_latency_s": lat.get("worker_hist_p99_s"),
        "latency_load_events_per_s": lat.get("produced_rate"),
        "spikes_sent": lat.get("spikes_sent"),
        "spikes_flagged": lat.get("spikes_flagged"),
        "redis_bytes_per_video": mem.get("window_bytes"),
        "redis_score_key_bytes": mem.get("score_bytes"),
        "redis_flag_key_bytes": mem.get("flag_bytes"),
        "cpu_ms_per_1k_events": round(w["cpu_ms_per_1k_events"], 3),
        "worker_cpu_cores": round(w["cpu_cores"]["worker"], 3),
        "tansu_cpu_cores": round(w["cpu_cores"].get("tansu", math.nan), 3),
        "redis_cpu_cores": round(w["cpu_cores"].get("redis", math.nan), 3),
        "inference_p50_ms": inf.get("p50_ms"),
        "inference_p99_ms": inf.get("p99_ms"),
        "inference_batch": inf.get("batch"),
        "events": r["events"],
        "videos": r["videos"],
        "partitions": r["partitions"],
        "avg_event_bytes": round(r["avg_event_bytes"], 1),
        "targets": TARGETS,
    }


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=300_000, help="events pre-filled for the ceiling and worker runs")
    p.add_argument("--videos", type=int, default=5_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--latency-seconds", type=float, default=20.0, help="duration of the paced latency run (0: skip)")
    p.add_argument("--load", type=float, default=0.5, help="latency run rate as a fraction of the measured worker rate")
    p.add_argument("--max-latency-rate", type=float, default=100_000.0, help="cap on the latency run rate (events/s)")
    p.add_argument("--spikes-per-s", type=float, default=5.0, help="like spikes per second in the latency run")
    p.add_argument("--spike-likes", type=int, default=4000, help="likes in one spike (one event-time minute)")
    p.add_argument("--flag-wait", type=float, default=20.0, help="seconds to wait for outstanding spike flags")
    p.add_argument("--inference-batch", type=int, default=256)
    p.add_argument("--inference-reps", type=int, default=50)
    p.add_argument("--memory-sample", type=int, default=200, help="videos sampled for MEMORY USAGE")
    p.add_argument("--iso-fraction", type=float, default=0.1, help="share of events with an ISO-8601 ts")
    p.add_argument("--aggregated-fraction", type=float, default=0.15, help="share of pre-aggregated events")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=0.0, help="max seconds for the worker run (0: from --events)")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the worker (repeatable), e.g. DETECTOR_SCORE_INTERVAL_SECONDS=0.5")
    p.add_argument("--py-spy", metavar="FILE", help="record the worker with py-spy during the throughput run "
                   "(raw collapsed stacks to FILE; a summary goes to stderr)")
    p.add_argument("--py-spy-rate", type=int, default=100)
    p.add_argument("--log-dir", help="keep the broker, redis and worker logs here (default: a temp dir, removed)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = p.parse_args(argv)
    if a.events < 1000 or a.videos < 10 or a.partitions < 1:
        p.error("need --events >= 1000, --videos >= 10, --partitions >= 1")
    if not 0 < a.load <= 1.5:
        p.error("--load must be in (0, 1.5]")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    extra_env = {}
    for item in a.worker_env:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--worker-env expects NAME=VALUE, got {item!r}")
        extra_env[k] = v
    tmp = None
    if a.log_dir:
        log_dir = Path(a.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="sd-bench-")
        log_dir = Path(tmp)
    run = f"bench{uuid.uuid4().hex[:8]}"
    names = {"events": f"{run}-events", "flags": f"{run}-flags", "dlq": f"{run}-dlq",
             "group": f"{run}-group", "prefix": run}

    # Virtual event time: the pre-fill covers the full window; the latency run continues at
    # the same events per virtual hour (capped rate), and everything ends an hour before now.
    now = time.time()
    sec_per_event = WINDOW_HOURS * 3600 / a.events
    reserve = (a.max_latency_rate * max(a.latency_seconds, 0) + 1) * sec_per_event if a.latency_seconds > 0 else 0
    t_origin = now - 3600 - reserve - WINDOW_HOURS * 3600
    wl = Workload(a.videos, a.partitions, a.seed, a.iso_fraction, 0.25, a.aggregated_fraction)
    wl.setup(t_origin)
    n_spike_videos = min(a.videos // 4, int(math.ceil(a.spikes_per_s * a.latency_seconds))) if a.latency_seconds > 0 else 0
    spike_videos = np.random.default_rng([a.seed, 5]).choice(a.videos, size=n_spike_videos, replace=False)
    log(f"generating {a.events:,} events over {a.videos:,} videos")
    values, vids, _ = wl.generate(a.events, t_origin, sec_per_event, exclude=np.zeros(0, dtype=np.int64), stream=1)
    avg_bytes = sum(map(len, values)) / len(values)
    result: dict = {"events": a.events, "videos": a.videos, "partitions": a.partitions, "avg_event_bytes": avg_bytes,
                    "aggregated_pct": 100 * a.aggregated_fraction, "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}

    stack = EmbeddedStack(log_dir=str(log_dir))
    worker: Worker | None = None
    try:
        stack.start()
        children = {c.name: c.proc.pid for c in getattr(stack, "_children", [])}
        pids = {"tansu": children.get("kafka", 0), "redis": children.get("redis", 0), "bench": os.getpid()}
        pids = {k: v for k, v in pids.items() if v}
        log(f"embedded stack: kafka {stack.bootstrap_servers}, redis {stack.redis_url}")
        asyncio.run(ensure_topics(stack.bootstrap_servers, {names["events"]: a.partitions, names["flags"]: a.partitions,
                                                             names["dlq"]: a.partitions}))
        rate = asyncio.run(produce_prefill(stack.bootstrap_servers, names["events"], wl, values, vids))
        log(f"pre-filled {a.events:,} events at {rate:,.0f}/s")
        result["produce_events_per_s"] = rate
        del values

        result["ceiling"] = asyncio.run(measure_ceiling(stack.bootstrap_servers, names["events"], a.partitions, a.events,
                                                        timeout_s=max(60.0, a.events / 2000)))
        log(f"ceiling: {result['ceiling']['events_per_s']:,.0f} events/s")

        worker = Worker(stack.bootstrap_servers, stack.redis_url, names, a.partitions, log_dir, extra_env)
        pids["worker"] = worker.proc.pid
        timeout = a.timeout or max(120.0, a.events / 1000)
        result["worker"] = run_worker_phase(worker, pids, a.events, timeout, Path(a.py_spy) if a.py_spy else None,
                                            a.py_spy_rate)
        log(f"worker: {result['worker']['events_per_s']:,.0f} events/s over {result['worker']['seconds']:.1f}s")
        result["worker"]["commit_after_s"] = asyncio.run(
            wait_committed(stack.bootstrap_servers, names["group"], names["events"], a.partitions, 120, worker.alive))
        result["worker"]["flags"] = worker.metrics().get("detector_flags_total", 0.0)
        w = result["worker"]
        w["events_per_s_to_commit"] = w["events_measured"] / (w["seconds"] + w["commit_after_s"])

        if a.latency_seconds > 0:
            lat_rate = min(a.max_latency_rate, a.load * result["worker"]["events_per_s"])
            t_virtual0 = t_origin + a.events * sec_per_event
            result["latency"] = asyncio.run(run_latency_phase(
                stack.bootstrap_servers, names, wl, worker, pids, rate=lat_rate, seconds=a.latency_seconds,
                spikes_per_s=a.spikes_per_s, spike_likes=a.spike_likes, spike_videos=spike_videos,
                t_virtual0=t_virtual0, sec_per_event=sec_per_event, flag_wait_s=a.flag_wait))
            log(f"latency: client p99 {result['latency']['client_p99_s']}")
        result["redis"] = measure_redis(stack.redis_url, names["prefix"], wl, a.memory_sample, a.seed, spike_videos)
        log(f"redis: window key {result['redis']['window_bytes']} B per video")
    finally:
        if worker is not None:
            code = worker.stop()
            log(f"worker stopped (exit {code})")
        stack.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    log(f"inference: {a.inference_reps} calls of {a.inference_batch} videos")
    result["inference"] = measure_inference(a.inference_batch, a.inference_reps, a.seed)

    print(render(result))
    if a.py_spy:
        print()
        print("\n".join(summarize_profile(Path(a.py_spy))))
    if a.json:
        print(json.dumps(summary_json(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
