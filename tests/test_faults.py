"""Faults a production worker meets every week, tried for real (broker, Redis, worker processes).

A record that the worker cannot handle must cost that record, never the partition: it is
dead-lettered with its reason and consumption goes on.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness import Deployment, WorkerProcess
from tests.test_service import _windows

BASE_TS = 1767600000  # 2026-01-05T08:00:00Z
BIG = 1_500_000  # over the producer's default 1 MiB request limit


async def _produce_raw(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send records as given (a big one needs a producer with a raised request limit)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await (await producer.send(topic, key=key, value=value))
    finally:
        await producer.stop()


def test_poison_records_are_dead_lettered_and_the_partition_goes_on(kafka_bootstrap, redis_url, tmp_path):
    dep = Deployment(kafka_bootstrap, redis_url, partitions=2)
    dep.create_topics()
    workers = [WorkerProcess(dep, tmp_path), WorkerProcess(dep, tmp_path)]
    try:
        for w in workers:
            w.wait_ready()
        videos = [f"pv{k}" for k in range(8)]

        def good(k: int, minute: int) -> tuple[bytes, bytes]:
            vid = videos[k]
            return vid.encode(), json.dumps({"video_id": vid, "ts": BASE_TS + 60 * minute, "views": 3,
                                             "likes": 1}).encode()

        surrogate = b'{"video_id": "\\ud800", "ts": 1767600000, "views": 1}'  # valid JSON, no valid key
        big = b'{"video_id": "pv0", "ts": 1767600000, "pad": "' + b"x" * BIG + b'"}'
        items = [good(k, m) for m in range(10) for k in range(8)]
        # poison in every partition (both keys), between valid traffic
        poison = [(b"pv0", surrogate), (b"pv1", surrogate), (b"pv0", big), (b"pv1", big), (b"pv2", None)]
        items = items[:40] + poison + items[40:]
        asyncio.run(_produce_raw(dep.bootstrap, dep.events, items))
        for w in workers:
            w.wait_drained(timeout_s=90)
        for w in workers:
            assert w.proc.poll() is None, f"a poison record stopped a worker:\n{w.log_tail()}"
        dead = dep.read_topic(dep.dlq, expect=len(poison), timeout_s=30)
        by_reason: dict[str, list] = {}
        for rec in dead:
            headers = dict(rec.headers)
            by_reason.setdefault(headers["dlq.reason"].decode(), []).append((rec, headers))
        assert len(by_reason.get("bad_video_id", [])) == 2
        assert all(rec.value == surrogate for rec, _ in by_reason["bad_video_id"]), "original bytes kept"
        oversized = by_reason.get("oversized", [])
        assert len(oversized) == 2
        for rec, headers in oversized:
            assert headers["dlq.truncated"] == b"true"
            assert int(headers["dlq.original_size"]) == len(big)
            assert big.startswith(rec.value) and len(rec.value) < 1024 * 1024
        tombstone = by_reason.get("not_json", [])
        assert len(tombstone) == 1 and tombstone[0][0].value is None, "a tombstone stays a tombstone"
        windows = _windows(redis_url, dep.run_id, videos)
        hour = BASE_TS // 3600
        for vid in videos:
            got = windows[vid]
            t = hour - got.start_hour
            assert got.counts[:, t].tolist() == [30.0, 10.0, 0.0, 0.0], f"{vid}: valid traffic lost"
            assert np.count_nonzero(got.counts) == 2
        total = sum(w.metrics().get('detector_events_invalid_total{reason="bad_video_id"}', 0) for w in workers)
        assert total == 2
    finally:
        for w in workers:
            w.terminate()


@pytest.mark.asyncio
async def test_a_batch_that_fails_is_bisected_to_the_failing_record(redis_client):
    """The safety net behind parsing: a record the window code cannot handle (here an id the
    parser would now reject, built directly) is isolated, the rest of the batch is applied."""
    from stream_detector.config import Settings
    from stream_detector.detector import Detector
    from stream_detector.events import Event
    from stream_detector.models import ModelArtifact
    from stream_detector.windows import WindowStore

    settings = Settings.from_env({}, key_prefix="bisect")
    detector = Detector(settings, ModelArtifact.load(settings.model_path))
    detector.windows = WindowStore(redis_client, ttl_seconds=3600, prefix="bisect", metrics=detector.metrics)
    events = [Event(f"b{k}", BASE_TS + 60 * k, (1, 0, 0, 0)) for k in range(9)]
    events[5] = Event("\ud800", BASE_TS, (1, 0, 0, 0))
    result, poisoned = await detector._apply_isolating(events, list(range(9)), [0] * 9)
    assert list(poisoned) == [5] and "UnicodeEncodeError" in poisoned[5]
    windows = await detector.windows.read([f"b{k}" for k in range(9)])
    assert sorted(windows) == [f"b{k}" for k in range(9) if k != 5]
    assert all(w.counts.sum() == 1 for w in windows.values()), "each record applied exactly once"
    assert detector.metrics.internal_errors.labels(stage="windows")._value.get() == 1
