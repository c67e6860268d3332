"""The canary check every model passes before it serves (worker) or is pushed (CLI).

Two batches, scored with the real scoring core (features, ONNX, patterns, combiner):

* the **canary set** (``canary.json``, shipped with the package): 200 simulated videos
  with known labels, fakes of all five patterns and organic hard negatives, generated once
  by ``detector-train canary`` from a seed disjoint from training. A fixed file instead of
  importing the simulator: the worker image has no ``training`` package, and a model's
  ``canary.min_auc`` (written by the training pipeline) stays comparable across versions;
* an **edge batch** built here: an empty window, a video published an hour ago, absurd
  counts (10 M views an hour, likes > views), one 10 M-like minute spike, a video
  published after its window.

A model is refused (``ModelError`` with the reason) when its raw output has the wrong
shape, contains NaN/inf, is constant (an export that lost its weights), when any final
score is not a finite number in [0, 1], or when its canary quality is below the thresholds
in its own metadata (``canary``: ``min_auc``, optional ``min_recall`` / ``max_fpr`` at the
model's threshold; without them the floor ``DEFAULT_MIN_AUC`` applies).
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from stream_detector.features import build_features, normalize
from stream_detector.models import ModelArtifact, ModelError
from stream_detector.scoring import Scorer
from stream_detector.series import HourlySeries

CANARY_PATH = Path(__file__).resolve().parent / "canary.json"
DEFAULT_MIN_AUC = 0.85


@dataclass(frozen=True)
class CanarySet:
    series: tuple[HourlySeries, ...]
    label: np.ndarray

    @property
    def fakes(self) -> int:
        return int(self.label.sum())


@dataclass(frozen=True)
class CanaryReport:
    videos: int
    fakes: int
    auc: float
    recall: float
    fpr: float
    min_auc: float
    min_recall: float | None
    max_fpr: float | None
    seconds: float
    stream_fpr: float | None = None  # organic canary videos ever flagged over a coarse stream replay
    stream_recall: float | None = None
    max_stream_fpr: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@lru_cache(maxsize=1)
def load_canary(path: str = str(CANARY_PATH)) -> CanarySet:
    doc = json.loads(Path(path).read_text())
    c = doc["counts"]
    if c.get("encoding") != "zlib+base64":
        raise ValueError(f"{path}: unknown counts encoding {c.get('encoding')!r}")
    counts = np.frombuffer(zlib.decompress(base64.b64decode(c["data"])), dtype=c["dtype"]).reshape(c["shape"])
    start = int(doc["start_hour"])
    series = tuple(
        HourlySeries(vid, start, counts[i].astype(np.float64), int(doc["published_hour"][i]))
        for i, vid in enumerate(doc["video_ids"])
    )
    return CanarySet(series, np.asarray(doc["label"], dtype=np.int64))


def edge_batch(window: int, end_hour: int) -> list[HourlySeries]:
    """Inputs a serving model meets in the stream but rarely in training."""
    start = end_hour - window + 1
    zeros = np.zeros((4, window))
    fresh = zeros.copy()
    fresh[:, -1] = (40, 3, 1, 0)
    absurd = np.full((4, window), 10_000_000.0)
    absurd[1] *= 2  # likes > views
    spike = zeros.copy()
    spike[:] = np.array([100.0, 5.0, 1.0, 1.0])[:, None]
    spike[1, window // 2] = 10_000_000
    return [
        HourlySeries("edge-empty", start, zeros, None),
        HourlySeries("edge-fresh", start, fresh, end_hour),
        HourlySeries("edge-absurd", start, absurd, start - 1000),
        HourlySeries("edge-spike", start, spike, start),
        HourlySeries("edge-future-publication", start, fresh, end_hour + 48),
    ]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties), numpy only."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _thresholds(model: ModelArtifact) -> tuple[float, float | None, float | None, float | None]:
    raw = model.metadata.get("canary")
    if not raw:
        return DEFAULT_MIN_AUC, None, None, None
    try:
        spec = json.loads(raw)
        min_auc = float(spec.get("min_auc", DEFAULT_MIN_AUC))
        min_recall = float(spec["min_recall"]) if "min_recall" in spec else None
        max_fpr = float(spec["max_fpr"]) if "max_fpr" in spec else None
        max_stream_fpr = float(spec["max_stream_fpr"]) if "max_stream_fpr" in spec else None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"model metadata 'canary' is malformed: {exc}") from None
    return min_auc, min_recall, max_fpr, max_stream_fpr


STREAM_CUTS_HOURS = (36, 72, 120, 168)


def stream_statistic(scorer: Scorer, series: list[HourlySeries], decision) -> np.ndarray:
    """Per video, the decision statistic of the stream process sampled at the end of each day
    (closed windows growing through the week): a coarse, fast stand-in for the full replay
    of ``training/stream_eval.py``, enough to refuse a model that floods organic videos."""
    best = np.zeros(len(series))
    for cut in STREAM_CUTS_HOURS:
        parts = [HourlySeries(s.video_id, s.start_hour, s.counts[:, :cut], s.published_hour) for s in series]
        for i, vs in enumerate(scorer.score(parts)):
            best[i] = max(best[i], decision.statistic(vs))
    return best


def _raw_output(model: ModelArtifact, series: list[HourlySeries]) -> np.ndarray:
    w = model.window_hours
    chunks = [s.last(w) for s in series]
    counts = np.stack([c.counts for c in chunks])
    starts = np.array([c.start_hour for c in chunks], dtype=np.int64)
    pubs = np.array([-1 if c.published_hour is None else c.published_hour for c in chunks], dtype=np.int64)
    x, mask = build_features(counts, starts, pubs)
    x = normalize(x, mask, model.normalization)
    try:
        single = model.run(x[:1])
        out = model.run(x)
    except Exception as exc:  # onnxruntime raises several private exception types
        raise ModelError(f"model fails to run on the canary batch: {str(exc).splitlines()[0][:200]}") from None
    for got, n in ((single, 1), (out, len(series))):
        if got.shape != (n, w):
            raise ModelError(f"model output shape {list(got.shape)} does not match [batch, {w}] (batch of {n})")
    return out


def check_model(model: ModelArtifact, *, window_hours: int | None = None, canary: CanarySet | None = None) -> CanaryReport:
    """Raise ``ModelError`` with the reason when ``model`` must not serve; else the report."""
    t0 = time.perf_counter()
    if window_hours is not None and model.window_hours != window_hours:
        raise ModelError(
            f"model window is {model.window_hours} h but this deployment keeps {window_hours} h windows "
            f"(DETECTOR_WINDOW_HOURS)"
        )
    canary = canary or load_canary()
    end_hour = canary.series[0].end_hour
    batch = [*canary.series, *edge_batch(model.window_hours, end_hour)]
    raw = _raw_output(model, batch)
    bad = ~np.isfinite(raw)
    if bad.any():
        rows = sorted({batch[i].video_id for i in np.flatnonzero(bad.any(axis=1))})
        raise ModelError(
            f"model output has NaN/inf on the canary batch ({int(bad.sum())} of {raw.size} values; "
            f"videos {', '.join(rows[:3])}{' ...' if len(rows) > 3 else ''})"
        )
    spread = float(raw.max() - raw.min())
    if spread < 1e-6:
        raise ModelError(f"model output is constant ({float(raw.flat[0]):.4g}) on the canary batch: it carries no signal")
    scored = Scorer(model).score(batch)
    scores = np.array([vs.score for vs in scored])
    out = ~np.isfinite(scores) | (scores < 0.0) | (scores > 1.0)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ModelError(f"score {scores[i]!r} of canary video {batch[i].video_id} is not a number in [0, 1]")
    n = len(canary.series)
    s, y = scores[:n], canary.label.astype(bool)
    flagged = s >= model.threshold
    a = auc(s, y)
    recall = float((flagged & y).sum() / max(y.sum(), 1))
    fpr = float((flagged & ~y).sum() / max((~y).sum(), 1))
    min_auc, min_recall, max_fpr, max_stream_fpr = _thresholds(model)
    size = f"{n} videos: {int(y.sum())} fake, {int((~y).sum())} organic"
    from stream_detector.decision import StreamDecision, Thresholds

    publish = model.publish_threshold()
    stat = stream_statistic(Scorer(model), list(canary.series), StreamDecision(Thresholds.from_artifact(publish, model.decision, model.combiner.hour_threshold)))
    stream_flagged = stat >= publish
    stream_fpr = float((stream_flagged & ~y).sum() / max((~y).sum(), 1))
    stream_recall = float((stream_flagged & y).sum() / max(y.sum(), 1))
    if not a >= min_auc:
        raise ModelError(f"canary AUC {a:.4f} is below the model's canary.min_auc {min_auc:.4f} ({size})")
    if min_recall is not None and recall < min_recall:
        raise ModelError(f"canary recall {recall:.3f} is below the model's canary.min_recall {min_recall:.3f} ({size})")
    if max_fpr is not None and fpr > max_fpr:
        raise ModelError(f"canary false-positive rate {fpr:.3f} is above the model's canary.max_fpr {max_fpr:.3f} ({size})")
    if max_stream_fpr is not None and stream_fpr > max_stream_fpr:
        raise ModelError(f"canary organic videos ever flagged in the stream {stream_fpr:.3f} is above the model's "
                         f"canary.max_stream_fpr {max_stream_fpr:.3f} at publish threshold {publish:.4f} ({size})")
    return CanaryReport(n, int(y.sum()), a, recall, fpr, min_auc, min_recall, max_fpr, time.perf_counter() - t0,
                        stream_fpr, stream_recall, max_stream_fpr)


def validate_bytes(data: bytes, *, source: str = "<bytes>", window_hours: int | None = None) -> tuple[ModelArtifact, CanaryReport]:
    """The whole gate: contract (``ModelArtifact.from_bytes``) then the canary check; the
    report's ``seconds`` covers both."""
    t0 = time.perf_counter()
    model = ModelArtifact.from_bytes(data, source)
    report = check_model(model, window_hours=window_hours)
    return model, replace(report, seconds=time.perf_counter() - t0)
