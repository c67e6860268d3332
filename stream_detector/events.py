"""Parse and validate one engagement event (one Kafka record value) on the hot path.

Contract (DESIGN.md; README "Contracts", event 1.1): a JSON object
``{"video_id": str, "ts": ISO-8601 or epoch seconds,
"views"|"likes"|"comments"|"shares": int >= 0, "published_at"?: time,
"category"?: str, "region"?: str, "user_id"?: str, "channel_id"?: str}``. Absent metrics
are 0; an event with a ``user_id`` is that account's action(s) on the video (1.1).

:func:`parse_event` never raises on bad input: it returns an :class:`Event` or a
:class:`Rejection` whose ``reason`` is one of the stable strings in :data:`REASONS`. It tries
a typed decode first (msgspec, into the shape of a valid event: the common case costs less
than half of ``json.loads`` + checks); whatever that does not accept as it is goes through
:func:`validate_event`, the full validator, which names the reason. Both paths accept exactly
the same events (``tests/test_events.py`` compares them on valid and hostile corpora). The
consume path calls :func:`parse_records` on a fetch's records: a compiled parser
(``_fastparse.c``, ~10x cheaper) takes the plain events it is sure of and leaves every other
record to :func:`parse_event` (``tests/test_fastparse.py``: the same decisions, bit for bit, on
valid, hostile and mutated corpora). The worker sends rejected records to the dead-letter topic
with their original bytes as the value and :func:`dead_letter_headers` as headers, and counts
them by reason.

Leniencies (documented, deliberate): a metric that is ``null`` counts as absent (0); a
float count with no fractional part (``3.0``) is accepted as 3; ``category`` / ``region``
that are not strings are dropped (set to ``None``) rather than rejecting the engagement;
ISO timestamps without a zone are UTC. Unknown fields are ignored. Ids are opaque: leading or
trailing spaces are part of the id.

Strict on purpose: JSON must be UTF-8 (UTF-16/32 and byte-order marks are ``not_json``: the
contract is UTF-8, and accepting them would make the same id two different byte strings);
a field given twice (``{"likes": 1, "likes": 900}``: which one did the producer mean?) is
``duplicate_field``; an id of only whitespace is ``bad_video_id``; a ``published_at`` later
than the event's own ``ts`` (beyond ``max_future_s`` of clock skew) is ``bad_published_at``.
A record key that differs from ``video_id`` is accepted but counted by the worker
(``detector_events_key_mismatch_total``): it breaks the producer contract and switches off
replay de-duplication for that video.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import numpy as np

from .series import METRICS

log = logging.getLogger("stream_detector.events")

REASONS: dict[str, str] = {
    "oversized": "record value larger than max_event_bytes",
    "not_json": "value is not valid UTF-8 JSON (bad UTF-8, UTF-16/32 or a byte-order mark, excessive nesting)",
    "not_object": "JSON value is not an object",
    "duplicate_field": "a field appears twice in the object (the value meant is ambiguous)",
    "missing_video_id": "no video_id field (or null)",
    "bad_video_id": "video_id is not a non-empty string of at most 256 characters that encodes as "
    "UTF-8 (a lone surrogate such as \\ud800 is valid JSON but no valid key)",
    "bad_user_id": "user_id (event 1.1, optional) is not a non-empty string of at most 256 characters, "
    "not only whitespace, that encodes as UTF-8",
    "bad_channel_id": "channel_id (event 1.1, optional) is not a non-empty string of at most 256 "
    "characters, not only whitespace, that encodes as UTF-8",
    "bad_count": "a metric is not an int >= 0 (string, bool, float with a fraction, negative)",
    "absurd_count": "a metric is larger than max_count_per_event",
    "bad_timestamp": "ts missing, unparsable, not finite, or before 2000-01-01",
    "future_timestamp": "ts later than now + max_future_seconds",
    "bad_published_at": "published_at unparsable, before 2000-01-01 or in the future",
    "late": "event older than the watermark minus the allowed lateness, or older than the "
    "window (assigned by the worker, never by parse_event)",
    "internal_error": "the worker failed on this one record (a bug, not bad input); the record "
    "is dead-lettered so that it cannot stop its partition (assigned by the worker)",
}
"""Every rejection reason (stable label values of ``detector_events_invalid_total``)."""

MIN_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_VIDEO_ID_CHARS = 256
_DETAIL_MAX = 200
_EPOCH = datetime(1970, 1, 1)  # naive, for zone-less ISO strings (taken as UTC)


class Event(msgspec.Struct, frozen=True, gc=False):
    """One valid event. A struct, not a dataclass: built ten times faster (a frozen dataclass
    sets each field through ``object.__setattr__``), and invisible to the garbage collector
    (its fields cannot refer back to it), so a batch of them does not make collections run."""

    video_id: str
    ts: float  # epoch seconds (UTC)
    counts: tuple[int, int, int, int]  # METRICS order: views, likes, comments, shares
    published_at: float | None = None
    category: str | None = None
    region: str | None = None
    user_id: str | None = None  # event 1.1: the account whose action(s) this is
    channel_id: str | None = None  # event 1.1: the video's channel (creator)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_event_time(value: object) -> float | None:
    """Epoch seconds from a JSON number or an ISO-8601 string; None if unusable."""
    t = type(value)
    try:
        if t is int or t is float:
            f = float(value)  # type: ignore[arg-type]
            return f if math.isfinite(f) else None
        if t is str:
            dt = datetime.fromisoformat(value)  # type: ignore[arg-type]
            if dt.tzinfo is None:
                return (dt - _EPOCH).total_seconds()
            return dt.timestamp()
    except (ValueError, OverflowError):
        return None
    return None  # bool, null, list, object


def _check_counts(obj: dict, max_count: int) -> tuple[int, int, int, int] | Rejection:
    """Slow path: find which metric is wrong (or normalise nulls / integral floats)."""
    out = []
    for name in METRICS:
        v = obj.get(name)
        if v is None:
            out.append(0)
            continue
        t = type(v)
        if t is float and v.is_integer():
            v = int(v)
        elif t is not int:
            return Rejection("bad_count", f"{name}={_short(v)}")
        if v < 0:
            return Rejection("bad_count", f"{name}={v} is negative")
        if v > max_count:
            return Rejection("absurd_count", f"{name}={v} > {max_count}")
        out.append(v)
    return (out[0], out[1], out[2], out[3])


assert METRICS == ("views", "likes", "comments", "shares")  # _duplicate_field spells them out


def _duplicate_field(raw: bytes) -> str | None:
    """A known field given twice. Cheap byte counts first; only a suspicious record is parsed
    again with a hook that sees every key (a value may contain the key's text, and a key may
    be spelled with ``\\u`` escapes, which byte counts do not see)."""
    c = raw.count  # unrolled: this runs on every record, a generator costs a third more
    if not (c(b'"video_id"') > 1 or c(b'"ts"') > 1 or c(b'"views"') > 1 or c(b'"likes"') > 1
            or c(b'"comments"') > 1 or c(b'"shares"') > 1 or c(b'"published_at"') > 1
            or c(b'"category"') > 1 or c(b'"region"') > 1 or c(b'"user_id"') > 1
            or c(b'"channel_id"') > 1 or b"\\u" in raw):
        return None
    seen: list[str] = []

    def hook(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            seen.extend(k for k in keys if keys.count(k) > 1)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return seen[0] if seen else None


_Count = Annotated[int, msgspec.Meta(ge=0)]  # an explicit negative count fails the decode: the validator names it
_ABSENT = -1  # a metric the record does not have (msgspec does not check defaults)


class _WireEvent(msgspec.Struct):
    """A valid event's shape; unknown fields are skipped. Anything else fails to decode. Absent
    fields keep a sentinel so the duplicate check counts only the fields a record has."""

    video_id: str
    ts: float | str
    views: _Count = _ABSENT
    likes: _Count = _ABSENT
    comments: _Count = _ABSENT
    shares: _Count = _ABSENT
    published_at: float | str | None | msgspec.UnsetType = msgspec.UNSET
    category: str | None | msgspec.UnsetType = msgspec.UNSET
    region: str | None | msgspec.UnsetType = msgspec.UNSET
    user_id: str | msgspec.UnsetType = msgspec.UNSET
    channel_id: str | msgspec.UnsetType = msgspec.UNSET


def _given_twice(w: _WireEvent, raw: bytes) -> bool:
    """Whether a field the record has appears more than once in its bytes (each decoded field
    appears at least once; an absent one cannot be duplicated): ``_duplicate_field`` with the
    counts of absent fields skipped. A ``\\u`` escape anywhere is left to the full check, which
    sees keys spelled with escapes too."""
    c = raw.count
    return (c(b'"video_id"') > 1 or c(b'"ts"') > 1 or b"\\u" in raw
            or (w.views != _ABSENT and c(b'"views"') > 1) or (w.likes != _ABSENT and c(b'"likes"') > 1)
            or (w.comments != _ABSENT and c(b'"comments"') > 1) or (w.shares != _ABSENT and c(b'"shares"') > 1)
            or (w.published_at is not msgspec.UNSET and c(b'"published_at"') > 1)
            or (w.category is not msgspec.UNSET and c(b'"category"') > 1)
            or (w.region is not msgspec.UNSET and c(b'"region"') > 1)
            or (w.user_id is not msgspec.UNSET and c(b'"user_id"') > 1)
            or (w.channel_id is not msgspec.UNSET and c(b'"channel_id"') > 1))


_decode_wire = msgspec.json.Decoder(_WireEvent).decode
_WIRE_ERRORS = (msgspec.DecodeError, RecursionError)  # ValidationError is a DecodeError


def parse_event(
    raw: bytes, *, now: float, max_bytes: int, max_count: int, max_future_s: float
) -> Event | Rejection:
    """Decode and validate one record value. Never raises on bad input."""
    got = _typed(raw, now, max_bytes, max_count, max_future_s)
    if got is not None:
        w, ts, pub, counts = got
        return Event(w.video_id, ts, counts, pub, w.category if type(w.category) is str else None,
                     w.region if type(w.region) is str else None,
                     w.user_id if w.user_id is not msgspec.UNSET else None,
                     w.channel_id if w.channel_id is not msgspec.UNSET else None)
    return validate_event(raw, now=now, max_bytes=max_bytes, max_count=max_count, max_future_s=max_future_s)


@dataclass
class EventColumns:
    """Valid events as columns: what the window store, the schedule and the counters read,
    without an object per event (:func:`parse_records` makes them)."""

    video_ids: list[str]
    ts: np.ndarray  # (n,) float64, epoch seconds
    counts: np.ndarray  # (n, 4) int64, METRICS order
    published: list[tuple[int, float]]  # (row, published_at) of the rows that carry one
    user_ids: list[str | None] | None = None  # event 1.1, per row; None: no row has one
    channel_ids: list[str | None] | None = None  # event 1.1, per row; None: no row has one
    _groups: VideoGroups | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.video_ids)

    def groups(self) -> VideoGroups:
        """The events grouped by video (computed once: the window store and the schedule both
        read it)."""
        if self._groups is None:
            self._groups = VideoGroups.of(self.video_ids)
        return self._groups

    @classmethod
    def of_events(cls, events: Sequence[Event]) -> EventColumns:
        users = [e.user_id for e in events]
        channels = [e.channel_id for e in events]
        return cls([e.video_id for e in events], np.array([e.ts for e in events], dtype=np.float64),
                   np.array([e.counts for e in events], dtype=np.int64).reshape(len(events), len(METRICS)),
                   [(k, e.published_at) for k, e in enumerate(events) if e.published_at is not None],
                   users if any(u is not None for u in users) else None,
                   channels if any(c is not None for c in channels) else None)

    @classmethod
    def concat(cls, parts: Sequence[EventColumns]) -> EventColumns:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.of_events([])
        ids: list[str] = []
        published: list[tuple[int, float]] = []
        for part in parts:
            published.extend((len(ids) + k, p) for k, p in part.published)
            ids.extend(part.video_ids)

        def joined(name: str) -> list | None:
            if all(getattr(p, name) is None for p in parts):
                return None
            return [x for p in parts for x in (getattr(p, name) or [None] * len(p))]

        return cls(ids, np.concatenate([p.ts for p in parts]), np.concatenate([p.counts for p in parts]), published,
                   joined("user_ids"), joined("channel_ids"))

    def take(self, rows: Sequence[int] | np.ndarray) -> EventColumns:
        """The given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lst = rows.tolist()
        at = {r: k for k, r in enumerate(lst)}
        users, channels = self.user_ids, self.channel_ids
        return EventColumns([self.video_ids[r] for r in lst], self.ts[rows], self.counts[rows],
                            [(at[r], p) for r, p in self.published if r in at],
                            None if users is None else [users[r] for r in lst],
                            None if channels is None else [channels[r] for r in lst])


@dataclass
class VideoGroups:
    """The distinct videos of a batch of events, first seen first, and each event's position
    among them (``index``); ``order`` sorts the events by video, stably, and ``starts`` is where
    each video's run begins in that order."""

    videos: list[str]
    index: np.ndarray  # (n,) int64

    @classmethod
    def of(cls, video_ids: Sequence[str]) -> VideoGroups:
        index: dict[str, int] = {}
        at = index.setdefault
        vidx = np.fromiter((at(v, len(index)) for v in video_ids), dtype=np.int64, count=len(video_ids))
        return cls(list(index), vidx)

    def __post_init__(self) -> None:
        self.order = np.argsort(self.index, kind="stable")
        sv = self.index[self.order]
        self.starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]]) if len(sv) else np.zeros(0, np.int64)

    def reduce(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        """``ufunc`` over each video's events (e.g. ``np.maximum``): one value per video."""
        return ufunc.reduceat(values[self.order], self.starts) if len(self.starts) else values[:0]


try:  # setup.py builds it; without a C compiler every record takes the Python parser below
    from stream_detector import _fastparse
except ImportError:  # pragma: no cover - exercised by tests/test_fastparse.py's forced fallback
    _fastparse = None

_ST_PYTHON, _ST_KEY_MISMATCH = 1, 2  # the compiled parser's status bits (_fastparse.c)


@dataclass
class ParsedRecords:
    """Kafka records parsed (one fetch of one partition): the valid events as columns, in record
    order, what each came from, and the rejected records with their reasons."""

    rows: np.ndarray  # (n,) int64: the record index of each valid event
    columns: EventColumns
    offsets: np.ndarray  # (n,) int64: Kafka offset of each valid event
    key_mismatch: np.ndarray  # (n,) bool: record key set and not the event's video_id
    arrival: dict[str, int]  # newest Kafka timestamp (ms) per video among the valid events
    rejected: list[tuple[int, Rejection]]  # (record index, why), in record order

    def __len__(self) -> int:
        return len(self.rows)

    def without(self, drop: np.ndarray, records: Sequence) -> ParsedRecords:
        """The same without the valid events where ``drop`` is true (late ones): their records'
        arrival and keys no longer count."""
        keep = np.flatnonzero(~drop)
        rows = self.rows[keep]
        arrival: dict[str, int] = {}
        cols = self.columns.take(keep)
        for vid, r in zip(cols.video_ids, rows.tolist(), strict=True):
            t = records[r].timestamp
            if t > arrival.get(vid, 0):
                arrival[vid] = t
        return ParsedRecords(rows, cols, self.offsets[keep], self.key_mismatch[keep], arrival, self.rejected)


def parse_records(records: Sequence, *, now: float, max_bytes: int, max_count: int,
                  max_future_s: float) -> ParsedRecords:
    """Parse Kafka records (anything with ``value``, ``key``, ``offset`` and ``timestamp``):
    the same decisions as :func:`parse_event`, record by record. The compiled parser takes the
    records it is sure of (plain ASCII events in the contract's forms) and leaves every other
    one to :func:`parse_event`, which names what is wrong. A record the parser itself fails on
    is ``internal_error``: it never stops the batch."""
    n = len(records)
    if _fastparse is not None:
        status, ids, ts_b, counts_b, pub_b, off_b, _vidx, arrival, users, channels = _fastparse.parse_records(
            records, now, max_bytes, max_count, float(max_future_s))
        st = np.frombuffer(status, dtype=np.uint8)
        ts = np.frombuffer(ts_b, dtype=np.float64)
        counts = np.frombuffer(counts_b, dtype=np.int64).reshape(n, len(METRICS))
        pub = np.frombuffer(pub_b, dtype=np.float64)
        offsets = np.frombuffer(off_b, dtype=np.int64)
        python = np.flatnonzero(st & _ST_PYTHON).tolist()
    else:
        st = np.full(n, _ST_PYTHON, dtype=np.uint8)
        ids, arrival = [None] * n, {}
        ts, pub = np.zeros(n), np.full(n, np.nan)
        counts = np.zeros((n, len(METRICS)), dtype=np.int64)
        offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=n)
        python = range(n)
        users = channels = None
    rejected: list[tuple[int, Rejection]] = []
    if python:
        st, ts, counts, pub = st.copy(), ts.copy(), counts.copy(), pub.copy()  # writable
        for i in python:
            rec = records[i]
            try:
                event = parse_event(rec.value, now=now, max_bytes=max_bytes, max_count=max_count,
                                    max_future_s=max_future_s)
            except Exception as exc:  # noqa: BLE001 - one record must never stop its partition
                log.exception("parse failed on record %d of a batch", i)
                rejected.append((i, Rejection("internal_error", f"parse: {type(exc).__name__}: {exc}")))
                continue
            if type(event) is Rejection:
                rejected.append((i, event))
                continue
            vid = event.video_id
            ids[i], ts[i], counts[i] = vid, event.ts, event.counts
            if event.published_at is not None:
                pub[i] = event.published_at
            if event.user_id is not None:
                users = users if users is not None else [None] * n
                users[i] = event.user_id
            if event.channel_id is not None:
                channels = channels if channels is not None else [None] * n
                channels[i] = event.channel_id
            st[i] = _ST_KEY_MISMATCH if rec.key is not None and rec.key != vid.encode() else 0
            if rec.timestamp > arrival.get(vid, 0):
                arrival[vid] = rec.timestamp
    if rejected:
        rows = np.flatnonzero((st & _ST_PYTHON) == 0)
        keep = rows.tolist()
        video_ids = [ids[i] for i in keep]
        users = None if users is None else [users[i] for i in keep]
        channels = None if channels is None else [channels[i] for i in keep]
        ts, counts, pub, offsets, st = ts[rows], counts[rows], pub[rows], offsets[rows], st[rows]
    else:
        rows, video_ids = np.arange(n, dtype=np.int64), ids
    published = [(k, float(pub[k])) for k in np.flatnonzero(~np.isnan(pub)).tolist()]
    return ParsedRecords(rows, EventColumns(video_ids, ts, counts, published, users, channels), offsets,
                         (st & _ST_KEY_MISMATCH) > 0, arrival, rejected)


def good_id(value: object) -> bool:
    """An id of the contract (video_id, and event 1.1's user_id and channel_id): a non-empty
    string of at most 256 characters, not only whitespace, encodable as UTF-8."""
    if type(value) is not str or not value or len(value) > MAX_VIDEO_ID_CHARS or value.isspace():
        return False
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: valid JSON, no valid Redis key or Kafka header
            return False
    return True


def _typed(raw: bytes, now: float, max_bytes: int, max_count: int, max_future_s: float
           ) -> tuple[_WireEvent, float, float | None, tuple[int, int, int, int]] | None:
    """The typed decode, (wire, ts, published_at, counts), of a record that passes every check
    as it is; None sends it to the validator, which names what is wrong."""
    if type(raw) is not bytes or len(raw) > max_bytes:
        return None
    try:
        w = _decode_wire(raw)
    except _WIRE_ERRORS:
        return None
    if not good_id(w.video_id):
        return None
    if (w.user_id is not msgspec.UNSET and not good_id(w.user_id)) or (
            w.channel_id is not msgspec.UNSET and not good_id(w.channel_id)):
        return None
    c = (w.views if w.views > 0 else 0, w.likes if w.likes > 0 else 0,
         w.comments if w.comments > 0 else 0, w.shares if w.shares > 0 else 0)
    if max(c) > max_count:
        return None
    ts = w.ts if type(w.ts) is float else parse_event_time(w.ts)
    limit = now + max_future_s
    if ts is None or not MIN_TS <= ts <= limit:
        return None
    pub = w.published_at
    if pub is msgspec.UNSET:
        pub = None
    elif pub is not None:
        if type(pub) is not float:
            pub = parse_event_time(pub)
        if pub is None or not MIN_TS <= pub <= limit or pub > ts + max_future_s:
            return None
    if not raw.isascii():  # msgspec does not check the UTF-8 of values it skips
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if _given_twice(w, raw):
        return None
    return w, ts, pub, c


def validate_event(
    raw: bytes, *, now: float, max_bytes: int, max_count: int, max_future_s: float
) -> Event | Rejection:
    """The full validator: decode with ``json`` and check every rule, naming the reason of a
    rejection. Never raises on bad input."""
    if raw is None:
        return Rejection("not_json", "record has no value (tombstone)")
    if type(raw) is not bytes and type(raw) is not bytearray:
        return Rejection("not_json", f"record value is {type(raw).__name__}, not bytes")
    if len(raw) > max_bytes:
        return Rejection("oversized", f"{len(raw)} bytes > {max_bytes}")
    if raw[:3] == b"\xef\xbb\xbf" or raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]:
        return Rejection("not_json", "not UTF-8 JSON (byte-order mark or UTF-16/32)")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        return Rejection("not_json", str(exc)[:_DETAIL_MAX])
    except TypeError as exc:  # not bytes/str at all
        return Rejection("not_json", str(exc)[:_DETAIL_MAX])
    if type(obj) is not dict:
        return Rejection("not_object", f"JSON {type(obj).__name__}")
    dup = _duplicate_field(raw)
    if dup is not None:
        return Rejection("duplicate_field", f"{dup!r} appears more than once")
    get = obj.get

    vid = get("video_id")
    if vid is None:
        return Rejection("missing_video_id", "no video_id")
    if not good_id(vid):
        return Rejection("bad_video_id", f"video_id={_short(vid)}")

    # Fast path: all four metrics are plain ints (or absent) within range.
    c = (get("views", 0), get("likes", 0), get("comments", 0), get("shares", 0))
    if (
        type(c[0]) is int
        and type(c[1]) is int
        and type(c[2]) is int
        and type(c[3]) is int
        and min(c) >= 0
        and max(c) <= max_count
    ):
        counts = c
    else:
        checked = _check_counts(obj, max_count)
        if type(checked) is Rejection:
            return checked
        counts = checked

    ts_raw = get("ts")
    if type(ts_raw) is float or type(ts_raw) is int:
        try:
            ts = float(ts_raw)
        except OverflowError:  # an int beyond float range
            ts = None
    else:
        ts = parse_event_time(ts_raw)
    if ts is None or not ts >= MIN_TS:  # `not >=` also catches NaN
        return Rejection("bad_timestamp", f"ts={_short(ts_raw)}")
    limit = now + max_future_s
    if ts > limit:
        hint = " (milliseconds?)" if ts > 1e11 else ""
        if ts == math.inf:
            return Rejection("bad_timestamp", f"ts={_short(ts_raw)}")
        return Rejection("future_timestamp", f"ts={_short(ts_raw)} > now+{max_future_s:g}s{hint}")

    pub_raw = get("published_at")
    pub = None
    if pub_raw is not None:
        pub = parse_event_time(pub_raw)
        if pub is None or not MIN_TS <= pub <= limit:
            return Rejection("bad_published_at", f"published_at={_short(pub_raw)}")
        if pub > ts + max_future_s:
            return Rejection("bad_published_at", f"published_at={_short(pub_raw)} is after the event's ts")

    ids = {}
    for name in ("user_id", "channel_id"):  # event 1.1, optional; a null is absent
        value = get(name)
        if value is not None and not good_id(value):
            return Rejection(f"bad_{name}", f"{name}={_short(value)}")
        ids[name] = value
    cat = get("category")
    reg = get("region")
    return Event(
        vid,
        ts,
        counts,
        pub,
        cat if type(cat) is str else None,
        reg if type(reg) is str else None,
        ids["user_id"],
        ids["channel_id"],
    )


def dead_letter_headers(
    rejection: Rejection, topic: str, partition: int, offset: int, *, now: float | None = None
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record (its value is the ORIGINAL record bytes).

    ``dlq.ts`` is the dead-lettering time, ISO-8601 UTC with milliseconds.
    """
    t = time.time() if now is None else now
    ts = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        ("dlq.reason", rejection.reason.encode()),
        ("dlq.detail", rejection.detail[: _DETAIL_MAX * 2].encode("utf-8", "replace")),
        ("dlq.topic", topic.encode()),
        ("dlq.partition", str(int(partition)).encode()),
        ("dlq.offset", str(int(offset)).encode()),
        ("dlq.ts", ts.encode()),
    ]
