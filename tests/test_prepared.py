"""A batch prepared ahead keeps nothing of partitions revoked before it is written."""

from __future__ import annotations

from aiokafka import TopicPartition

from stream_detector.events import Event, Rejection
from stream_detector.worker.ingest import Prepared


class Record:  # the fields of aiokafka's ConsumerRecord the ingest reads
    def __init__(self, offset: int) -> None:
        self.offset, self.key, self.value, self.timestamp = offset, b"k", b"{}", 1000 + offset


def test_keep_owned_drops_revoked_partitions_everywhere():
    a, b = TopicPartition("events", 0), TopicPartition("events", 1)
    p = Prepared(n=5)
    for tp, vid, off in ((a, "v1", 10), (b, "v2", 20), (a, "v3", 11), (b, "v2", 21)):
        p.events.append(Event(vid, 1.7e9, (1, 0, 0, 0)))
        p.offsets.append(off)
        p.partitions.append(tp.partition)
        p.sources.append((Record(off), tp))
        p.arrival[vid] = 1000.0 + off
    p.dead = [(Record(12), a, Rejection("not_json", "x")), (Record(22), b, Rejection("late", "y"))]
    p.fetched = {a: 13, b: 23}
    p.highs = {0: 1.7e9, 1: 1.7e9}

    p.keep_owned({a})
    assert [e.video_id for e in p.events] == ["v1", "v3"] and p.offsets == [10, 11] and p.partitions == [0, 0]
    assert [tp for _, tp in p.sources] == [a, a]
    assert [r.offset for r, _, _ in p.dead] == [12]
    assert p.fetched == {a: 13}  # the revoked partition's offsets are never committed here
    assert set(p.arrival) == {"v1", "v3"}
    assert p.highs == {0: 1.7e9}  # its event time does not move the watermark either

    p.keep_owned({a, b})  # nothing more to drop
    assert p.offsets == [10, 11] and p.fetched == {a: 13}
