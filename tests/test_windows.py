from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

import numpy as np
import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.crc import key_slot
from redis.exceptions import ResponseError

from stream_detector.events import Event, parse_event
from stream_detector.metrics import Metrics
from stream_detector.topics import ensure_topics
from stream_detector.windows import MINUTE_SLOTS, WindowStore

W = 168
TTL = 7 * 24 * 3600
H0 = 490_000  # an hour in 2025, hours since the epoch
T0 = H0 * 3600.0


def ev(video: str, ts: float, views=0, likes=0, comments=0, shares=0, pub=None) -> Event:
    return Event(video, float(ts), (views, likes, comments, shares), pub, None, None)


def store(client: aredis.Redis, **kw) -> WindowStore:
    kw.setdefault("ttl_seconds", TTL)
    return WindowStore(client, window_hours=kw.pop("window_hours", W), **kw)


def reference(events: list[Event], window: int = W) -> dict[str, tuple[int, np.ndarray]]:
    """Final head hour and (4, W) counts per video: every event within W hours of the head."""
    heads: dict[str, int] = {}
    for e in events:
        h = int(e.ts // 3600)
        heads[e.video_id] = max(heads.get(e.video_id, h), h)
    out = {v: (h, np.zeros((4, window))) for v, h in heads.items()}
    for e in events:
        head, arr = out[e.video_id]
        t = int(e.ts // 3600) - (head - window + 1)
        if t >= 0:
            arr[:, t] += e.counts
    return out


def random_events(rng: random.Random, n: int, videos: int, hours: int) -> list[Event]:
    out = []
    for _ in range(n):
        c = [0, 0, 0, 0]
        c[rng.randrange(4)] = rng.choice((1, 1, 1, 2, 7, 40))
        ts = T0 + rng.uniform(0, hours * 3600)
        out.append(ev(f"video-{rng.randrange(videos)}", ts, *c))
    return out


async def assert_matches(ws: WindowStore, events: list[Event]) -> None:
    ref = reference(events, ws.window_hours)
    got = await ws.read(list(ref))
    assert set(got) == set(ref)
    for vid, (head, counts) in ref.items():
        s = got[vid]
        assert s.hours == ws.window_hours and s.end_hour == head, vid
        np.testing.assert_array_equal(s.counts, counts, err_msg=vid)


@pytest.mark.asyncio
async def test_counts_exact_vs_numpy_reference(redis_client: aredis.Redis) -> None:
    rng = random.Random(7)
    events = random_events(rng, 4000, videos=25, hours=300)  # > W: ring advances, late events
    ws = store(redis_client)
    heads: dict[str, int] = {}
    expected_late: list[int] = []
    got_late: list[int] = []
    for start in range(0, len(events), 500):
        batch = events[start : start + 500]
        for e in batch:  # the head after this batch, per video
            heads[e.video_id] = max(heads.get(e.video_id, 0), int(e.ts // 3600))
        expected_late += [
            start + i
            for i, e in enumerate(batch)
            if int(e.ts // 3600) < heads[e.video_id] - (W - 1)
        ]
        result = await ws.apply(batch, list(range(start, start + len(batch))))
        got_late += [start + i for i in result.late]
        assert result.replayed == 0
    assert expected_late and got_late == expected_late
    await assert_matches(ws, events)

    # the minute ring holds the last MINUTE_SLOTS minutes ending at the newest minute
    got = await ws.read(["video-3"])
    mine = [e for e in events if e.video_id == "video-3"]
    mhead = max(int(e.ts // 60) for e in mine)
    ring = np.zeros((4, MINUTE_SLOTS), dtype=np.int64)
    for e in mine:
        t = int(e.ts // 60) - (mhead - MINUTE_SLOTS + 1)
        if t >= 0:
            ring[:, t] += e.counts
    assert got["video-3"].meta["minute_head"] == mhead
    np.testing.assert_array_equal(got["video-3"].meta["minute_counts"], ring)


@pytest.mark.asyncio
async def test_ring_advance_zeroes_old_hours_and_reports_late(redis_client: aredis.Redis) -> None:
    ws = store(redis_client)
    await ws.apply([ev("v", T0 + 60, likes=5), ev("v", T0 + 10 * 3600, views=3)], [0, 1])
    s = (await ws.read(["v"]))["v"]
    assert s.end_hour == H0 + 10 and s.counts[1, -11] == 5 and s.counts[0, -1] == 3

    # head moves to H0 + W: hour H0 leaves the window, H0 + 10 stays
    r = await ws.apply([ev("v", T0 + W * 3600, comments=1)], [2])
    assert r.changed == {"v"} and r.late == []
    s = (await ws.read(["v"]))["v"]
    assert s.start_hour == H0 + 1 and s.end_hour == H0 + W
    assert s.counts.sum() == 4 and s.counts[0, 9] == 3 and s.counts[2, -1] == 1

    # an event for hour H0 is now beyond the window: late, not stored; in-window one stored
    r = await ws.apply([ev("v", T0 + 5, likes=100), ev("v", T0 + 3600, shares=2)], [3, 4])
    assert r.late == [0]
    s = (await ws.read(["v"]))["v"]
    assert s.counts.sum() == 6 and s.counts[3, 0] == 2

    # a jump of more than W hours clears everything
    await ws.apply([ev("v", T0 + 1000 * 3600, views=1)], [5])
    s = (await ws.read(["v"]))["v"]
    assert s.end_hour == H0 + 1000 and s.counts.sum() == 1


@pytest.mark.asyncio
async def test_replay_of_the_same_batch_is_a_noop(redis_client: aredis.Redis) -> None:
    metrics = Metrics()
    ws = store(redis_client, metrics=metrics)
    events = random_events(random.Random(1), 600, videos=40, hours=20)
    offsets = list(range(1000, 1600))
    first = await ws.apply(events, offsets)
    assert first.replayed == 0 and len(first.changed) == 40
    again = await ws.apply(events, offsets)
    assert again.replayed == 600 and again.changed == set() and again.late == []
    await assert_matches(ws, events)
    assert metrics.events_replayed._value.get() == 600


@pytest.mark.asyncio
async def test_partial_overlap_replay_is_exact(redis_client: aredis.Redis) -> None:
    ws = store(redis_client)
    events = random_events(random.Random(2), 300, videos=5, hours=30)
    offsets = list(range(300))
    await ws.apply(events[:200], offsets[:200])
    # after a crash the consumer restarts from an older commit with other batch boundaries
    r1 = await ws.apply(events[120:260], offsets[120:260])
    assert r1.replayed == 80
    r2 = await ws.apply(events[250:], offsets[250:])
    assert r2.replayed == 10
    await assert_matches(ws, events)


@pytest.mark.asyncio
async def test_real_kafka_replay_after_crash(
    kafka_bootstrap: str, redis_client: aredis.Redis
) -> None:
    """Consume from a real topic, 'crash' after committing early, resume: windows exact."""
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 2})
    rng = random.Random(3)
    sent = random_events(rng, 2000, videos=50, hours=40)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for e in sent:
            metrics = dict(zip(("views", "likes", "comments", "shares"), e.counts, strict=True))
            value = {"video_id": e.video_id, "ts": e.ts, **metrics}
            await producer.send(topic, json.dumps(value).encode(), key=e.video_id.encode())
        await producer.flush()
    finally:
        await producer.stop()

    ws = store(redis_client)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    now = time.time()

    async def consume(start: dict | None, max_records: int, target: int):
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumer.assign(tps)
        if start is None:
            await consumer.seek_to_beginning(*tps)
        else:
            for tp in tps:
                consumer.seek(tp, start[tp])
        seen = replayed = 0
        committed = None
        try:
            deadline = time.monotonic() + 60
            while seen < target and time.monotonic() < deadline:
                records = await consumer.getmany(timeout_ms=500, max_records=max_records)
                events, offsets, parts = [], [], []
                for tp, recs in records.items():
                    for rec in recs:
                        e = parse_event(
                            rec.value, now=now, max_bytes=4096, max_count=10**7, max_future_s=3600
                        )
                        assert isinstance(e, Event)
                        events.append(e)
                        offsets.append(rec.offset)
                        parts.append(tp.partition)
                if events:
                    result = await ws.apply(events, offsets, parts)
                    replayed += result.replayed
                    seen += len(events)
                if committed is None and seen >= 400:  # the last commit before the crash
                    committed = {tp: await consumer.position(tp) for tp in tps}
        finally:
            await consumer.stop()
        return seen, replayed, committed

    seen_a, replayed_a, committed = await consume(None, 150, target=1400)
    assert replayed_a == 0 and committed is not None
    applied_before_crash = seen_a
    redelivered = applied_before_crash - sum(committed.values())
    assert redelivered > 0
    # the restarted consumer reads from the commit, with other batch boundaries
    seen_b, replayed_b, _ = await consume(
        committed, 170, target=len(sent) - sum(committed.values())
    )
    assert seen_b == len(sent) - sum(committed.values())
    assert replayed_b == redelivered
    await assert_matches(ws, sent)


@pytest.mark.asyncio
async def test_mixed_partitions_never_look_replayed(redis_client: aredis.Redis) -> None:
    ws = store(redis_client)
    await ws.apply([ev("v", T0, likes=1)], [500], [0])
    # same video from another partition at a lower offset: must be applied, not skipped
    r = await ws.apply([ev("v", T0, likes=2)], [10], [1])
    assert r.replayed == 0
    r = await ws.apply([ev("v", T0, likes=4), ev("v", T0, likes=8)], [11, 3], [1, 2])
    assert r.no_dedup == 1 and r.replayed == 0
    s = (await ws.read(["v"]))["v"]
    assert s.counts[1, -1] == 15


@pytest.mark.asyncio
async def test_minute_spike_detected_across_batches(redis_client: aredis.Redis) -> None:
    ws = store(redis_client, spike_minute_count=500)
    minute = T0 + 30 * 60
    offset = 0

    async def send(ts: float, n_events: int, likes: int):
        nonlocal offset
        batch = [ev("s", ts + i % 50, likes=likes) for i in range(n_events)]
        offs = list(range(offset, offset + n_events))
        offset += n_events
        background = [ev("calm", ts, views=1)]
        return await ws.apply(batch + background, offs + [offset])

    assert (await send(minute, 200, 1)).spikes == set()
    offset += 1
    assert (await send(minute, 100, 2)).spikes == set()  # 400 likes in that minute
    offset += 1
    r = await send(minute, 150, 1)  # 550
    assert r.spikes == {"s"}
    offset += 1
    assert (await send(minute + 60, 1, 1)).spikes == set()  # another minute, 1 like
    offset += 1
    assert (await send(minute, 1, 1)).spikes == {"s"}  # touches the spiking minute again
    offset += 1
    s = (await ws.read(["s"]))["s"]
    assert s.meta["minute_counts"][1, -2] == 551 and s.meta["minute_counts"][1, -1] == 1
    # a minute older than the ring still counts in its hour, but not in the ring
    await ws.apply([ev("s", minute + 20 * 60, likes=1)], [offset])
    r = await ws.apply([ev("s", minute + 5, likes=600)], [offset + 1])
    assert r.spikes == set()
    s = (await ws.read(["s"]))["s"]
    assert s.counts[1, -1] == 551 + 1 + 1 + 600


@pytest.mark.asyncio
async def test_ttl_published_hour_and_hash_tagged_keys(redis_client: aredis.Redis) -> None:
    ws = store(redis_client, ttl_seconds=3600, prefix="sdt")
    vids = ["plain", "with:colon", "ünïcode", "x" * 256]
    await ws.apply(
        [ev(v, T0, views=1, pub=T0 - 86400 * 2 + 5) for v in vids] + [ev("nopub", T0, views=1)],
        [0, 1, 2, 3, 4],
    )
    keys = sorted(k.decode() for k in await redis_client.keys("*"))
    assert keys == sorted(f"sdt:w:{{{v}}}" for v in [*vids, "nopub"])
    for v in vids:
        key = f"sdt:w:{{{v}}}"
        assert key_slot(key.encode()) == key_slot(v.encode())  # the slot is the video's
        ttl = await redis_client.ttl(key)
        assert 3600 <= ttl <= 3600 + 3600  # refreshed at most hourly, with 1 h margin
    series = await ws.read([*vids, "nopub", "unknown"])
    assert "unknown" not in series
    assert series["plain"].published_hour == H0 - 48
    assert series["nopub"].published_hour is None
    # the publication hour is set once, never overwritten
    await ws.apply([ev("plain", T0, views=1, pub=T0)], [10])
    assert (await ws.read(["plain"]))["plain"].published_hour == H0 - 48


@pytest.mark.asyncio
async def test_memory_usage_of_a_full_window(redis_client: aredis.Redis) -> None:
    ws = store(redis_client)
    for vid in ("full", "y" * 256):
        events = [
            ev(vid, T0 + h * 3600 + m, views=10**6, likes=10**5, comments=999, shares=77)
            for h in range(W)
            for m in range(0, 3600, 240)
        ]
        await ws.apply(events, list(range(len(events))))
        s = (await ws.read([vid]))[vid]
        assert (s.counts > 0).all()  # all 168 hours × 4 metrics filled
        used = await ws.memory_usage(vid)
        assert 0 < used <= 4096, used
        assert await redis_client.strlen(ws.key(vid)) == ws.value_bytes
    assert await ws.memory_usage("absent") == 0


@pytest.mark.asyncio
async def test_metrics_noscript_and_errors(redis_client: aredis.Redis) -> None:
    metrics = Metrics()
    ws = store(redis_client, metrics=metrics)
    await ws.apply([ev("a", T0, likes=1)], [0])
    await redis_client.script_flush()  # e.g. a Redis restart or failover
    await ws.apply([ev("a", T0, likes=1)], [1])
    await ws.read(["a"])
    text = metrics.render().decode()
    assert 'detector_redis_latency_seconds_count{operation="apply"}' in text
    assert 'detector_redis_latency_seconds_count{operation="read"}' in text
    assert 'detector_redis_latency_seconds_count{operation="script_load"} 2.0' in text

    await redis_client.set(ws.key("broken"), "not a window")
    await redis_client.lpush(ws.key("wrongtype"), "x")
    with pytest.raises(ResponseError):
        await ws.apply([ev("wrongtype", T0, likes=1)], [0])
    assert metrics.redis_errors.labels(operation="apply")._value.get() == 1
    # a foreign string value is re-initialised rather than misread
    r = await ws.apply([ev("broken", T0, likes=1)], [0])
    assert r.changed == {"broken"}
    assert (await ws.read(["broken"]))["broken"].counts.sum() == 1


@pytest.mark.asyncio
async def test_rejects_decoding_client(redis_url: str) -> None:
    client = aredis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            WindowStore(client, ttl_seconds=10)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_empty_batch_and_concurrent_stores(redis_client: aredis.Redis) -> None:
    ws = store(redis_client)
    r = await ws.apply([], [])
    assert r.changed == set() and r.late == [] and r.replayed == 0
    events = random_events(random.Random(5), 400, videos=10, hours=5)
    # two stores on one client (e.g. two partitions' tasks, disjoint videos) interleaving
    p0 = [e for e in events if int(e.video_id.split("-")[1]) % 2 == 0]
    p1 = [e for e in events if int(e.video_id.split("-")[1]) % 2 == 1]
    ws2 = store(redis_client)
    await asyncio.gather(
        ws.apply(p0, list(range(len(p0))), [0] * len(p0)),
        ws2.apply(p1, list(range(len(p1))), [1] * len(p1)),
    )
    await assert_matches(ws, events)


@pytest.mark.asyncio
async def test_a_batch_of_many_videos_goes_in_calls_of_bounded_size(redis_client: aredis.Redis, monkeypatch) -> None:
    """Calls of at most VIDEOS_PER_CALL videos, one after the other: the same windows, the same
    late events, spikes and replays as one call, and each video whole in one call."""
    import stream_detector.windows as windows

    monkeypatch.setattr(windows, "VIDEOS_PER_CALL", 7)
    rng = random.Random(9)
    events = random_events(rng, 3000, videos=50, hours=300)
    events += [ev("video-3", T0 + 300 * 3600 + 30, likes=60), ev("video-44", T0 + 300 * 3600 + 31, likes=60)]
    offsets = list(range(len(events)))
    ws = store(redis_client, spike_minute_count=50)
    # this store's own script calls (the server's commandstats also count other clients' calls)
    real_evalsha, calls = redis_client.evalsha, 0

    async def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real_evalsha(*args, **kwargs)

    monkeypatch.setattr(redis_client, "evalsha", counted)
    got = await ws.apply(events, offsets)
    monkeypatch.setattr(redis_client, "evalsha", real_evalsha)
    assert calls == 8  # 50 videos in calls of 7 (no retries: the windows were empty)
    await assert_matches(ws, events)
    ref = reference(events)
    assert got.late == [i for i, e in enumerate(events) if int(e.ts // 3600) < ref[e.video_id][0] - (W - 1)]
    assert {"video-3", "video-44"} <= got.spikes
    again = await ws.apply(events, offsets)
    assert again.replayed == len(events) and again.changed == set()


@pytest.mark.asyncio
async def test_a_log_that_started_again_is_applied_once_then_guarded_again(redis_client: aredis.Redis) -> None:
    """Offsets of a log that started again (re-created, truncated, a broker restarted empty)
    collide with the stored ones: marked fresh they are applied, and from then on the new
    log's offsets are the guard's."""
    ws = store(redis_client)
    old = [ev("v", T0 + k * 60, likes=1) for k in range(10)]
    await ws.apply(old, list(range(10)), [0] * 10)
    new = [ev("v", T0 + 3600 + k * 60, views=2) for k in range(5)]
    skipped = await ws.apply(new, list(range(5)), [0] * 5)
    assert skipped.replayed == 5, "without the mark, the new log's records look like replays"
    applied = await ws.apply(new, list(range(5)), [0] * 5, fresh=np.ones(5, dtype=bool))
    assert applied.replayed == 0 and applied.no_dedup == 0
    again = await ws.apply(new, list(range(5)), [0] * 5)
    assert again.replayed == 5, "a replay of the new log is skipped again"
    s = (await ws.read(["v"]))["v"]
    assert s.counts[1].sum() == 10 and s.counts[0].sum() == 10


def test_a_rewind_while_consuming_marks_the_offsets_below_the_old_position_fresh_until_passed() -> None:
    from types import SimpleNamespace

    from stream_detector.config import Settings
    from stream_detector.worker.checkpoint import Checkpoint

    metrics = Metrics()
    cp = Checkpoint(SimpleNamespace(metrics=metrics, settings=Settings()))  # what these methods read of the worker's context
    tp, other = TopicPartition("e", 0), TopicPartition("e", 1)
    cp.written({tp: 500, other: 70})
    cp.check_continuity(tp, 500)  # continuous: nothing
    assert cp.fresh(np.array([10, 499]), np.array([0, 0])) is None
    cp.check_continuity(tp, 0)  # the log started again
    assert metrics.log_discontinuities.labels(kind="rewind")._value.get() == 1
    mask = cp.fresh(np.array([0, 499, 500, 10]), np.array([0, 0, 0, 1]))
    assert mask.tolist() == [True, True, False, False], "below the old position, on that partition only"
    cp.written({tp: 300})
    assert cp.fresh(np.array([300]), np.array([0])).tolist() == [True]
    cp.written({tp: 501})
    assert cp.fresh(np.array([300]), np.array([0])) is None, "past the old position the guard holds again"
