"""Window -> model input. Shared, unchanged, by training and serving.

Every channel is relative to the video's *own* history (its median level, its own daily
rhythm), never to absolute UTC clock hours: an audience in another time zone or a tiny
video must look normal to the model, so nothing here encodes "3 AM UTC is suspicious".
"""

from __future__ import annotations

import numpy as np

from stream_detector.signals import (
    Signals,
    daily_profile,
    day_trend,
    hours_since_publication,
    nan_median,
)
from stream_detector.signals import observed_mask as _observed

FEATURE_VERSION = 2  # 2: observation starts at the first activity (signals.observed_mask)

CHANNELS: tuple[str, ...] = (
    "rel_log_views",  # log1p(count) minus the video's median log1p(count), per metric
    "rel_log_likes",
    "rel_log_comments",
    "rel_log_shares",
    "log_like_rate",  # log((likes+1)/(views+1)) per hour
    "log_comment_rate",
    "log_share_rate",
    "audience_scale",  # log1p(mean hourly views), broadcast over the window
    "diurnal_excess",  # activity minus the video's usual level at this hour of day
    "diurnal_quietness",  # how far below its daily peak the video usually is at this hour
    "log_age",  # log1p(hours since publication or first activity)
    "observed",  # 1 from the first activity on (earlier hours are unknown, not zero)
)
N_CHANNELS = len(CHANNELS)


def observed_mask(counts: np.ndarray, start_hours: np.ndarray | None = None,
                  published_hours: np.ndarray | None = None) -> np.ndarray:
    """(N, W) mask of hours the window has observed: from the first activity on. Hours before
    it are unknown (a worker started on an empty Redis, older hours expired), not zero; the
    publication time is carried by ``log_age`` instead (see ``signals.py``)."""
    return _observed(counts)


def _masked_median(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median over the last axis counting only mask>0 entries (0 where nothing is observed)."""
    return np.nan_to_num(nan_median(np.where(mask > 0, x, np.nan)), nan=0.0)


def build_features(
    counts: np.ndarray,
    start_hours: np.ndarray,
    published_hours: np.ndarray,
    signals: Signals | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw hourly counts (N, 4, W) -> (features (N, C, W) float32, observed mask (N, W)).

    ``published_hours`` uses -1 for unknown. Unnormalised: apply :func:`normalize` with the
    statistics stored in the model artifact. ``signals`` of the same batch (the scorer has
    them) saves computing the mask, daily profile and age twice; the values are the same.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, m, w = counts.shape
    start_hours = np.asarray(start_hours, dtype=np.int64)
    mask = observed_mask(counts, start_hours, published_hours) if signals is None else signals.mask
    logc = np.log1p(counts) if signals is None else signals.log_counts
    level = _masked_median(logc, mask[:, None, :])
    rel = (logc - level[:, :, None]) * mask[:, None, :]

    views = counts[:, 0]
    rates = np.log((counts[:, 1:] + 1.0) / (views[:, None, :] + 1.0)) * mask[:, None, :]

    obs_hours = np.maximum(mask.sum(axis=1), 1.0)
    scale = np.log1p((views * mask).sum(axis=1) / obs_hours)

    if signals is None:
        log_total = np.log1p(counts.sum(axis=1))
        profile = daily_profile(log_total, start_hours, mask)
        hod = (start_hours[:, None] + np.arange(w)[None, :]) % 24
        usual = np.take_along_axis(profile, hod, axis=1)
        age = hours_since_publication(mask, start_hours, published_hours)
        trend = day_trend(log_total)
    else:
        log_total, profile, usual, age = signals.log_total, signals.profile, signals.usual, signals.age
        trend = signals.day_trend
    excess = (log_total - trend - usual) * mask
    quiet = (usual - profile.max(axis=1, keepdims=True)) * mask

    log_age = np.log1p(age) * mask

    x = np.empty((n, N_CHANNELS, w), dtype=np.float32)
    x[:, 0:4] = rel
    x[:, 4:7] = rates
    x[:, 7] = scale[:, None] * mask
    x[:, 8] = excess
    x[:, 9] = quiet
    x[:, 10] = log_age
    x[:, 11] = mask
    return x, mask


def fit_normalization(x: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean/std over observed hours of the *training* split only."""
    weights = mask[:, None, :]
    total = max(float(weights.sum()), 1.0)
    mean = (x * weights).sum(axis=(0, 2)) / total
    var = (((x - mean[None, :, None]) ** 2) * weights).sum(axis=(0, 2)) / total
    std = np.sqrt(np.maximum(var, 1e-6))
    mean[-1], std[-1] = 0.0, 1.0  # keep the mask channel a mask
    return {"channels": list(CHANNELS), "mean": mean.tolist(), "std": std.tolist()}


def normalize(x: np.ndarray, mask: np.ndarray, stats: dict) -> np.ndarray:
    if list(stats["channels"]) != list(CHANNELS):
        raise ValueError("normalisation statistics were computed for other feature channels")
    mean = np.asarray(stats["mean"], dtype=np.float32)[None, :, None]
    std = np.asarray(stats["std"], dtype=np.float32)[None, :, None]
    return (((x - mean) / std) * mask[:, None, :]).astype(np.float32)
