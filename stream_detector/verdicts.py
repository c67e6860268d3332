"""The verdict contract (1.0): what moderators decided about a flag, on its own topic.

A verdict is a JSON object (``verdict.schema.json``)::

    {"flag_id": str, "video_id" | "user_id": str, "verdict": "confirmed" | "false_positive" | "unsure",
     "scope": "episode" | "video" | "channel" | "account", "channel_id"?: str,
     "until"?: time, "reviewer"?: str, "reason"?: str, "ts": time}

``ts`` and ``until`` are wall clock (UTC), not event time: ISO-8601 or epoch seconds. Ids follow
the event contract (1–256 characters, UTF-8, not only whitespace). The subject is the video
(``video_id``) or the account (``user_id``), exactly one; ``scope`` says how far a verdict
reaches: ``episode`` the flagged episode ``flag_id`` belongs to, ``video`` / ``account`` the
subject itself, ``channel`` every video of ``channel_id`` (the events' channel, event 1.1).
``account`` needs ``user_id``; ``episode`` / ``video`` / ``channel`` on a video need
``video_id`` (a ``user_id`` with ``episode`` is an account flag's episode). ``until`` bounds an
allowlist (``video`` / ``channel`` / ``account`` scopes); without it the allowlist holds until a
later verdict on the same subject and scope says otherwise.

``parse_verdict`` never raises on bad input: it returns a ``Verdict`` or a ``Rejection`` whose
reason is one of ``REASONS`` (the ``dlq.reason`` header of the dead-lettered copy).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from stream_detector.events import MIN_TS, Rejection, good_id, parse_event_time

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("verdict.schema.json")

VERDICTS = ("confirmed", "false_positive", "unsure")
SCOPES = ("episode", "video", "channel", "account")
MAX_VERDICT_BYTES = 16 * 1024
MAX_TEXT_CHARS = 1000  # reviewer, reason

REASONS: dict[str, str] = {
    "oversized": f"verdict larger than {MAX_VERDICT_BYTES} bytes",
    "not_json": "value is not valid UTF-8 JSON",
    "not_object": "JSON value is not an object",
    "bad_verdict": f"verdict missing or not one of {', '.join(VERDICTS)}",
    "bad_scope": f"scope missing or not one of {', '.join(SCOPES)}",
    "missing_subject": "neither video_id nor user_id (or both), or the scope's subject is missing "
    "(account needs user_id; video and channel need video_id; channel needs channel_id)",
    "bad_id": "flag_id, video_id, user_id or channel_id is not a non-empty string of at most 256 "
    "characters, not only whitespace",
    "missing_flag_id": "scope episode names no flag_id",
    "bad_timestamp": "ts missing or unparsable, or until unparsable (both wall-clock UTC)",
    "bad_text": f"reviewer or reason is not a string of at most {MAX_TEXT_CHARS} characters",
    "unknown_flag": "the flag_id was not seen by the worker within DETECTOR_VERDICT_PENDING_SECONDS "
    "(assigned by the worker)",
}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    scope: str
    ts: float
    flag_id: str | None = None
    video_id: str | None = None
    user_id: str | None = None
    channel_id: str | None = None
    until: float | None = None
    reviewer: str | None = None
    reason: str | None = None
    key: str = ""  # where it came from ("partition:offset"): applying it twice is recognised

    @property
    def subject(self) -> str:
        """What an allowlist of this verdict's scope holds."""
        if self.scope == "channel":
            return self.channel_id or ""
        return (self.user_id if self.scope == "account" or self.video_id is None else self.video_id) or ""

    def holds(self, now: float) -> bool:
        return self.until is None or now < self.until

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "key"}


def parse_verdict(raw: bytes | None, key: str = "") -> Verdict | Rejection:
    """One verdict record's value, checked against the contract."""
    if raw is None:
        return Rejection("not_json", "record value is null")
    if len(raw) > MAX_VERDICT_BYTES:
        return Rejection("oversized", f"{len(raw)} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return Rejection("not_json", str(exc)[:200])
    if not isinstance(doc, dict):
        return Rejection("not_object", type(doc).__name__)
    verdict, scope = doc.get("verdict"), doc.get("scope")
    if verdict not in VERDICTS:
        return Rejection("bad_verdict", repr(verdict)[:100])
    if scope not in SCOPES:
        return Rejection("bad_scope", repr(scope)[:100])
    ids = {}
    for name in ("flag_id", "video_id", "user_id", "channel_id"):
        value = doc.get(name)
        if value is None:
            continue
        if not good_id(value):
            return Rejection("bad_id", f"{name}={repr(value)[:100]}")
        ids[name] = value
    video, user = ids.get("video_id"), ids.get("user_id")
    if (video is None) == (user is None):
        return Rejection("missing_subject", "exactly one of video_id and user_id is needed")
    if scope == "account" and user is None:
        return Rejection("missing_subject", "scope account needs user_id")
    if scope in ("video", "channel") and video is None:
        return Rejection("missing_subject", f"scope {scope} needs video_id")
    if scope == "channel" and "channel_id" not in ids:
        return Rejection("missing_subject", "scope channel needs channel_id")
    if scope == "episode" and "flag_id" not in ids:
        return Rejection("missing_flag_id", "scope episode names the flag (flag_id)")
    ts = parse_event_time(doc.get("ts"))
    if ts is None or ts < MIN_TS:
        return Rejection("bad_timestamp", f"ts={repr(doc.get('ts'))[:100]}")
    until = None
    if doc.get("until") is not None:
        until = parse_event_time(doc["until"])
        if until is None or until < MIN_TS:
            return Rejection("bad_timestamp", f"until={repr(doc.get('until'))[:100]}")
    texts = {}
    for name in ("reviewer", "reason"):
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
            return Rejection("bad_text", f"{name} is {type(value).__name__} of length {len(str(value))}")
        texts[name] = value
    return Verdict(verdict=verdict, scope=scope, ts=ts, until=until, key=key, **ids, **texts)
