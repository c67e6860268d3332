"""Calibration on the validation split: the combiner, the video threshold, the hour threshold.

The combiner is a logistic regression on observed validation hours, so its output is a
probability that an hour is fake. The video score is the maximum hour probability; the
video threshold maximises F1 subject to a false-positive-rate budget on validation.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from stream_detector.models import Combiner

FPR_BUDGET = 0.05


def fit_combiner(model_score: np.ndarray, evidence: np.ndarray, hour_labels: np.ndarray, mask: np.ndarray) -> Combiner:
    """model_score (N, W), evidence (N, P, W), labels (N, W) -> fitted Combiner (hour threshold 0.5)."""
    sel = mask > 0
    feats = np.concatenate([model_score[:, None, :], evidence], axis=1)  # (N, 6, W)
    rows = feats.transpose(0, 2, 1)[sel]
    y = hour_labels[sel].astype(int)
    lr = LogisticRegression(C=1.0, max_iter=2000)
    lr.fit(rows, y)
    coef = lr.coef_[0]
    return Combiner(float(lr.intercept_[0]), float(coef[0]), [float(c) for c in coef[1:]], 0.5)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, fpr_budget: float = FPR_BUDGET) -> float:
    """Threshold maximising F1 among thresholds with validation FPR <= budget."""
    cands = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, 401)))
    best_t, best_f1 = 0.5, -1.0
    neg = max(int((labels == 0).sum()), 1)
    for t in cands:
        pred = scores >= t
        tp = int((pred & (labels == 1)).sum())
        fp = int((pred & (labels == 0)).sum())
        fn = int((~pred & (labels == 1)).sum())
        if fp / neg > fpr_budget:
            continue
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return float(np.clip(best_t, 1e-4, 1 - 1e-4))


def dilate(x: np.ndarray, radius: int = 1) -> np.ndarray:
    out = x.copy()
    for s in range(1, radius + 1):
        out[..., s:] |= x[..., :-s]
        out[..., :-s] |= x[..., s:]
    return out


def localisation(hour_p: np.ndarray, flagged: np.ndarray, hour_threshold: float, threshold: float, hour_fake: np.ndarray) -> dict[str, float]:
    """Share of fake hours within ±1 h of a flagged hour (over flagged fake videos and over all
    fake videos), and precision of flagged hours (within ±1 h of a fake hour)."""
    hot = (hour_p >= min(hour_threshold, threshold)) & flagged[:, None]
    fake = hour_fake.astype(bool)
    near_hot = dilate(hot)
    near_fake = dilate(fake)
    fake_videos = fake.any(axis=1)
    caught = fake_videos & flagged
    covered_flagged = (fake & near_hot)[caught].sum() / max(fake[caught].sum(), 1)
    covered_all = (fake & near_hot)[fake_videos].sum() / max(fake[fake_videos].sum(), 1)
    precision = (hot & near_fake).sum() / max(hot.sum(), 1)
    return {
        "hours_localised_flagged": float(covered_flagged),
        "hours_localised_all": float(covered_all),
        "flagged_hour_precision": float(precision),
    }


def choose_hour_threshold(hour_p: np.ndarray, flagged: np.ndarray, threshold: float, hour_fake: np.ndarray) -> float:
    """Hour threshold (<= video threshold) balancing localisation recall and hour precision."""
    best_t, best = threshold, -1.0
    for t in np.linspace(0.05, threshold, 30):
        loc = localisation(hour_p, flagged, float(t), threshold, hour_fake)
        r, p = loc["hours_localised_flagged"], loc["flagged_hour_precision"]
        f = 2 * r * p / max(r + p, 1e-9)
        if f > best:
            best, best_t = f, float(t)
    return best_t
