"""Moderators' verdicts as labels: precision of the flags they judged, and the publish
threshold that real labels support (``detector-train verdicts``).

Inputs are dumps of two topics, one JSON object per line: the verdicts topic (verdict 1.0)
and the flags topic (flag records). A verdict labels the flag it names and, when that flag
belongs to an episode (same video, records up to its withdrawal), the whole episode; the
label is the episode's *highest* published score, the score that decided it was flagged.

What real labels can and cannot say: a flag exists only at or above the publish threshold
it was published with, so labels re-estimate the operating point **upwards** only (the
highest-recall threshold whose judged precision reaches the target); how many fakes go
unflagged below it, no verdict can tell (the simulator's evaluation still answers that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_detector.verdicts import Verdict, parse_verdict


@dataclass
class LabelledFlags:
    """One row per judged episode: its highest score and whether moderation confirmed it."""

    flag_ids: list[str]
    scores: np.ndarray
    confirmed: np.ndarray  # bool
    threshold: float  # the publish threshold the flags were published with (their records say)
    unmatched: int  # verdicts whose flag_id is not in the flags dump
    invalid: int = 0  # records of the dump that are no verdict (the worker dead-lettered them too)

    def __len__(self) -> int:
        return len(self.flag_ids)


def _lines(path: str | Path) -> list[dict]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
    return out


def load_labels(verdicts_path: str | Path, flags_path: str | Path) -> LabelledFlags:
    """Join the verdicts with the flag records they judge (later verdicts on a flag win)."""
    flags = _lines(flags_path)
    episode_of: dict[str, int] = {}
    episodes: list[dict] = []
    open_episode: dict[str, int] = {}
    for rec in flags:
        vid = rec["video_id"]
        if rec["status"] == "new" or vid not in open_episode:
            open_episode[vid] = len(episodes)
            episodes.append({"video_id": vid, "flag_id": rec["flag_id"], "score": 0.0,
                             "threshold": rec.get("threshold")})
        k = open_episode[vid]
        episode_of[rec["flag_id"]] = k
        if rec["status"] != "withdrawn":
            episodes[k]["score"] = max(episodes[k]["score"], float(rec["score"]))
        else:
            del open_episode[vid]
    labels: dict[int, bool] = {}
    unmatched = invalid = 0
    for doc in _lines(verdicts_path):
        v = parse_verdict(json.dumps(doc).encode())
        if not isinstance(v, Verdict):
            invalid += 1
            continue
        if v.verdict == "unsure" or v.flag_id is None or v.video_id is None:
            continue
        k = episode_of.get(v.flag_id)
        if k is None:
            unmatched += 1
            continue
        labels[k] = v.verdict == "confirmed"
    ks = sorted(labels)
    thresholds = [episodes[k]["threshold"] for k in ks if episodes[k]["threshold"] is not None]
    return LabelledFlags([episodes[k]["flag_id"] for k in ks],
                         np.array([episodes[k]["score"] for k in ks], dtype=np.float64),
                         np.array([labels[k] for k in ks], dtype=bool),
                         float(min(thresholds)) if thresholds else float("nan"), unmatched, invalid)


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    precision: float
    kept_confirmed: float  # share of the confirmed flags still published at this threshold
    flags: int


def precision_at(labels: LabelledFlags, threshold: float) -> OperatingPoint:
    kept = labels.scores >= threshold
    n = int(kept.sum())
    tp = int((kept & labels.confirmed).sum())
    total_tp = max(int(labels.confirmed.sum()), 1)
    return OperatingPoint(threshold, tp / n if n else float("nan"), tp / total_tp, n)


def reestimate(labels: LabelledFlags, target_precision: float) -> OperatingPoint:
    """The lowest threshold (never below the published one) whose judged precision reaches
    ``target_precision``: the most confirmed flags kept at that precision."""
    base = labels.threshold if np.isfinite(labels.threshold) else 0.0
    for t in np.unique(np.concatenate([[base], labels.scores])):
        if t < base:
            continue
        op = precision_at(labels, float(t))
        if op.flags and op.precision >= target_precision:
            return op
    return precision_at(labels, float(np.nextafter(labels.scores.max(), 2.0)) if len(labels) else 1.0)


def report(labels: LabelledFlags, target_precision: float) -> dict:
    before = precision_at(labels, labels.threshold)
    after = reestimate(labels, target_precision)
    return {
        "labelled_flags": len(labels),
        "confirmed": int(labels.confirmed.sum()),
        "false_positive": int((~labels.confirmed).sum()),
        "unmatched_verdicts": labels.unmatched,
        "invalid_records": labels.invalid,
        "target_precision": target_precision,
        "before": {"threshold": round(before.threshold, 4), "precision": round(before.precision, 4),
                   "flags": before.flags},
        "after": {"threshold": round(after.threshold, 4), "precision": round(after.precision, 4),
                  "flags": after.flags, "confirmed_kept": round(after.kept_confirmed, 4)},
        "note": "labels can only raise the publish threshold: no verdict exists below it",
    }
