from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from stream_detector.events import (
    REASONS,
    Event,
    Rejection,
    dead_letter_headers,
    parse_event,
)

NOW = 1_764_039_845.0  # 2025-11-25T03:04:05Z
LIMITS = {"now": NOW, "max_bytes": 4096, "max_count": 10_000_000, "max_future_s": 3600}


def parse(value: object) -> Event | Rejection:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse_event(raw, **LIMITS)


def ok(**fields: object) -> dict:
    return {"video_id": "v1", "ts": NOW - 10, **fields}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{" + b" " * 5000 + b"}", "oversized"),
        (b"not json", "not_json"),
        (b'{"video_id": "v\xff\xfe", "ts": 1}', "not_json"),  # bad UTF-8
        (b"[" * 2000 + b"]" * 2000, "not_json"),  # nesting too deep
        (b'["v1", 1]', "not_object"),
        (b"42", "not_object"),
        (ok(video_id=None), "missing_video_id"),
        ({"ts": NOW, "likes": 1}, "missing_video_id"),
        (ok(video_id=""), "bad_video_id"),
        (ok(video_id=123), "bad_video_id"),
        (ok(video_id="x" * 257), "bad_video_id"),
        (b'{"video_id": "\\ud800", "ts": 1764039800}', "bad_video_id"),  # lone surrogate: no valid key
        (b'{"video_id": "a\\udfffb", "ts": 1764039800}', "bad_video_id"),
        (ok(video_id="   "), "bad_video_id"),
        (b'{"video_id": "v1", "ts": 1764039800, "likes": 1, "likes": 900}', "duplicate_field"),
        (b'{"video_id": "v1", "video_id": "v2", "ts": 1764039800}', "duplicate_field"),
        (b'{"video_id": "v1", "ts": 1764039800, "views": 1, "vi\\u0065ws": 900}', "duplicate_field"),  # escaped key
        (b'{"video_id": "v1", "ts": 1764039800, "shares": 0, "shares": 0}', "duplicate_field"),
        (b'{"video_id": "v1", "ts": 1764039800, "category": "a", "category": null}', "duplicate_field"),
        (b'{"video_id": "v1", "ts": 1764039800, "region": "US", "likes": 1, "region": "FR"}', "duplicate_field"),
        (b'{"video_id": "v1", "ts": 1764039800, "published_at": null, "published_at": 1764039000}',
         "duplicate_field"),
        (b"\xef\xbb\xbf" + json.dumps(ok(likes=1)).encode(), "not_json"),  # byte-order mark
        (json.dumps(ok(likes=1)).encode("utf-16"), "not_json"),
        (json.dumps(ok(likes=1)).encode("utf-32-le"), "not_json"),
        (ok(published_at=NOW + 1800, ts=NOW - 7200), "bad_published_at"),  # published after its own event
        (ok(likes=-1), "bad_count"),
        (ok(likes="5"), "bad_count"),
        (ok(likes=True), "bad_count"),
        (ok(likes=1.5), "bad_count"),
        (ok(views=[1]), "bad_count"),
        (ok(shares=10_000_001), "absurd_count"),
        (ok(views=1e300), "absurd_count"),
        ({"video_id": "v1", "likes": 1}, "bad_timestamp"),
        (ok(ts="yesterday"), "bad_timestamp"),
        (ok(ts="1999-12-31T23:59:59Z"), "bad_timestamp"),
        (ok(ts=True), "bad_timestamp"),
        (ok(ts=None), "bad_timestamp"),
        (ok(ts=10**400), "bad_timestamp"),
        (b'{"video_id": "v1", "ts": NaN}', "bad_timestamp"),
        (b'{"video_id": "v1", "ts": Infinity}', "bad_timestamp"),
        (ok(ts=NOW + 3601), "future_timestamp"),
        (ok(ts=NOW * 1000), "future_timestamp"),  # epoch milliseconds
        (ok(published_at="soon"), "bad_published_at"),
        (ok(published_at=123), "bad_published_at"),
        (ok(published_at=NOW + 7200), "bad_published_at"),
        (ok(published_at=False), "bad_published_at"),
        # event 1.1: the account and the channel follow video_id's rules
        (ok(user_id=""), "bad_user_id"),
        (ok(user_id="   "), "bad_user_id"),
        (ok(user_id=7), "bad_user_id"),
        (ok(user_id="u" * 257), "bad_user_id"),
        (b'{"video_id": "v1", "ts": 1764039800, "user_id": "\\ud800"}', "bad_user_id"),
        (ok(channel_id=["c"]), "bad_channel_id"),
        (ok(channel_id="\t"), "bad_channel_id"),
        (b'{"video_id": "v1", "ts": 1764039800, "user_id": "a", "user_id": "b"}', "duplicate_field"),
        (b'{"video_id": "v1", "ts": 1764039800, "channel_id": "a", "channel_id": "a"}', "duplicate_field"),
    ],
)
def test_rejections(raw: object, reason: str) -> None:
    result = parse(raw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.reason in REASONS
    assert result.detail


def test_every_reason_is_documented_and_late_and_internal_error_are_not_assigned_here() -> None:
    assert set(REASONS) == {
        "oversized",
        "not_json",
        "not_object",
        "missing_video_id",
        "bad_video_id",
        "bad_count",
        "absurd_count",
        "bad_timestamp",
        "future_timestamp",
        "bad_published_at",
        "late",
        "internal_error",
        "duplicate_field",
        "bad_user_id",
        "bad_channel_id",
    }
    old = parse(ok(ts="2001-01-01T00:00:00Z", likes=1))
    assert isinstance(old, Event)  # lateness is the worker's watermark decision


def test_tombstone_and_non_bytes_never_raise() -> None:
    assert parse_event(None, **LIMITS).reason == "not_json"  # type: ignore[arg-type]
    assert parse_event(memoryview(b"{}"), **LIMITS).reason == "not_json"  # type: ignore[arg-type]


def test_valid_epoch_and_iso_timestamps() -> None:
    e = parse(ok(ts=1_764_039_000, likes=3))
    assert isinstance(e, Event) and e.ts == 1_764_039_000.0

    iso = datetime.fromtimestamp(NOW - 60, UTC).isoformat().replace("+00:00", "Z")
    e = parse(ok(ts=iso, views=2))
    assert isinstance(e, Event) and e.ts == pytest.approx(NOW - 60)

    e = parse(ok(ts="2025-11-25T04:04:05+01:00"))
    assert isinstance(e, Event) and e.ts == pytest.approx(NOW)

    e = parse(ok(ts="2025-11-25T03:04:05"))  # no zone: UTC
    assert isinstance(e, Event) and e.ts == pytest.approx(NOW)

    e = parse(ok(ts=NOW + 3599.5))  # within max_future_s
    assert isinstance(e, Event)


def test_metrics_absent_are_zero_and_order_is_fixed() -> None:
    e = parse({"video_id": "v1", "ts": NOW, "likes": 1})
    assert isinstance(e, Event)
    assert e.counts == (0, 1, 0, 0)
    assert e.published_at is None and e.category is None and e.region is None

    e = parse(ok(views=4, likes=3, comments=2, shares=1, category="music", region="DE"))
    assert isinstance(e, Event)
    assert e.counts == (4, 3, 2, 1)
    assert (e.category, e.region) == ("music", "DE")


def test_leniencies() -> None:
    e = parse(ok(views=3.0, likes=None, category=7, region=["x"], extra="ignored"))
    assert isinstance(e, Event)
    assert e.counts == (3, 0, 0, 0)
    assert type(e.counts[0]) is int
    assert e.category is None and e.region is None

    e = parse(ok(published_at="2025-11-20T00:00:00Z", likes=1))
    assert isinstance(e, Event)
    assert e.published_at == datetime(2025, 11, 20, tzinfo=UTC).timestamp()


def test_event_is_frozen() -> None:
    e = parse(ok(likes=1))
    assert isinstance(e, Event)
    with pytest.raises(AttributeError):
        e.video_id = "other"  # type: ignore[misc]


def test_dead_letter_headers_carry_reason_and_origin() -> None:
    raw = b'{"video_id": "v1", "likes": -5, "ts": 1}'
    rej = parse_event(raw, **LIMITS)
    assert isinstance(rej, Rejection) and rej.reason == "bad_count"
    headers = dead_letter_headers(rej, "engagement-events", 3, 12345, now=NOW)
    h = dict(headers)
    assert [k for k, _ in headers] == [
        "dlq.reason",
        "dlq.detail",
        "dlq.topic",
        "dlq.partition",
        "dlq.offset",
        "dlq.ts",
    ]
    assert all(isinstance(v, bytes) for v in h.values())
    assert h["dlq.reason"] == b"bad_count"
    assert b"likes" in h["dlq.detail"]
    assert h["dlq.topic"] == b"engagement-events"
    assert h["dlq.partition"] == b"3"
    assert h["dlq.offset"] == b"12345"
    assert h["dlq.ts"] == b"2025-11-25T03:04:05.000Z"
    # the dead-letter value is the original record: parsing never altered the input bytes
    assert raw == b'{"video_id": "v1", "likes": -5, "ts": 1}'


def test_dead_letter_detail_is_bounded_and_utf8() -> None:
    rej = Rejection("not_json", "é" * 10_000)
    h = dict(dead_letter_headers(rej, "t", 0, 0))
    assert len(h["dlq.detail"]) <= 800
    h["dlq.detail"].decode("utf-8")


def test_a_field_name_inside_a_value_is_not_a_duplicate() -> None:
    e = parse(ok(likes=2, category='"likes" and "likes"'))
    assert isinstance(e, Event) and e.counts[1] == 2


def _corpus() -> list[bytes]:
    """Valid events of every shape, the rejection cases above, and random byte mutations."""
    import random

    rng = random.Random(5)
    valid: list[bytes] = []
    for i in range(400):
        ev: dict = {"video_id": rng.choice(["v1", f"vid-{i}", "ünï-ç", " padded ", "x" * 256, "{tag}"]),
                    "ts": rng.choice([NOW - rng.uniform(0, 9e5), int(NOW) - i, "2025-11-25T03:00:00Z",
                                      "2025-11-25T03:00:00.123+02:00", "2025-11-25T03:00:00"])}
        for m in ("views", "likes", "comments", "shares"):
            if rng.random() < 0.5:
                ev[m] = rng.choice([0, 1, 7, 10_000_000, 3.0, None])
        if rng.random() < 0.3:
            ev["published_at"] = rng.choice([NOW - 86400, "2025-11-20T00:00:00Z", NOW + 3000, None])
        if rng.random() < 0.3:
            ev["category"] = rng.choice(["music", 5, None, ["x"]])
        if rng.random() < 0.2:
            ev["extra"] = rng.choice([{"nested": [1, 2, {"a": None}]}, "s", 1.5e300])
        if rng.random() < 0.4:  # event 1.1
            ev["user_id"] = rng.choice([f"u{i}", "ü-ser", " spaced ", "u" * 256, None, ""])
        if rng.random() < 0.3:
            ev["channel_id"] = rng.choice(["ch-1", f"ch-{i % 7}", "chaîne", None, 3])
        valid.append(json.dumps(ev, ensure_ascii=rng.random() < 0.5).encode())
    mutated = []
    for raw in valid[:300]:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        mutated.append(bytes(b))
    cases = [r if isinstance(r, bytes) else json.dumps(r).encode() for r, _ in _REJECTION_CASES]
    return valid + mutated + cases


_REJECTION_CASES = test_rejections.pytestmark[0].args[1]


def test_typed_fast_path_and_full_validator_agree_on_every_record() -> None:
    from stream_detector.events import validate_event

    corpus = _corpus()
    fast = [parse_event(raw, **LIMITS) for raw in corpus]
    full = [validate_event(raw, **LIMITS) for raw in corpus]
    assert fast == full
    kinds = {type(r).__name__ for r in fast}
    assert kinds == {"Event", "Rejection"}  # the corpus exercises both outcomes
    assert sum(isinstance(r, Event) for r in fast) > 300


class Record:  # the fields of aiokafka's ConsumerRecord the parser reads
    def __init__(self, offset: int, value: object, key: object = None, timestamp: int = 0) -> None:
        self.offset, self.value, self.key, self.timestamp = offset, value, key, timestamp


def test_parse_records_gives_the_same_events_and_rejections_as_parse_event() -> None:
    from stream_detector.events import parse_records

    corpus = _corpus() + [None, "not bytes"]  # type: ignore[list-item]
    one = [parse_event(raw, **LIMITS) for raw in corpus]
    got = parse_records([Record(100 + i, raw) for i, raw in enumerate(corpus)], **LIMITS)
    assert dict(got.rejected) == {i: r for i, r in enumerate(one) if isinstance(r, Rejection)}
    events = [r for r in one if isinstance(r, Event)]
    assert got.rows.tolist() == [i for i, r in enumerate(one) if isinstance(r, Event)]
    assert got.offsets.tolist() == [100 + i for i in got.rows.tolist()]
    cols = got.columns
    assert cols.video_ids == [e.video_id for e in events]
    assert cols.ts.tolist() == [e.ts for e in events]
    assert cols.counts.tolist() == [list(e.counts) for e in events]
    assert cols.published == [(k, e.published_at) for k, e in enumerate(events) if e.published_at is not None]
    assert cols.user_ids == [e.user_id for e in events] and cols.channel_ids == [e.channel_id for e in events]
    assert any(e.user_id for e in events) and any(e.channel_id for e in events)


def test_event_1_1_carries_the_account_and_the_channel_and_1_0_events_stay_as_they_were() -> None:
    got = parse(ok(likes=1, user_id="acc 7", channel_id="creator-\u00e9"))
    assert isinstance(got, Event) and got.user_id == "acc 7" and got.channel_id == "creator-\u00e9"
    plain = parse(ok(views=12))
    assert isinstance(plain, Event) and plain.user_id is None and plain.channel_id is None
    null = parse(ok(likes=1, user_id=None))  # a null is absent, as for the other optional fields
    assert isinstance(null, Event) and null.user_id is None
