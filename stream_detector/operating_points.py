"""Operating points: the calibrated mapping publish threshold -> expected organic flag rate.

Measured in training on realistic organic engagement (real texture on), through the stream
process as deployed (``training/stream_eval.py``), and stored in the model artifact
(``operating_points``). An operator states the organic flag rate moderation can afford
(``DETECTOR_TARGET_FPR``); the worker derives the publish threshold from it, and every flag
carries the estimated organic rate at its score, so a consumer can rank or filter by it.
The offline CLI has its own curve: one decision per video over its whole series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TARGET_FPR = 0.02


class OperatingPointError(ValueError):
    """A target the curve cannot meet, or a malformed curve."""


@dataclass(frozen=True)
class OperatingCurve:
    """Thresholds ascending; ``fpr[i]`` = share of organic videos flagged at ``threshold[i]``
    (non-increasing), ``recall[i]`` the share of fakes."""

    threshold: tuple[float, ...]
    fpr: tuple[float, ...]
    recall: tuple[float, ...]

    @classmethod
    def from_points(cls, points: list[dict]) -> OperatingCurve:
        try:
            pts = sorted(((float(p["threshold"]), float(p["fpr"]), float(p.get("recall", float("nan"))))
                          for p in points), key=lambda x: x[0])
        except (KeyError, TypeError, ValueError) as exc:
            raise OperatingPointError(f"operating points are malformed: {exc}") from None
        if len(pts) < 2:
            raise OperatingPointError("an operating curve needs at least two points")
        t = np.array([p[0] for p in pts])
        f = np.minimum.accumulate(np.array([p[1] for p in pts]))  # monotone by construction
        if not (np.all((t > 0) & (t < 1)) and np.all((f >= 0) & (f <= 1))):
            raise OperatingPointError("operating points must have thresholds in (0, 1) and rates in [0, 1]")
        return cls(tuple(t.tolist()), tuple(f.tolist()), tuple(p[2] for p in pts))

    @classmethod
    def measure(cls, organic_stat: np.ndarray, fake_stat: np.ndarray, floor: float = 0.0,
                grid: int = 60) -> OperatingCurve:
        """From each video's decision statistic (flagged iff statistic >= threshold): the
        curve on a grid of thresholds between the organic quantiles that matter. ``floor``
        is the organic rate no threshold removes (the immediate path's own flags)."""
        organic_stat = np.asarray(organic_stat, dtype=np.float64)
        fake_stat = np.asarray(fake_stat, dtype=np.float64)
        qs = np.quantile(organic_stat, np.linspace(0.80, 0.999, grid))
        cands = np.unique(np.clip(np.concatenate([qs, np.linspace(0.05, 0.995, 40)]), 1e-4, 1 - 1e-4))
        pts = []
        for t in cands:
            pts.append({"threshold": float(t), "fpr": float(max((organic_stat >= t).mean(), floor)),
                        "recall": float((fake_stat >= t).mean()) if fake_stat.size else float("nan")})
        return cls.from_points(pts)

    def to_points(self) -> list[dict]:
        return [{"threshold": round(t, 6), "fpr": round(f, 6), "recall": round(r, 6) if r == r else None}
                for t, f, r in zip(self.threshold, self.fpr, self.recall, strict=True)]

    def threshold_for(self, target_fpr: float) -> float:
        """The lowest threshold whose organic flag rate is at most ``target_fpr``."""
        if not 0.0 < target_fpr < 1.0:
            raise OperatingPointError(f"target FPR {target_fpr} is not in (0, 1)")
        ok = [t for t, f in zip(self.threshold, self.fpr, strict=True) if f <= target_fpr]
        if not ok:
            raise OperatingPointError(
                f"no calibrated threshold reaches an organic flag rate of {target_fpr:g} "
                f"(lowest measured: {min(self.fpr):g} at {self.threshold[-1]:.4f})")
        return float(min(ok))

    def rate_at(self, score: float) -> float:
        """Estimated organic flag rate if the threshold were at ``score`` (interpolated)."""
        return float(np.interp(score, self.threshold, self.fpr))

    def recall_at(self, threshold: float) -> float:
        return float(np.interp(threshold, self.threshold, self.recall))
