"""A batch prepared ahead keeps nothing of partitions revoked before it is written; a
prepared batch holds exactly the valid, timely events of its records, as columns."""

from __future__ import annotations

import json

import numpy as np
from aiokafka import TopicPartition

from stream_detector.events import Event, EventColumns, ParsedRecords, Rejection
from stream_detector.worker.ingest import Prepared, Slice


class Record:  # the fields of aiokafka's ConsumerRecord the ingest reads
    def __init__(self, offset: int, value: bytes = b"{}", key: bytes | None = b"k") -> None:
        self.offset, self.key, self.value, self.timestamp = offset, key, value, 1000 + offset


def _slice(tp: TopicPartition, rows: list[tuple[str, int, float | None]]) -> Slice:
    """A parsed slice of (video, offset, published_at) events, as parse_records gives them."""
    events = [Event(vid, 1.7e9 + off, (off, 0, 0, 1), pub) for vid, off, pub in rows]
    records = [Record(off) for _, off, _ in rows]
    arrival = {vid: 1000 + off for vid, off, _ in rows}
    parsed = ParsedRecords(np.arange(len(rows)), EventColumns.of_events(events),
                           np.array([off for _, off, _ in rows]), np.zeros(len(rows), bool), arrival, [])
    return Slice(tp, records, parsed)


def test_keep_owned_drops_revoked_partitions_everywhere():
    a, b = TopicPartition("events", 0), TopicPartition("events", 1)
    p = Prepared(n=5)
    p.slices = [_slice(a, [("v1", 10, None)]), _slice(b, [("v2", 20, 1.6e9)]), _slice(a, [("v3", 11, 1.65e9)]),
                _slice(b, [("v2", 21, None)])]
    p.tps = {0: a, 1: b}
    p.dead = [(Record(12), a, Rejection("not_json", "x")), (Record(22), b, Rejection("late", "y"))]
    p.fetched = {a: 13, b: 23}
    p.highs = {0: 1.7e9, 1: 1.7e9}

    p.keep_owned({a})
    cols = p.columns()
    assert cols.video_ids == ["v1", "v3"] and p.offsets().tolist() == [10, 11] and p.partitions().tolist() == [0, 0]
    assert cols.ts.tolist() == [1.7e9 + 10, 1.7e9 + 11] and cols.counts.tolist() == [[10, 0, 0, 1], [11, 0, 0, 1]]
    assert cols.published == [(1, 1.65e9)]  # v3's publication time follows its row
    assert [r.offset for r in p.records()] == [10, 11]
    assert [r.offset for r, _, _ in p.dead] == [12]
    assert p.fetched == {a: 13}  # the revoked partition's offsets are never committed here
    assert p.arrivals() == [{"v1": 1010}, {"v3": 1011}]
    assert p.highs == {0: 1.7e9}  # its event time does not move the watermark either

    p.keep_owned({a, b})  # nothing more to drop
    assert p.offsets().tolist() == [10, 11] and p.fetched == {a: 13}


def test_prepare_keeps_valid_timely_events_as_columns_and_dead_letters_the_rest():
    from stream_detector.config import Settings
    from stream_detector.dependencies import DependencyGuard
    from stream_detector.metrics import Metrics
    from stream_detector.worker.checkpoint import Checkpoint
    from stream_detector.worker.context import WorkerContext
    from stream_detector.worker.ingest import Arrivals, Ingest

    class Consumer:
        def assignment(self):
            return {tp}

    tp = TopicPartition("events", 3)
    metrics = Metrics()
    ctx = WorkerContext(Settings(key_prefix="prep", events_topic="events"), metrics,
                        DependencyGuard(metrics, limit_s=5.0), consumer=Consumer())
    cp = Checkpoint(ctx)
    t0 = 1.7e9
    cp.clock.watermark[3] = t0  # events before t0 - allowed lateness are late
    lateness = ctx.settings.allowed_lateness_seconds
    values = [
        {"video_id": "a", "ts": t0 + 5, "likes": 2, "published_at": t0 - 3600},
        b"not json",
        {"video_id": "b", "ts": t0 - lateness - 10, "views": 1},  # late
        {"video_id": "a", "ts": t0 + 9, "views": 4, "shares": 1},
        {"video_id": "c", "ts": t0 + 60, "comments": 1, "likes": 1, "likes ": 0},
        {"video_id": "d", "ts": t0 + 61, "views": -1},  # bad_count
    ]
    records = [Record(100 + k, v if isinstance(v, bytes) else json.dumps(v).encode(), key=None if k == 3 else b"a")
               for k, v in enumerate(values)]
    b = Ingest(ctx, cp, Arrivals(), confirm_hours=lambda: 1).prepare({tp: records})
    cols = b.columns()
    assert cols.video_ids == ["a", "a", "c"]
    assert cols.ts.tolist() == [t0 + 5, t0 + 9, t0 + 60]
    assert cols.counts.tolist() == [[0, 2, 0, 0], [4, 0, 0, 1], [0, 1, 1, 0]]
    assert cols.published == [(0, t0 - 3600)]
    assert b.offsets().tolist() == [100, 103, 104] and b.partitions().tolist() == [3, 3, 3]
    assert [r.offset for r in b.records()] == [100, 103, 104]
    assert sorted((r.offset, why.reason) for r, _, why in b.dead) == [(101, "not_json"), (102, "late"), (105, "bad_count")]
    assert b.fetched == {tp: 106} and b.n == 6
    assert b.arrivals() == [{"a": 1103, "c": 1104}]
    assert metrics.key_mismatch._value.get() == 1  # c's record is keyed "a"
