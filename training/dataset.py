"""Time-aware datasets: consecutive simulated weeks, each drawn with its own seed.

Splitting by week keeps every video in exactly one split and every test video later in
time than every training video; each week has the same mix of organic kinds and fake
patterns, so the split is stratified by construction. Normalisation statistics are fitted
on the training weeks only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from stream_detector.dev.simulate import SimulatedDataset, simulate
from stream_detector.features import build_features

WEEK_HOURS = 168
# Monday 2026-01-05 00:00 UTC, in epoch hours.
BASE_HOUR = 1767571200 // 3600


@dataclass
class Split:
    """Features and truth of one split, ready for a model."""

    name: str
    data: SimulatedDataset
    x: np.ndarray  # (N, C, W) unnormalised features
    mask: np.ndarray  # (N, W)

    @property
    def hour_labels(self) -> np.ndarray:
        return self.data.hour_fake.astype(np.float32)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.data.label, dtype=int)

    @property
    def starts(self) -> np.ndarray:
        per_video = getattr(self.data, "start_hours", None)
        if per_video is not None:
            return np.asarray(per_video, dtype=np.int64)
        return np.full(len(self.data), self.data.start_hour, dtype=np.int64)

    @property
    def published(self) -> np.ndarray:
        return np.asarray(self.data.published_hour, dtype=np.int64)


def week_seed(seed: int, week: int) -> int:
    return seed * 1000 + week


def simulate_week(seed: int, week: int, videos: int, texture=None) -> SimulatedDataset:
    """One week of its own seed; ``texture`` (``stream_detector.dev.texture.RealTexture``) gives organic
    curves real-world texture (training uses the train pool, the held-out week the test pool)."""
    return simulate(
        videos,
        seed=week_seed(seed, week),
        hours=WEEK_HOURS,
        start_hour=BASE_HOUR + week * WEEK_HOURS,
        id_prefix=f"w{week}-",
        texture=texture,
    )


def simulate_market_week(seed: int, week: int, videos: int, texture=None) -> SimulatedDataset:
    """One week of fraud as panels sell it and its organic look-alikes (``dev/market.py``), on the
    same calendar as ``simulate_week``'s week, with seeds of its own."""
    from stream_detector.dev.market import simulate_market

    return simulate_market(videos, seed=week_seed(seed, week) + 500, hours=WEEK_HOURS,
                           start_hour=BASE_HOUR + week * WEEK_HOURS, id_prefix=f"mw{week}-", texture=texture)


def make_split(name: str, data: SimulatedDataset) -> Split:
    starts = np.full(len(data), data.start_hour, dtype=np.int64)
    x, mask = build_features(data.counts, starts, np.asarray(data.published_hour, dtype=np.int64))
    return Split(name, data, x, mask)


def fingerprint(weeks: list[SimulatedDataset]) -> str:
    """sha256 over the training counts and truth: identical data -> identical fingerprint."""
    h = hashlib.sha256()
    for d in weeks:
        h.update(np.ascontiguousarray(d.counts, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(d.hour_fake).tobytes())
        h.update(str(d.seed).encode())
    return h.hexdigest()


def partial_history(split: Split, seed: int, share: float = 0.5) -> Split:
    """Copies of a share of the videos as a stream sees them mid-week.

    Each copy keeps the hours [s, e] of its week right-aligned in the window (the stream
    scores the window ending at the video's newest hour), with the newest hour thinned
    (it is still filling up when it is scored). s > 0 models a worker that started on an
    empty Redis or a video whose older hours expired; e < W-1 models "now" mid-week.
    Without these the streamed partial windows are out of distribution and flag organic
    videos transiently.
    """
    rng = np.random.default_rng(seed)
    n = len(split.data)
    idx = np.sort(rng.choice(n, int(n * share), replace=False))
    data = split.data.subset(idx)
    w = data.counts.shape[-1]
    k = len(idx)
    length = np.maximum(1, np.minimum(w, rng.geometric(1 / 60, size=k)))  # hours of history
    end = rng.integers(length - 1, w)  # newest hour (inclusive)
    start = end - length + 1
    counts = np.zeros_like(data.counts)
    fake = np.zeros_like(data.hour_fake)
    pats = np.zeros_like(data.hour_patterns)
    mets = np.zeros_like(data.hour_metrics)
    for j in range(k):
        a, b, L = int(start[j]), int(end[j]) + 1, int(length[j])
        counts[j, :, w - L :] = data.counts[j, :, a:b]
        fake[j, w - L :] = data.hour_fake[j, a:b]
        pats[j, :, w - L :] = data.hour_patterns[j, :, a:b]
        mets[j, :, w - L :] = data.hour_metrics[j, :, a:b]
        frac = rng.uniform(0.05, 1.0)
        counts[j, :, -1] = rng.binomial(counts[j, :, -1].astype(np.int64), frac)
    data.counts, data.hour_fake, data.hour_patterns, data.hour_metrics = counts, fake, pats, mets
    data.label = fake.any(axis=1).astype(data.label.dtype)
    starts = split.starts[idx] + (end - (w - 1))  # window start so that its last hour is `end`
    data.start_hours = starts
    pubs = np.asarray(data.published_hour, dtype=np.int64)
    x, mask = build_features(counts, starts, pubs)
    return Split(split.name + "+partial", data, x, mask)
