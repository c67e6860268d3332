"""Operating points: the calibrated mapping publish threshold -> expected organic flag rate.

Measured in training on realistic organic engagement (real texture on), through the stream
process as deployed (``training/stream_eval.py``), and stored in the model artifact
(``operating_points``). An operator states the organic flag rate moderation can afford
(``DETECTOR_TARGET_FPR``); the worker derives the publish threshold from it, and every flag
carries the estimated organic rate at its score, so a consumer can rank or filter by it.
The offline CLI has its own curve: one decision per video over its whole series.

A threshold is chosen on the *upper* 95 % confidence bound of the measured organic rate
(Wilson, one-sided), not on the point estimate: the curve is measured on a few hundred
organic videos, and a real audience differs from the validation week, so the worker errs
on the side of fewer false flags.
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
    fpr_upper: tuple[float, ...] = ()  # one-sided 95 % upper bound of fpr (empty: fpr itself)

    def __post_init__(self) -> None:
        if not self.fpr_upper:
            object.__setattr__(self, "fpr_upper", self.fpr)

    @classmethod
    def from_points(cls, points: list[dict]) -> OperatingCurve:
        try:
            pts = sorted(((float(p["threshold"]), float(p["fpr"]), float(p.get("recall") if p.get("recall") is not None
                                                                          else float("nan")),
                           float(p.get("fpr_upper", p["fpr"]))) for p in points), key=lambda x: x[0])
        except (KeyError, TypeError, ValueError) as exc:
            raise OperatingPointError(f"operating points are malformed: {exc}") from None
        if len(pts) < 2:
            raise OperatingPointError("an operating curve needs at least two points")
        t = np.array([p[0] for p in pts])
        f = np.minimum.accumulate(np.array([p[1] for p in pts]))  # monotone by construction
        if not (np.all((t > 0) & (t < 1)) and np.all((f >= 0) & (f <= 1))):
            raise OperatingPointError("operating points must have thresholds in (0, 1) and rates in [0, 1]")
        up = np.maximum(np.minimum.accumulate(np.array([p[3] for p in pts])), f)
        return cls(tuple(t.tolist()), tuple(f.tolist()), tuple(p[2] for p in pts), tuple(up.tolist()))

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
        n = max(organic_stat.size, 1)
        for t in cands:
            rate = float(max((organic_stat >= t).mean(), floor))
            pts.append({"threshold": float(t), "fpr": rate, "fpr_upper": wilson_upper(rate, n),
                        "recall": float((fake_stat >= t).mean()) if fake_stat.size else float("nan")})
        return cls.from_points(pts)

    def to_points(self) -> list[dict]:
        return [{"threshold": round(t, 6), "fpr": round(f, 6), "fpr_upper": round(u, 6),
                 "recall": round(r, 6) if r == r else None}
                for t, f, r, u in zip(self.threshold, self.fpr, self.recall, self.fpr_upper, strict=True)]

    def threshold_for(self, target_fpr: float) -> float:
        """The lowest threshold whose organic flag rate is at most ``target_fpr`` with 95 %
        confidence (its upper bound; see the module docstring)."""
        if not 0.0 < target_fpr < 1.0:
            raise OperatingPointError(f"target FPR {target_fpr} is not in (0, 1)")
        ok = [t for t, f in zip(self.threshold, self.fpr_upper, strict=True) if f <= target_fpr]
        if not ok:
            raise OperatingPointError(
                f"no calibrated threshold reaches an organic flag rate of {target_fpr:g} with 95 % confidence "
                f"(lowest upper bound: {min(self.fpr_upper):g} at {self.threshold[-1]:.4f})")
        return float(min(ok))

    def rate_at(self, score: float) -> float:
        """Estimated organic flag rate if the threshold were at ``score`` (interpolated)."""
        return float(np.interp(score, self.threshold, self.fpr))

    def recall_at(self, threshold: float) -> float:
        return float(np.interp(threshold, self.threshold, self.recall))


def wilson_upper(rate: float, n: int, z: float = 1.645) -> float:
    """One-sided upper confidence bound of a proportion (Wilson score interval)."""
    if n <= 0:
        return 1.0
    denom = 1.0 + z * z / n
    centre = rate + z * z / (2 * n)
    spread = z * np.sqrt(rate * (1.0 - rate) / n + z * z / (4 * n * n))
    return float(min(1.0, (centre + spread) / denom))
