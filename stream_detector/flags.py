"""Flags: the product's output contract (``schemas/flag.schema.json``, version 1.0).

A flag is published when a video crosses the threshold and again only when its anomalous
hours change; ``flag_id`` is a hash of the video and those hours, so consumers can
de-duplicate and a replayed or restarted worker re-derives the same id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from stream_detector.models import ModelArtifact
from stream_detector.scoring import VideoScore

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).resolve().parent / "flag.schema.json"


def flag_id(video_id: str, windows) -> str:
    """Deterministic id from the video and its anomalous hour intervals (nothing else)."""
    h = hashlib.sha256(video_id.encode())
    for w in sorted(windows, key=lambda w_: w_.start_hour):
        h.update(f"|{w.start_hour}-{w.end_hour}".encode())
    return h.hexdigest()[:32]


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


def build_flag(vs: VideoScore, model: ModelArtifact, *, watermark: float, detected_at: float, status: str = "new") -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "flag_id": flag_id(vs.video_id, vs.windows),
        "video_id": vs.video_id,
        "score": round(float(vs.score), 4),
        "threshold": round(float(vs.threshold), 4),
        "severity": severity(vs.score, vs.threshold),
        "status": status,
        "windows": [w.to_dict() for w in vs.windows],
        "explanation": vs.explanation[:500],
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "watermark": iso(watermark),
        "detected_at": iso(detected_at),
    }


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())
