"""Flags: the product's output contract (``schemas/flag.schema.json``, version 1.1).

What is published when is the decision process's job (``decision.py``); this module builds
the records. ``flag_id`` is a hash of the video and its anomalous hours (and, for a
withdrawal or a flag raised again after one, of that generation), so consumers can
de-duplicate and a replayed or restarted worker re-derives the same id.

Version 1.1 (additive over 1.0): ``status`` may be ``"withdrawn"`` (the evidence behind the
video's flag no longer holds: the record repeats the withdrawn windows), and every record
carries ``organic_rate``, the estimated share of organic videos the stream flags at a
publish threshold equal to this record's score (null when the model has no operating points).

Version 1.2 (additive over 1.1): window ``patterns`` may name what panels sell
(``PATTERN_ORDER``: ``drip_feed``, ``shift_hours``, ``scheduled_bursts``,
``coordinated_accounts``), and a record may carry ``accounts`` (who engaged in the flagged
hours, when events carry ``user_id``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from stream_detector.models import ModelArtifact
from stream_detector.patterns import PATTERNS
from stream_detector.scoring import FlaggedWindow
from stream_detector.series import hour_of

SCHEMA_VERSION = "1.3"
METRIC_ORDER = ("views", "likes", "comments", "shares")
# every name a window can carry: the hour detectors (patterns.PATTERNS), minute bursts on a
# schedule (decision.scheduled) and engagement carried by flagged accounts
PATTERN_ORDER = (*PATTERNS, "scheduled_bursts", "coordinated_accounts")
SCHEMA_PATH = Path(__file__).resolve().parent / "flag.schema.json"


def flag_id(video_id: str, windows, salt: str = "") -> str:
    """Deterministic id from the video and its anomalous hour intervals; ``salt`` separates a
    withdrawal and a flag raised again after one from the flags before them."""
    h = hashlib.sha256(video_id.encode())
    if salt:
        h.update(f"#{salt}".encode())
    for w in sorted(windows, key=lambda w_: w_.start_hour):
        h.update(f"|{w.start_hour}-{w.end_hour}".encode())
    return h.hexdigest()[:32]


def merge_windows(published: list[dict], current: list[FlaggedWindow]) -> list[FlaggedWindow]:
    """Union of the hours already published for a video (flag JSON windows) and the hours
    flagged now (see :func:`merge_windows_objects`)."""
    return merge_windows_objects([window_from_dict(w) for w in published], current)


def window_from_dict(w: dict) -> FlaggedWindow:
    return FlaggedWindow(hour_of(_epoch(w["start"])), hour_of(_epoch(w["end"])), float(w["score"]),
                         tuple(w["metrics"]), tuple(w["patterns"]))


def merge_windows_objects(published: list[FlaggedWindow], current: list[FlaggedWindow]) -> list[FlaggedWindow]:
    """Union of the hours already published for a video and the hours flagged now.

    Flags are cumulative: once an hour has been published as anomalous it stays in the
    video's flag (moderation acted on it), so a flag's hour set only grows, every new flag
    supersedes the previous one, and a flag id can never come back.
    """
    hours: dict[int, tuple[float, set[str], set[str]]] = {}
    for w in published:
        for h in range(w.start_hour, w.end_hour):
            hours[h] = (w.score, set(w.metrics), set(w.patterns))
    for w in current:  # what is known now about an hour replaces what was known then
        for h in range(w.start_hour, w.end_hour):
            hours[h] = (w.score, set(w.metrics), set(w.patterns))
    out: list[FlaggedWindow] = []
    for h in sorted(hours):
        score, metrics, patterns = hours[h]
        last = out[-1] if out else None
        if last is not None and last.end_hour == h:
            out[-1] = FlaggedWindow(
                last.start_hour, h + 1, max(last.score, score),
                _ordered(set(last.metrics) | metrics, METRIC_ORDER), _ordered(set(last.patterns) | patterns, PATTERN_ORDER),
            )
        else:
            out.append(FlaggedWindow(h, h + 1, score, _ordered(metrics, METRIC_ORDER), _ordered(patterns, PATTERN_ORDER)))
    return out


def _ordered(items: set[str], order: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(x for x in order if x in items)


def _epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def severity(score: float, threshold: float) -> str:
    """Distance above the threshold, in quarters of the remaining headroom."""
    headroom = max(1.0 - threshold, 1e-9)
    above = (score - threshold) / headroom
    if above >= 0.9:
        return "critical"
    if above >= 0.6:
        return "high"
    if above >= 0.3:
        return "medium"
    return "low"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_record(
    video_id: str,
    published,
    model: ModelArtifact,
    *,
    threshold: float,
    explanation: str,
    watermark: float,
    detected_at: float,
    accounts: dict | None = None,
    moderation: dict | None = None,
) -> dict:
    """The flag record of a decision (``decision.Published``): new, updated or withdrawn;
    ``accounts`` (1.2): who engaged in its hours, when events carry user_id."""
    rate = model.organic_rate(published.score)
    record = {
        "schema_version": SCHEMA_VERSION,
        "flag_id": published.flag_id,
        "video_id": video_id,
        "score": round(float(published.score), 4),
        "threshold": round(float(threshold), 4),
        "severity": published.severity,
        "status": published.status,
        "organic_rate": None if rate is None else round(float(rate), 5),
        "windows": [w.to_dict() for w in published.windows],
        "explanation": explanation[:500] or "no explanation",
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "watermark": iso(watermark),
        "detected_at": iso(detected_at),
    }
    if accounts is not None:
        record["accounts"] = accounts
    if moderation is not None:
        record["moderation"] = moderation
    return record


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())
