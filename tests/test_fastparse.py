"""The compiled parser (stream_detector/_fastparse.c) decides exactly as the Python parser does.

It accepts only what it is sure of and leaves everything else to ``parse_event``, so the two can
differ only on records it accepts: each test parses the same records twice, once with the
compiled module and once with it switched off (every record through ``parse_event``), and
compares everything the consume path reads.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stream_detector import events
from stream_detector.events import ParsedRecords, parse_records

NOW = 1_764_039_845.0  # 2025-11-25T03:04:05Z
LIMITS = {"now": NOW, "max_bytes": 4096, "max_count": 10_000_000, "max_future_s": 3600}

pytestmark = pytest.mark.skipif(events._fastparse is None, reason="the compiled parser is not built")


class Record:  # the fields of aiokafka's ConsumerRecord the parser reads
    def __init__(self, offset: int, value: object, key: object = None, timestamp: int = 0) -> None:
        self.offset, self.value, self.key, self.timestamp = offset, value, key, timestamp


def both(records: list[Record], **limits) -> tuple[ParsedRecords, ParsedRecords]:
    limits = {**LIMITS, **limits}
    compiled = parse_records(records, **limits)
    saved, events._fastparse = events._fastparse, None
    try:
        python = parse_records(records, **limits)
    finally:
        events._fastparse = saved
    return compiled, python


def assert_same(a: ParsedRecords, b: ParsedRecords) -> None:
    assert a.rejected == b.rejected
    assert a.rows.tolist() == b.rows.tolist()
    assert a.columns.video_ids == b.columns.video_ids
    assert a.columns.ts.tobytes() == b.columns.ts.tobytes()  # bit for bit
    assert a.columns.counts.tolist() == b.columns.counts.tolist()
    assert a.columns.published == b.columns.published
    assert a.columns.user_ids == b.columns.user_ids and a.columns.channel_ids == b.columns.channel_ids
    assert a.offsets.tolist() == b.offsets.tolist()
    assert a.key_mismatch.tolist() == b.key_mismatch.tolist()
    assert a.arrival == b.arrival


def left_to_python(values: list[bytes]) -> list[bool]:
    """Which records the compiled parser leaves to Python (its own status bits)."""
    recs = [Record(i, v) for i, v in enumerate(values)]
    status = events._fastparse.parse_records(recs, NOW, 4096, 10_000_000, 3600.0)[0]
    return [bool(s & events._fastparse.ST_PYTHON) for s in status]


def test_the_compiled_parser_is_built_here():
    """CI and the image build it (setup.py); without it the consume path is ~2x dearer."""
    assert events._fastparse is not None


def test_it_takes_the_plain_events_itself_and_leaves_the_rest_to_python():
    plain = [
        b'{"video_id": "v1", "ts": 1764039800, "likes": 1}',
        b'{"video_id":"v1","ts":1764039800.25,"views":3,"likes":0,"comments":2,"shares":1,"category":"music","region":"US"}',
        b'{"video_id": "v1", "ts": "2025-11-25T03:00:00Z", "published_at": "2025-11-20T00:00:00.5+02:00"}',
        b' {"ts": 1764039800, "video_id": "a b", "extra": {"n": [1, 2.5e3, true, null, "x\\n"]}} ',
        b'{"video_id": "v1", "ts": 1764039800, "published_at": null, "category": null}',
        b'{"video_id": "v1", "ts": 1764039800, "likes": 1, "user_id": "acc 1", "channel_id": "ch"}',  # 1.1
    ]
    lenient_or_bad = [
        b'{"video_id": "v1", "ts": 1764039800, "likes": null}',  # null metric: Python's leniency
        b'{"video_id": "v1", "ts": 1764039800, "likes": 3.0}',
        b'{"video_id": "v1", "ts": 1764039800, "likes": -1}',
        b'{"video_id": "v1", "ts": 1764039800, "likes": 1, "likes": 2}',
        b'{"video_id": "v\\u0031", "ts": 1764039800}',
        '{"video_id": "vidé", "ts": 1764039800}'.encode(),
        b'{"video_id": "v1", "ts": 1764039800, "category": 5}',
        b'{"video_id": "v1", "ts": 1764039800, "x": NaN}',
        b'{"video_id": "v1", "ts": "2025-11-25T03:00"}',
        b'{"video_id": "v1", "ts": 1764039800}x',
        b'{"video_id": "v1"}',
        b"not json",
        b'{"video_id": "v1", "ts": 1764039800, "user_id": null}',  # a null account: absent, Python's leniency
        b'{"video_id": "v1", "ts": 1764039800, "user_id": "  "}',
        b'{"video_id": "v1", "ts": 1764039800, "channel_id": 3}',
    ]
    assert left_to_python(plain) == [False] * len(plain)
    assert left_to_python(lenient_or_bad) == [True] * len(lenient_or_bad)
    compiled, python = both([Record(i, v) for i, v in enumerate(plain + lenient_or_bad)])
    assert_same(compiled, python)
    # valid, by Python's leniencies: a null metric, 3.0, an escaped or non-ASCII id, a non-string
    # category, NaN in an unknown field (json takes it), a time without seconds
    assert compiled.rows.tolist() == [*range(len(plain) + 2), *range(len(plain) + 4, len(plain) + 9),
                                      len(plain) + 12]
    assert compiled.columns.user_ids[len(plain) - 1] == "acc 1"


def _valid_event(rng: random.Random, i: int) -> dict:
    ev: dict = {"video_id": rng.choice(["v1", f"vid-{i % 50}", " padded ", "x" * 256, "{tag}", "a\"b", "c\\d"]),
                "ts": rng.choice([NOW - rng.uniform(0, 9e5), int(NOW) - i, round(NOW - rng.uniform(0, 9e5), 3),
                                  "2025-11-25T03:00:00Z", "2025-11-25 03:00:00.123456", "2025-11-25T03:00:00+05:30"])}
    for m in ("views", "likes", "comments", "shares"):
        if rng.random() < 0.5:
            ev[m] = rng.choice([0, 1, 7, 123456, 10_000_000, 10_000_001 if rng.random() < 0.1 else 2])
    if rng.random() < 0.3:
        ev["published_at"] = rng.choice([NOW - 86400, int(NOW) - 3600, "2025-11-20T00:00:00Z", None])
    if rng.random() < 0.3:
        ev["category"] = rng.choice(["music", "news\tflash", None])
    if rng.random() < 0.2:
        ev["extra"] = rng.choice([{"nested": [1, 2, {"a": None}]}, "s", 1.5e300, [], {}, -0.0, True])
    if rng.random() < 0.4:  # event 1.1
        ev["user_id"] = f"u{i % 70}" if rng.random() < 0.9 else rng.choice(["u-é", " u ", "u" * 256, "q\"x", None])
    if rng.random() < 0.3:
        ev["channel_id"] = f"ch{i % 5}" if rng.random() < 0.9 else rng.choice(["ch \\ 2", None])
    keys = list(ev)
    rng.shuffle(keys)
    return {k: ev[k] for k in keys}


_SIGNIFICANT = b'{}[]:,"\\ -+.eE0123456789ntfu\x00\x7f\x80\xff'


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        at = rng.randrange(len(b) + 1)
        if op < 0.4 and at < len(b):
            b[at] = rng.choice(_SIGNIFICANT) if rng.random() < 0.8 else rng.randrange(256)
        elif op < 0.7:
            b[at:at] = bytes([rng.choice(_SIGNIFICANT)])
        elif at < len(b):
            del b[at : at + rng.randint(1, 4)]
    return bytes(b)


def test_same_decisions_on_valid_and_mutated_records():
    rng = random.Random(11)
    valid = [json.dumps(_valid_event(rng, i), separators=rng.choice([(",", ":"), (", ", ": ")])).encode()
             for i in range(3000)]
    mutated = [_mutate(rng, raw) for raw in valid for _ in range(4)]
    records = [Record(i, raw, key=rng.choice([None, b"v1", b"vid-3", "v1", bytearray(b"v1")]),
                      timestamp=rng.randrange(10_000))
               for i, raw in enumerate(valid + mutated)]
    compiled, python = both(records)
    assert_same(compiled, python)
    assert len(compiled) > 4000 and len(compiled.rejected) > 2000  # both outcomes, in numbers
    assert compiled.key_mismatch.any() and not compiled.key_mismatch.all()
    taken = left_to_python([r.value for r in records]).count(False)
    assert taken > 3000  # the compiled parser decided most valid records itself (not escaped ids)


def test_same_times_for_every_iso_form_it_reads_and_those_it_leaves():
    rng = random.Random(3)
    texts = []
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for _ in range(3000):
        t = base + timedelta(seconds=rng.uniform(0, 7e7), microseconds=rng.randrange(10**6))
        frac = rng.choice(["", "." + f"{t.microsecond:06d}"[: rng.randint(1, 7)], "." + f"{t.microsecond:06d}"])
        zone = rng.choice(["", "Z", "+00:00", "-00:00", "+05:30", "-11:59", "+23:59", "+24:00", "+0530", "z"])
        sep = rng.choice(["T", "T", " ", "t"])
        texts.append(t.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + zone)
    texts += ["2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2024-04-31T00:00:00", "2024-12-31T23:59:59.999999Z",
              "2024-01-01T24:00:00", "2024-01-01T23:60:00", "2024-01-01T23:59:60", "2024-13-01T00:00:00",
              "2024-00-10T00:00:00", "2024-01-00T00:00:00", "2024-1-01T00:00:00", "2024-01-01T00:00:00.",
              "2024-01-01T00:00:00.1234567", "+2024-01-01T00:00:00", "2024-01-01T00:00:00Z ", "1999-12-31T23:59:59Z",
              "2025-11-25T04:04:05Z", "2025-11-25T04:04:06Z"]  # the future limit: NOW + 3600 = 04:04:05
    records = []
    for i, text in enumerate(texts):
        records.append(Record(2 * i, json.dumps({"video_id": "v", "ts": text}).encode()))
        records.append(Record(2 * i + 1, json.dumps({"video_id": "v", "ts": NOW - 10, "published_at": text}).encode()))
    compiled, python = both(records, now=NOW + 86400 * 800)  # most of them valid
    assert_same(compiled, python)
    assert len(compiled) > 3000
    compiled, python = both(records)
    assert_same(compiled, python)


def test_same_numbers_for_every_number_form():
    forms = ["0", "1", "-1", "-0", "00", "01", "1.0", "1.", ".5", "1e3", "1E+3", "1e-3", "1.5e300", "1e400",
             "-1e400", "123456789012345678", "1234567890123456789", "99999999999999999999", "10000000",
             "10000001", "1764039800", "1764039800.5", "1764039800.123456789012345", "17640398001", "1.7640398e9",
             "1764039800e0", "0x10", "+1", "1_000", "NaN", "Infinity", "-Infinity", "true", "null", '"1"']
    templates = ['{"video_id": "v", "ts": %s}', '{"video_id": "v", "ts": 1764039800, "likes": %s}',
                 '{"video_id": "v", "ts": 1764039800, "published_at": %s}']
    records = [Record(k, (t % f).encode()) for k, (t, f) in enumerate((t, f) for f in forms for t in templates)]
    compiled, python = both(records)
    assert_same(compiled, python)


def test_same_decisions_on_structure_edge_cases():
    deep = lambda k: '{"video_id": "v", "ts": 1764039800, "x": ' + "[" * k + "]" * k + "}"  # noqa: E731
    raws = [
        deep(30), deep(31), deep(32), deep(33), deep(2000),
        '{"video_id": "v", "ts": 1764039800, "video_id": "w"}',
        '{"video_id": "v", "ts": 1764039800, "x": 1, "x": 2}',  # an unknown field twice: not the contract's
        '{"video_id": "v", "ts": 1764039800, "": 0}',
        '{"video_id": "v", "ts": 1764039800,}',
        '{"video_id": "v" "ts": 1764039800}',
        '{"video_id": "v", "ts": 1764039800}{}',
        '{"video_id": "v", "ts": 1764039800, "s": "tab\there"}',
        '{"video_id": "v", "ts": 1764039800, "s": "bad \\x escape"}',
        '{"video_id": "v", "ts": 1764039800, "s": "\\ud800"}',
        '{"video_id": "", "ts": 1764039800}',
        '{"video_id": "   ", "ts": 1764039800}',
        '{"video_id": "' + "y" * 257 + '", "ts": 1764039800}',
        '{"video_id": "a\\"b", "ts": 1764039800}',
        '{"video_id": null, "ts": 1764039800}',
        '{"video_id": 7, "ts": 1764039800}',
        '[{"video_id": "v", "ts": 1764039800}]',
        '\ufeff{"video_id": "v", "ts": 1764039800}',
        '{"video_id": "v", "ts": 1764039800, "published_at": 1764039700, "published_at": null}',
        '{"video_id": "v", "ts": 1764039800, "published_at": 1764046000}',  # after its own ts + max_future_s
        '{"video_id": "v", "ts": 1764039800, "published_at": 1764043000}',  # after ts, within the skew
        '{"video_id": "v", "ts": 1764039800, "region": ["US"]}',
        '{\n"video_id":\r"v",\t"ts" :1764039800 }\n',
        '{"video_id": "v", "ts": 1764039800, "likes": 1' + " " * 4100 + "}",
    ]
    records = [Record(i, r.encode()) for i, r in enumerate(raws)] + [Record(99, None), Record(100, "a str")]
    compiled, python = both(records)
    assert_same(compiled, python)


def test_a_video_id_is_one_string_per_batch_and_references_are_released():
    values = [json.dumps({"video_id": f"v{i % 3}", "ts": NOW - i, "likes": 1}).encode() for i in range(30)]
    records = [Record(i, v, key=b"v0", timestamp=1000 + i) for i, v in enumerate(values)]
    before = [sys.getrefcount(v) for v in values]
    got = parse_records(records, **LIMITS)
    ids = got.columns.video_ids
    assert ids[0] is ids[3] is ids[27] and ids[0] == "v0"  # shared: hashed once, kept once
    assert got.arrival == {"v0": 1027, "v1": 1028, "v2": 1029}
    assert got.key_mismatch.tolist() == [i % 3 != 0 for i in range(30)]
    one = ids[0]
    del got, ids
    assert [sys.getrefcount(v) for v in values] == before  # no value kept alive by the parser
    assert sys.getrefcount(one) == 2  # `one` and the call's argument: the parser kept none


def test_a_record_the_python_parser_fails_on_is_an_internal_error(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(events, "parse_event", broken)
    records = [Record(0, b'{"video_id": "v", "ts": 1764039800}'), Record(1, b'{"video_id": "v", "ts": null}')]
    got = parse_records(records, **LIMITS)
    assert got.rows.tolist() == [0]  # the compiled parser took the first one itself
    assert [(i, r.reason) for i, r in got.rejected] == [(1, "internal_error")]
    assert np.array_equal(got.offsets, [0])
