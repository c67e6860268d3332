"""Per-batch signals every detector needs, computed once: observation, history, age, baseline,
daily rhythm, trend and the per-video noise model.

Every detector judges an hour against the video's *own* behaviour, and how sure it can be
depends on how much of that behaviour it has seen. Two quantities make this explicit:

- ``history[n, t]``: observed hours before hour t. Observation starts at the video's first
  activity in the window: hours before it are unknown (a worker that started on an empty
  Redis, a video whose older hours expired), never "zero engagement". Detectors declare the
  history they need (``min_history_hours``) and are silent before it: cold start.
- ``dispersion[n, m]``: the video's own hour-to-hour variability per metric, as the
  over-dispersion phi of a negative binomial (variance = mu + phi * mu^2), estimated from a
  robust quantile of its log-count changes and shrunk towards the prior of its audience scale
  when history is short. A bursty audience needs a bigger jump to look implausible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DISPERSION_PRIOR = 0.15  # phi of an audience never seen before (log-sd ~0.39 hour to hour)
DISPERSION_PRIOR_HOURS = 24.0  # history at which the video's own estimate weighs as much as the prior
DISPERSION_MAX = 4.0
BASELINE_HOURS = 49  # centred history used as "the video's usual level"


def observed_mask(counts: np.ndarray) -> np.ndarray:
    """(N, W) 1 from the first hour with any activity on (see module docstring)."""
    active = counts.sum(axis=1) > 0
    w = counts.shape[-1]
    first = np.where(active.any(axis=1), active.argmax(axis=1), w)
    return (np.arange(w)[None, :] >= first[:, None]).astype(np.float32)


def hours_since_publication(mask: np.ndarray, start_hours: np.ndarray, published_hours: np.ndarray | None) -> np.ndarray:
    """(N, W) age in hours: from publication when known, else from first activity."""
    n, w = mask.shape
    first = np.argmax(mask > 0, axis=1)
    since_first = np.clip(np.arange(w)[None, :] - first[:, None], 0, None).astype(float)
    if published_hours is None:
        return since_first * mask
    pub = np.asarray(published_hours, dtype=np.int64)
    start = np.asarray(start_hours, dtype=np.int64)
    hour = start[:, None] + np.arange(w)[None, :]
    from_pub = np.clip(hour - pub[:, None], 0, None).astype(float)
    age = np.where((pub >= 0)[:, None], np.maximum(from_pub, since_first), since_first)
    return age * mask


def rolling_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Centred rolling mean over the last axis, reflect-padded (an edge value is not repeated)."""
    left = size // 2
    right = size - 1 - left
    pad = [(0, 0)] * (x.ndim - 1) + [(left, right)]
    xp = np.pad(x, pad, mode="reflect") if x.shape[-1] > max(left, right) else np.pad(x, pad, mode="edge")
    c = np.cumsum(np.pad(xp, [(0, 0)] * (x.ndim - 1) + [(1, 0)]), axis=-1)
    return (c[..., size:] - c[..., :-size]) / size


def rolling_median(x: np.ndarray, size: int, stride: int = 1) -> np.ndarray:
    """Centred rolling median (odd ``size``) over the last axis, reflect-padded, computed at every
    ``stride``-th hour and held in between (the baselines it feeds are smooth)."""
    half = size // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
    mode = "reflect" if x.shape[-1] > half else "edge"
    padded = np.pad(x, pad, mode=mode).astype(np.float32)
    w = x.shape[-1]
    rows = padded.reshape(-1, padded.shape[-1])
    centres = np.arange(0, w, stride)
    med = np.zeros((rows.shape[0], centres.size), dtype=np.float32)
    # a row with at most `half` non-zero values has a zero median in every window: only the
    # others are selected (most rows of a quiet video)
    busy = np.flatnonzero(np.count_nonzero(rows, axis=-1) > half)
    if busy.size:
        windows = sliding_window_view(rows[busy], size, axis=-1)[:, centres, :]  # a copy
        windows.partition(half, axis=-1)
        med[busy] = windows[..., half]
    med = med.reshape(*x.shape[:-1], centres.size)
    return np.repeat(med, stride, axis=-1)[..., :w].astype(np.float64)


def nan_median(x: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN where all are): ``np.nanmedian``'s values by
    one sort, without its masked-array path (several times slower on small last axes)."""
    s = np.sort(x, axis=-1)  # NaN sorts last
    k = np.count_nonzero(~np.isnan(x), axis=-1)
    lo = np.take_along_axis(s, np.maximum((k - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(s, np.minimum(k // 2, x.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    return np.where(k > 0, (lo + hi) / 2, np.nan)


def masked_quantile(x: np.ndarray, valid: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantile over the last axis of the valid entries only (0 where none is); (values, number
    valid). Only the rows with a valid entry are sorted (most rows of quiet videos have none)."""
    x, valid = np.broadcast_arrays(x, valid)
    k = valid.sum(axis=-1)
    out = np.zeros(k.shape)
    rows = np.nonzero(k > 0)
    if rows[0].size:
        s = np.sort(np.where(valid[rows], x[rows], np.inf), axis=-1)
        pos = np.clip(np.floor(q * (k[rows] - 1)).astype(np.int64), 0, x.shape[-1] - 1)
        out[rows] = np.take_along_axis(s, pos[:, None], axis=-1)[:, 0]
    return out, k


def day_trend(log_total: np.ndarray) -> np.ndarray:
    """(N, W) centred 24 h mean of ``log_total``, edge-padded: what the daily profile and the
    features detrend by."""
    pad = np.pad(log_total, ((0, 0), (12, 11)), mode="edge")
    return sliding_window_view(pad, 24, axis=1).mean(axis=-1)


def daily_profile(log_total: np.ndarray, start_hours: np.ndarray, mask: np.ndarray,
                  trend: np.ndarray | None = None) -> np.ndarray:
    """(N, 24) the video's usual detrended activity by UTC hour of day, robust to bursts.

    Detrended by a centred 24 h rolling mean so post-publication decay does not masquerade as
    a daily rhythm; each hour of day is estimated from its *neighbouring* hours (±2, excluding
    itself) so a burst repeated at the same hour every night cannot hide inside the profile.
    """
    n, w = log_total.shape
    trend = day_trend(log_total) if trend is None else trend
    resid = np.where(mask > 0, log_total - trend, np.nan)
    days = -(-w // 24)
    resid = np.pad(resid, ((0, 0), (0, days * 24 - w)), constant_values=np.nan)
    offset = (-np.asarray(start_hours, dtype=np.int64)) % 24
    cols = (offset[:, None, None] + np.arange(24)[None, :, None]) % 24 + 24 * np.arange(days)[None, None, :]
    cols = np.minimum(cols, days * 24 - 1)
    by_day = np.take_along_axis(resid[:, None, :], cols.reshape(n, 1, -1), axis=2).reshape(n, 24, days)
    by_hod = np.nan_to_num(nan_median(by_day), nan=0.0)
    neighbours = np.stack([np.roll(by_hod, s, axis=1) for s in (-2, -1, 1, 2)], axis=0)
    return neighbours.mean(axis=0)


def dispersion(counts: np.ndarray, mask: np.ndarray, baseline: np.ndarray,
               log_counts: np.ndarray | None = None) -> np.ndarray:
    """(N, 4) negative-binomial phi per video and metric (see module docstring).

    From consecutive observed hours with a usual level >= 3 (below it counting noise is all
    there is): the 80th percentile of |change in log1p(count)| is ~1.28 * sqrt(2) standard
    deviations of one hour's log-count; its Poisson part (~1 / level) is removed and the rest
    is phi. A quantile rather than the MAD, so a texture with frequent bursts widens it, and
    not the maximum, so one bought spike does not.
    """
    logc = np.log1p(counts) if log_counts is None else log_counts
    diff = np.abs(np.diff(logc, axis=-1))
    pair = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    valid = pair[:, None, :] & (baseline[..., 1:] >= 3.0)
    q80, k = masked_quantile(diff, valid, 0.8)
    sd = q80 / (1.2816 * np.sqrt(2.0))
    inv_level = np.where(valid, 1.0 / (baseline[..., 1:] + 1.0), 0.0).sum(axis=-1) / np.maximum(k, 1)
    own = np.clip(sd**2 - inv_level, 0.0, DISPERSION_MAX)
    weight = k / (k + DISPERSION_PRIOR_HOURS)
    return weight * own + (1.0 - weight) * DISPERSION_PRIOR


def previous_days(counts: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4, W) the median count at the same hour on up to 3 previous observed days, and
    (N, W) how many such days there were (0: no reference, the value is 0). Causal: what the
    video did before, so a rate added from some hour on stands out against it until it fills
    most of those days. Observation is monotone (from the first activity on), so where the day
    three days back is observed, so are the two after it: median of 3, mean of 2, or the one."""
    n, m, w = counts.shape
    out = np.zeros((n, m, w))
    avail = np.zeros((n, w))
    seen = mask > 0
    if w > 24:
        d1 = seen[:, :-24]
        avail[:, 24:] += d1
        out[:, :, 24:] = np.where(d1[:, None, :], counts[:, :, :-24], 0.0)
    if w > 48:
        d2 = seen[:, :-48]
        avail[:, 48:] += d2
        mean2 = 0.5 * (counts[:, :, 24:-24] + counts[:, :, :-48])
        np.copyto(out[:, :, 48:], mean2, where=d2[:, None, :])
    if w > 72:
        d3 = seen[:, :-72]
        avail[:, 72:] += d3
        a, b, c = counts[:, :, 48:-24], counts[:, :, 24:-48], counts[:, :, :-72]
        med3 = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
        np.copyto(out[:, :, 72:], med3, where=d3[:, None, :])
    return out, avail


@dataclass
class Signals:
    """What the detectors share for one batch of windows (N videos, 4 metrics, W hours)."""

    counts: np.ndarray  # (N, 4, W) float64
    start_hours: np.ndarray  # (N,)
    mask: np.ndarray  # (N, W) observed hours (from first activity)
    history: np.ndarray  # (N, W) observed hours before each hour
    context_after: np.ndarray  # (N, W) hours of the window after each hour
    age: np.ndarray  # (N, W) hours since publication (or first activity)
    baseline: np.ndarray  # (N, 4, W) the video's usual count around each hour
    dispersion: np.ndarray  # (N, 4) phi
    log_counts: np.ndarray  # (N, 4, W) log1p(counts)
    log_total: np.ndarray  # (N, W)
    trend: np.ndarray  # (N, W) centred 24 h mean of log_total (reflect-padded)
    day_trend: np.ndarray  # (N, W) the same, edge-padded (what the daily profile detrends by)
    profile: np.ndarray  # (N, 24) daily rhythm by UTC hour of day
    usual: np.ndarray  # (N, W) the profile at each hour
    quiet: np.ndarray  # (N, W) how far below its daily peak the video usually is at this hour
    earlier: np.ndarray | None = None  # (N, 4, W) the same hour on previous days (``previous_days``)
    earlier_days: np.ndarray | None = None  # (N, W) how many previous days that is

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.counts.shape  # type: ignore[return-value]


def compute(counts: np.ndarray, start_hours: np.ndarray, published_hours: np.ndarray | None = None) -> Signals:
    """All shared signals of a batch, once."""
    counts = np.asarray(counts, dtype=np.float64)
    start_hours = np.asarray(start_hours, dtype=np.int64)
    n, _, w = counts.shape
    mask = observed_mask(counts)
    history = np.cumsum(mask, axis=1) - mask
    context_after = np.broadcast_to((w - 1 - np.arange(w))[None, :], (n, w)).astype(np.float64)
    age = hours_since_publication(mask, start_hours, published_hours)
    baseline = rolling_median(counts, BASELINE_HOURS, stride=4)
    log_counts = np.log1p(counts)
    log_total = np.log1p(counts.sum(axis=1))
    trend = rolling_mean(log_total, 24)
    detrend = day_trend(log_total)
    profile = daily_profile(log_total, start_hours, mask, detrend)
    hod = (start_hours[:, None] + np.arange(w)[None, :]) % 24
    usual = np.take_along_axis(profile, hod, axis=1)
    quiet = profile.max(axis=1, keepdims=True) - usual
    earlier, earlier_days = previous_days(counts, mask)
    return Signals(
        counts=counts,
        start_hours=start_hours,
        mask=mask,
        history=history,
        context_after=context_after,
        age=age,
        baseline=baseline,
        dispersion=dispersion(counts, mask, baseline, log_counts),
        log_counts=log_counts,
        log_total=log_total,
        trend=trend,
        day_trend=detrend,
        profile=profile,
        usual=usual,
        quiet=quiet,
        earlier=earlier,
        earlier_days=earlier_days,
    )
