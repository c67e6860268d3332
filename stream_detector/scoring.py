"""The scoring core: hourly windows -> calibrated score, flagged hours, patterns, explanation.

One implementation serves the offline CLI and the stream worker (parity-tested), batched
across videos: features, one ONNX call, the pattern detectors, the fitted combiner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stream_detector.features import build_features, normalize
from stream_detector.models import ModelArtifact
from stream_detector.patterns import PATTERNS, detect
from stream_detector.series import METRICS, HourlySeries, hour_start_iso


@dataclass(frozen=True)
class FlaggedWindow:
    """A run of consecutive anomalous hours [start_hour, end_hour) (epoch hours, UTC)."""

    start_hour: int
    end_hour: int
    score: float
    metrics: tuple[str, ...]
    patterns: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "start": hour_start_iso(self.start_hour),
            "end": hour_start_iso(self.end_hour),
            "score": round(self.score, 4),
            "metrics": list(self.metrics),
            "patterns": list(self.patterns),
        }


@dataclass
class VideoScore:
    video_id: str
    score: float
    flagged: bool
    threshold: float
    end_hour: int
    windows: list[FlaggedWindow]
    explanation: str
    hour_probability: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """The offline CLI's output line (DESIGN.md contract)."""
        return {
            "video_id": self.video_id,
            "score": round(self.score, 4),
            "flagged": self.flagged,
            "windows": [w.to_dict() for w in self.windows],
        }


class Scorer:
    """Scores batches of hourly windows with one model artifact."""

    def __init__(self, model: ModelArtifact) -> None:
        self.model = model
        self.window = model.window_hours

    def score(self, series: Sequence[HourlySeries]) -> list[VideoScore]:
        """Score each series on its trailing window (longer series: use :meth:`score_full`)."""
        if not series:
            return []
        w = self.window
        chunks = [s.last(w) for s in series]
        counts = np.stack([c.counts for c in chunks])
        starts = np.array([c.start_hour for c in chunks], dtype=np.int64)
        pubs = np.array(
            [-1 if c.published_hour is None else c.published_hour for c in chunks], dtype=np.int64
        )
        hour_p, evidence, mask = self.hour_probabilities(counts, starts, pubs)
        results = []
        for i, chunk in enumerate(chunks):
            results.append(self._summarise(chunk, hour_p[i], evidence, i, mask[i]))
        return results

    def hour_probabilities(
        self, counts: np.ndarray, starts: np.ndarray, pubs: np.ndarray
    ) -> tuple[np.ndarray, object, np.ndarray]:
        """(N, 4, W) counts -> per-hour fake probability (N, W), pattern evidence, mask."""
        x, mask = build_features(counts, starts, pubs)
        model_score = self.model.run(normalize(x, mask, self.model.normalization))
        evidence = detect(counts, starts, mask, pubs)
        p = self.model.combiner.hour_probability(model_score, evidence.evidence) * mask
        return p, evidence, mask

    def score_full(self, series: Sequence[HourlySeries]) -> list[VideoScore]:
        """Score whole series of any length in consecutive windows ending at the last hour."""
        w = self.window
        pieces: list[HourlySeries] = []
        owner: list[int] = []
        for i, s in enumerate(series):
            end = s.hours
            while True:
                begin = max(0, end - w)
                piece = HourlySeries(
                    s.video_id, s.start_hour + begin, s.counts[:, begin:end], s.published_hour, s.meta
                )
                pieces.append(piece)
                owner.append(i)
                if begin == 0:
                    break
                end = begin
        scored = self.score(pieces)
        merged: dict[int, VideoScore] = {}
        for i, vs in zip(owner, scored, strict=True):
            prev = merged.get(i)
            if prev is None:
                merged[i] = vs
                continue
            best = prev if prev.score >= vs.score else vs
            windows = sorted(prev.windows + vs.windows, key=lambda w_: w_.start_hour)
            merged[i] = VideoScore(
                best.video_id,
                max(prev.score, vs.score),
                prev.flagged or vs.flagged,
                best.threshold,
                max(prev.end_hour, vs.end_hour),
                windows,
                best.explanation,
                best.hour_probability,
            )
        return [merged[i] for i in range(len(series))]

    def _summarise(
        self, chunk: HourlySeries, hour_p: np.ndarray, evidence, i: int, mask: np.ndarray
    ) -> VideoScore:
        threshold = self.model.threshold
        score = float(hour_p.max()) if hour_p.size else 0.0
        flagged = score >= threshold
        windows: list[FlaggedWindow] = []
        if flagged:
            hot = hour_p >= min(self.model.combiner.hour_threshold, threshold)
            hot |= hour_p >= threshold
            involved = evidence.hour_metrics()[i]
            ev = evidence.evidence[i]
            t, w = 0, hot.shape[0]
            while t < w:
                if not hot[t]:
                    t += 1
                    continue
                u = t
                while u < w and hot[u]:
                    u += 1
                windows.append(self._window(chunk, t, u, hour_p, ev, involved, evidence.baseline[i]))
                t = u
        explanation = self._explain(chunk, windows, flagged, score, threshold, evidence.baseline[i])
        return VideoScore(
            chunk.video_id, score, flagged, threshold, chunk.end_hour, windows, explanation, hour_p
        )

    def _window(self, chunk, t, u, hour_p, ev, involved, baseline) -> FlaggedWindow:
        seg = slice(t, u)
        strength = ev[:, seg].max(axis=1)
        top = int(strength.argmax())
        # the dominant pattern, plus any other that is about as strong (a video can be hit twice)
        names = [PATTERNS[p] for p in range(len(PATTERNS))
                 if p == top or (strength[p] >= 0.9 and strength[p] >= 0.95 * strength[top])]
        mets = [METRICS[m] for m in np.flatnonzero(involved[:, seg].any(axis=1))]
        if not mets:
            ratio = (chunk.counts[:, seg].sum(axis=1) + 1) / (baseline[:, seg].sum(axis=1) + 1)
            mets = [METRICS[int(ratio.argmax())]]
        return FlaggedWindow(
            chunk.start_hour + t, chunk.start_hour + u, float(hour_p[seg].max()), tuple(mets), tuple(names)
        )

    @staticmethod
    def _explain(chunk, windows, flagged, score, threshold, baseline) -> str:
        if not flagged:
            return f"organic-looking engagement (score {score:.2f} < threshold {threshold:.2f})"
        top = max(windows, key=lambda w_: w_.score)
        t0, t1 = top.start_hour - chunk.start_hour, top.end_hour - chunk.start_hour
        parts = []
        for name in top.metrics:
            m = METRICS.index(name)
            seen = chunk.counts[m, t0:t1].sum()
            usual = baseline[m, t0:t1].sum()
            factor = (seen + 1.0) / (usual + 1.0)
            parts.append(f"{name} {seen:,.0f} vs usual ~{usual:,.0f} ({factor:.1f}x)")
        hours = t1 - t0
        span = f"{hour_start_iso(top.start_hour)} for {hours} h"
        extra = f"; {len(windows) - 1} more window(s)" if len(windows) > 1 else ""
        return f"{' / '.join(top.patterns)} at {span}: {', '.join(parts)}; score {score:.2f}{extra}"
