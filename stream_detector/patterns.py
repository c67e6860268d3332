"""Interpretable per-hour detectors that name the five fake-engagement patterns.

Each detector states one property organic engagement has and bots break, measured against
the video's own history and its own noise (``signals.Signals``), and shares one interface
(as river's detectors share one API): ``name``, ``min_history_hours`` (observed hours before
an hour that the property needs; the detector is silent before, see *cold start* in the
README) and ``evidence(signals) -> (evidence (N, W) in [0, 1], metrics (N, 4, W) bool)``.

What no organic audience produces, and so can be judged from the first hours on: one
metric moving alone (``spike`` with a lagging metric), a metric mix that cannot be
(``ratio_anomaly``'s impossible mix), counts with far less variance than counting noise
(``lockstep``). What needs the video's own past: its usual level (``spike``), its daily
rhythm (``offpeak_burst``), its decay (``decay_violation``) and its own metric mix
(``ratio_anomaly`` against its own rate). None fires on an all-metric surge with organic
noise: a real audience moves every metric together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_detector import signals as sig
from stream_detector.signals import Signals

PATTERNS: tuple[str, ...] = ("spike", "offpeak_burst", "decay_violation", "lockstep", "ratio_anomaly", "drip_feed",
                             "shift_hours")
LOCKSTEP_HOURS = 12
RATIO_HOURS = 3


@dataclass
class PatternEvidence:
    """Per-hour evidence in [0, 1] for each pattern, and the metrics each pattern implicates."""

    evidence: np.ndarray  # (N, len(PATTERNS), W)
    metrics: np.ndarray  # (N, len(PATTERNS), 4, W) bool
    baseline: np.ndarray  # (N, 4, W) the video's usual hourly count around each hour
    signals: Signals | None = None

    def hour_metrics(self, threshold: float = 0.5) -> np.ndarray:
        """(N, 4, W) metrics implicated by any pattern whose evidence passes ``threshold``."""
        on = self.evidence >= threshold
        return (self.metrics & on[:, :, None, :]).any(axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-clip(x, -30, 30))), computed in place on one temporary (the same values)."""
    y = np.maximum(x, -30.0)
    if type(y) is not np.ndarray:  # a scalar
        return 1.0 / (1.0 + np.exp(-np.minimum(y, 30.0)))
    np.minimum(y, 30.0, out=y)
    np.negative(y, out=y)
    np.exp(y, out=y)
    y += 1.0
    return np.divide(1.0, y, out=y)


def _rolling(x: np.ndarray, size: int, fn: str, centred: bool = True) -> np.ndarray:
    """Rolling statistic over the last axis, edge-padded so the shape is preserved."""
    from numpy.lib.stride_tricks import sliding_window_view

    left = size // 2 if centred else size - 1
    right = size - 1 - left
    pad = [(0, 0)] * (x.ndim - 1) + [(left, right)]
    view = sliding_window_view(np.pad(x, pad, mode="edge"), size, axis=-1)
    return getattr(np, fn)(view, axis=-1)


def _centred_sums(x: np.ndarray, size: int) -> np.ndarray:
    """``_rolling(x, size, "sum")`` for a small ``size``: shifted slices of the edge-padded
    array added in order (what the reduction does over so few terms), without the window view."""
    left = size // 2
    edge = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, size - 1 - left)], mode="edge")
    w = x.shape[-1]
    out = edge[..., :w].copy()
    for j in range(1, size):
        out += edge[..., j : j + w]
    return out


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _neighbour_level(x: np.ndarray, side: int) -> np.ndarray:
    """Median of the 3 hours before (side=-1) or after (side=+1) each hour, within the window:
    at the window's edge only the hours that exist count (none: the hour itself, so an
    unknown future never makes an hour look like a jump). Min/max arithmetic instead of a
    sort: the same values, a fraction of the cost (this runs on every scored window)."""
    w = x.shape[-1]
    out = x.copy()
    if side < 0:
        if w > 3:
            out[..., 3:] = _median3(x[..., 2:-1], x[..., 1:-2], x[..., :-3])
        if w > 2:
            out[..., 2] = 0.5 * (x[..., 1] + x[..., 0])
        if w > 1:
            out[..., 1] = x[..., 0]
    else:
        if w > 3:
            out[..., :-3] = _median3(x[..., 1:-2], x[..., 2:-1], x[..., 3:])
        if w > 2:
            out[..., w - 3] = 0.5 * (x[..., w - 2] + x[..., w - 1])
        if w > 1:
            out[..., w - 2] = x[..., w - 1]
    return out


def _spread(flags: np.ndarray, size: int) -> np.ndarray:
    """Evidence of windows starting at s (covering s..s+size-1) -> per-hour max over covering
    windows: a trailing running max over ``size`` hours, by doubling spans (log2(size) maxima
    instead of ``size``; max is exact, so the same values for evidence, which is >= 0)."""
    def shifted(x: np.ndarray, by: int) -> np.ndarray:
        out = np.zeros_like(x)
        if by < x.shape[-1]:
            out[..., by:] = x[..., :-by]
        return out

    result = None
    span, covered = flags, 0  # span[t] = max of flags[t - width + 1 .. t], width = 1, 2, 4, ...
    width = 1
    while True:
        if size & width:
            part = shifted(span, covered) if covered else span
            result = part if result is None else np.maximum(result, part)
            covered += width
        if covered >= size:
            return result
        span = np.maximum(span, shifted(span, width))
        width *= 2


def _window_sums(x: np.ndarray, size: int) -> np.ndarray:
    """Sums over windows starting at each hour (the last size-1 windows are truncated)."""
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(1, size)], mode="constant"), axis=-1)
    return (c[..., size:] - c[..., :-size])[..., : x.shape[-1]]


def nb_z(observed: np.ndarray, expected: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """How many negative-binomial standard deviations ``observed`` is above ``expected``."""
    return (observed - expected) / np.sqrt(expected + phi * expected**2 + 1.0)


def lagging(now: np.ndarray, before: np.ndarray, rise: np.ndarray, phi: np.ndarray,
            unknown: float = 0.0, where: np.ndarray | None = None) -> np.ndarray:
    """(N, 4, W) in [0, 1]: for each metric's rise, how clearly another metric that the video's
    own mix says should have followed (expected >= 20) stayed behind by >= 3x, beyond that
    metric's own noise. A real audience moves all metrics together; bought engagement moves
    the ones paid for. Where no other metric is big enough to tell (expected < 8 for all),
    the answer is ``unknown`` rather than "they followed".

    ``where`` (N, 4, W): the (video, rising metric, hour) cells the caller will use; the rest
    are 0 (see :func:`lagging_cells`)."""
    out = np.zeros(now.shape, dtype=np.float64)
    cells = np.nonzero(np.ones(now.shape, dtype=bool) if where is None else where)
    if cells[0].size:
        out[cells] = lagging_cells(now, before, rise[cells], phi, cells, unknown)
    return out


def lagging_cells(now: np.ndarray, before: np.ndarray, rise: np.ndarray, phi: np.ndarray,
                  cells: tuple[np.ndarray, np.ndarray, np.ndarray], unknown: float = 0.0) -> np.ndarray:
    """:func:`lagging` at the given (video, rising metric, hour) cells only, ``rise`` given at
    those cells: (K,). Callers gate the answer by size anyway, and few cells pass that gate,
    so only those are computed (the same arithmetic per cell: the same values)."""
    i, r, t = cells
    m = now.shape[1]
    # every other metric o of each selected (video, rising metric r, hour) cell at once: (K, o)
    factor = np.exp(np.clip(rise, 0.0, 8.0))
    now_o = now[i, :, t]
    expected = before[i, :, t] * factor[:, None]
    other = np.arange(m)[None, :] != r[:, None]
    z = -nb_z(now_o, expected, phi[i])
    gap = np.log1p(expected) - np.log1p(now_o)
    lag = _sigmoid(2.0 * (z - 3.0)) * _sigmoid(4.0 * (gap - np.log(3.0))) * ((expected >= 20) & other)
    cell = lag.max(axis=1)
    if unknown:
        testable = ((expected >= 8) & other).any(axis=1)
        cell = np.maximum(cell, unknown * ~testable)
    return cell


class Spike:
    """A jump no organic audience makes: far above both the video's usual level and its
    neighbouring hours (organic surges ramp and decay over hours), beyond the video's own
    noise, carried by some metrics while the others stay behind."""

    name = "spike"
    min_history_hours = 3

    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        per_metric = np.zeros(s.counts.shape)
        # an excess of 15 needs a count of 15: only videos with one are computed, and in them
        # only the cells with a big enough excess can carry evidence
        videos = np.flatnonzero((s.counts >= 15).any(axis=(1, 2)))
        if videos.size:
            counts, phi = s.counts[videos], s.dispersion[videos]
            near = np.maximum(_neighbour_level(counts, -1), _neighbour_level(counts, +1))
            base = np.maximum(s.baseline[videos], near)
            cells = np.nonzero(counts - base >= 15)
            c, b = counts[cells], base[cells]
            jump = np.log1p(c) - np.log1p(b)
            z = nb_z(c, b, phi[cells[0], cells[1]])
            size = _sigmoid(3.0 * (jump - np.log(3.0))) * _sigmoid(2.0 * (z - 4.0))
            per_metric[(videos[cells[0]], *cells[1:])] = size * lagging_cells(counts, base, jump, phi, cells,
                                                                               unknown=0.6)
        return per_metric.max(axis=1), per_metric >= 0.5


class OffpeakBurst:
    """Bursts at hours the video's own audience is usually asleep, recurring at the same hour
    on several days. The rhythm is learned from the video itself (an audience in another time
    zone has its own quiet hours), so it needs two days of history; a single night's burst is
    weak evidence (organic audiences have those too)."""

    name = "offpeak_burst"
    min_history_hours = 48

    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        counts = s.counts
        n, _, w = counts.shape
        total = counts.sum(axis=1)
        resid = s.log_total - s.trend - s.usual
        spread, _ = sig.masked_quantile(np.abs(resid), s.mask > 0, 0.8)
        noise = np.maximum(1.2, 2.0 * spread / 1.2816)[:, None]  # ~2.5 sd of the video's own swings
        excess = resid
        expected = np.expm1(np.clip(s.trend + s.usual, 0, None))
        significant = (total - expected) >= 15
        hit = _sigmoid(3.0 * (excess - noise)) * _sigmoid(3.0 * (s.quiet - 1.0)) * significant
        strong = hit >= 0.5
        hod = (s.start_hours[:, None] + np.arange(w)[None, :]) % 24
        # strong hours at each hour of day, then at the hour and its two neighbours
        by_hod = np.bincount((np.arange(n)[:, None] * 24 + hod).ravel(), weights=strong.ravel(),
                             minlength=n * 24).reshape(n, 24)
        near = by_hod + np.roll(by_hod, 1, axis=1) + np.roll(by_hod, -1, axis=1)
        repeats = np.take_along_axis(near, hod, axis=1)
        evidence = hit * np.where(repeats >= 2, 1.0, 0.35)
        cells = np.nonzero(np.broadcast_to(strong[:, None, :], counts.shape))  # the jump matters only there
        jumped = np.zeros(counts.shape, dtype=bool)
        jumped[cells] = s.log_counts[cells] - np.log1p(s.baseline[cells]) >= np.log(2.0)
        return evidence, jumped


class DecayViolation:
    """Days after publication engagement keeps decaying; a plateau or revival carried by some
    metrics while the others, which the video's own mix says should follow, do not."""

    name = "decay_violation"
    min_history_hours = 36

    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        k = 12
        now = k * sig.rolling_median(s.counts, k + 1, stride=2)  # robust: one spike is not a plateau
        before = np.roll(now, 24, axis=-1)
        old = (s.age >= 48)[:, None, :]
        phi = np.maximum(s.dispersion / 2.0, 0.1)  # texture is correlated over hours: 12-hour sums swing too
        cells = np.nonzero((now >= 60) & old)  # only these can carry evidence
        rise = np.log1p(now[cells]) - np.log1p(before[cells])  # vs the same stretch a day earlier
        per_metric = np.zeros(now.shape)
        lag = lagging_cells(now, before, rise, phi, cells)
        # a revival without conversation: no comment and no share at all in the 12 hours where
        # the video's own rates expect at least 6 (P(0) = e^-6 under counting noise alone)
        tot = (s.counts * s.mask[:, None, :]).sum(axis=-1)
        conv_rate = (tot[:, 2] + tot[:, 3]) / (tot[:, 0] + tot[:, 1] + 10.0)
        conv_now = _centred_sums(s.counts[:, 2] + s.counts[:, 3], k + 1)  # sums: a sparse metric's median is 0
        expected = (now[:, 0] + now[:, 1]) * conv_rate[:, None]
        silent = ((conv_now == 0) & (expected >= 6.0))[cells[0], cells[2]] & (cells[1] <= 1)
        per_metric[cells] = _sigmoid(4.0 * (rise - 0.5)) * np.maximum(lag, silent)
        return per_metric.max(axis=1), per_metric >= 0.5


class Lockstep:
    """Organic counts are noisy (at least Poisson); bots add constant steps or keep one metric
    an exact fraction of another. Either shows as far *less* variance than counting noise,
    which no audience of any size produces: no history needed beyond its own 12 hours."""

    name = "lockstep"
    min_history_hours = 0

    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        k = LOCKSTEP_HOURS
        busy = _window_sums((s.counts >= 3).astype(float), k) >= k  # every hour of the window has counts
        # every term below is gated by a busy window: only videos that have one are computed
        videos = np.flatnonzero(busy.any(axis=(1, 2)))
        per_metric = np.zeros(s.counts.shape)
        if videos.size:
            per_metric[videos] = self._busy(s.counts[videos], busy[videos])
        return per_metric.max(axis=1), per_metric >= 0.5

    @staticmethod
    def _busy(counts: np.ndarray, busy: np.ndarray) -> np.ndarray:
        k = LOCKSTEP_HOURS
        w = counts.shape[-1]
        s1 = _window_sums(counts, k)
        s2 = _window_sums(counts**2, k)
        mean = s1 / k
        var = np.maximum(s2 / k - mean**2, 0.0)
        steady = _sigmoid(40.0 * (0.1 - var / np.maximum(mean, 1e-9))) * (mean >= 10) * busy
        steady[..., w - k + 1 :] = 0.0
        per_metric = _spread(steady, k)
        pairs = [(0, 1), (0, 2), (0, 3), (1, 3)]
        for a, b in pairs:  # one metric's window sums are s1, s2 and busy's rows
            sa, sb = s1[:, a], s1[:, b]
            r = np.clip(sb / np.maximum(sa, 1e-9), 0.0, 1.0)
            pred_sq = r**2 * s2[:, a]
            cross = r * _window_sums(counts[:, a] * counts[:, b], k)
            resid = np.maximum(s2[:, b] - 2 * cross + pred_sq, 0.0)
            expected = r * (1 - r) * sa
            full = busy[:, a]
            tight = _sigmoid(40.0 * (0.1 - resid / np.maximum(expected, 1e-9))) * (expected >= 8) * full
            tight[..., w - k + 1 :] = 0.0
            both = _spread(tight, k)
            per_metric[:, a] = np.maximum(per_metric[:, a], both)
            per_metric[:, b] = np.maximum(per_metric[:, b], both)
        return per_metric


class RatioAnomaly:
    """A metric mix no audience produces (more likes/comments/shares than views; heavy views
    with none of the reactions the video's own rate expects), judged from the first hours; or,
    with a day of history, a rate far from the video's own usual rate beyond its own
    hour-to-hour rate swings."""

    name = "ratio_anomaly"
    min_history_hours = 0  # the own-rate part gates itself on OWN_RATE_HISTORY
    OWN_RATE_HISTORY = 12
    DRIFT = {1: 0.6, 2: 2.0, 3: 1.0}  # how far above its later rate a young upload's metric may run

    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        counts = s.counts
        sums = _centred_sums(counts, RATIO_HOURS)
        views = sums[:, 0]
        per_metric = np.zeros(counts.shape, dtype=float)
        for m in (1, 2, 3):
            over = _sigmoid(0.5 * (sums[:, m] - 1.2 * views - 20.0)) * (sums[:, m] >= 30)
            per_metric[:, m] = np.maximum(per_metric[:, m], over)
        # the video's own rates: medians of its 3-hour rates (robust: a long fake is not the norm)
        tot = (counts * s.mask[:, None, :]).sum(axis=-1)
        by_total = (tot[:, 1:] + 1.0) / (tot[:, :1] + 10.0)
        rates = (sums[:, 1:] + 0.5) / (views[:, None, :] + 1.0)
        usable = ((s.mask > 0) & (views >= 20))[:, None, :] & np.ones_like(rates, dtype=bool)
        med, k_used = sig.masked_quantile(rates, usable, 0.5)
        own_rate = np.where(k_used >= 6, med, by_total)
        enough = s.history >= self.OWN_RATE_HISTORY
        observed = s.mask > 0
        # a young upload's conversation is front-loaded (real top posts: comments per like fall
        # ~2x over the first 14 hours): its early hours may run above its own later rate
        fresh = np.flatnonzero(((s.age < 36) & (s.mask > 0)).any(axis=1))  # videos with young hours
        young = np.exp(-s.age[fresh] / 6.0) * s.mask[fresh]
        for i, m in enumerate((1, 2, 3)):
            expect = views * own_rate[:, i : i + 1]
            dev = np.log((sums[:, m] + 1.0) / (expect + 1.0))
            off = np.abs(dev)
            spread, _ = sig.masked_quantile(off, observed & (expect >= 5), 0.5)  # the median: a long fake is not the norm
            wide = np.broadcast_to(np.maximum(np.log(4.0), 2.0 * 1.4826 * spread)[:, None], dev.shape).copy()
            if fresh.size:
                wide[fresh] += np.log1p(self.DRIFT[m] * young) * (dev[fresh] > 0)
            z = (sums[:, m] - expect) / np.sqrt(3.0 * expect + 4.0)
            # a handful of events is not evidence: an excess needs 12 events beyond the expected
            counted = (dev < 0) | (sums[:, m] - expect >= 12.0)
            far = _sigmoid(3.0 * (off - wide)) * _sigmoid(np.abs(z) - 6.0) * enough * counted
            per_metric[:, m] = np.maximum(per_metric[:, m], far)
            per_metric[:, 0] = np.maximum(per_metric[:, 0], far * (dev < 0))
        expected_reactions = views * (own_rate[:, 0:1] + own_rate[:, 1:2])
        silent = (sums[:, 1] + sums[:, 2] == 0) & (views >= 300) & (expected_reactions >= 8) & enough
        per_metric[:, 0] = np.maximum(per_metric[:, 0], silent.astype(float))
        # likes or comments without views: only videos with a day that gained 15 of one of them
        gained = _day_gain_rows(s, 15.0)
        if gained.size:  # ... with the metric in at least 14 hours of a day (most hours carry it)
            busy = _trailing_sums((s.counts[gained, 1:3] > 0).astype(np.float64), 24) >= 14
            rows = gained[busy.any(axis=(1, 2))]
            per_metric[rows, 1:3] = np.maximum(per_metric[rows, 1:3], self._without_views(s, rows))
        return per_metric.max(axis=1), per_metric >= 0.5

    @staticmethod
    def _without_views(s: Signals, rows: np.ndarray, hours: int = 24) -> np.ndarray:
        """(N, 2, W) likes and comments bought without views, sustained: over a day, against the
        same hours of the previous days, the metric grew far more than views did (beyond its
        counting noise, by 15 events at least), and did so in most hours of the day (a premiere's
        live chat is a few hours). Conversation of a young upload falls, it never rises like this."""
        c, r, phi = s.counts[rows], s.earlier[rows], s.dispersion[rows]
        have = ((s.earlier_days[rows] > 0) & (s.mask[rows] > 0)).astype(np.float64)
        n = _trailing_sums(have, hours)
        sc = _trailing_sums(c * have[:, None, :], hours)
        sr = _trailing_sums(r * have[:, None, :], hours)
        views_gain = (sc[:, 0] + 5.0) / (sr[:, 0] + 5.0)
        out = np.zeros((c.shape[0], 2, c.shape[-1]))
        for k, m in enumerate((1, 2)):
            expected = views_gain * sr[:, m]
            excess = sc[:, m] - expected
            z = excess / np.sqrt(expected * (1.0 + phi[:, m : m + 1]) + 1.0)
            per_hour = np.maximum(c[:, m] - views_gain * r[:, m], 0.0)  # views_gain at each hour's own day
            carried = _trailing_sums(((per_hour > 0.5 * excess / hours) & (have > 0)).astype(float), hours)
            steady = (views_gain >= 0.6) & (views_gain <= 1.6)  # views as before (not a surge, nor its end)
            end = (_sigmoid(1.5 * (z - 5.0)) * (excess >= np.maximum(15.0, expected)) * (n >= hours)
                   * (carried >= 14) * steady)
            out[:, k] = _trailing_max_to_hours(end, hours)
        return out


def _trailing_sums(x: np.ndarray, size: int) -> np.ndarray:
    """Sums over the ``size`` hours ending at each hour (fewer at the window's start)."""
    c = np.cumsum(x, axis=-1)
    out = c.copy()
    out[..., size:] -= c[..., :-size]
    return out


@dataclass
class AdditiveFit:
    """Each 24 hours ending at an hour, fitted as ``count = g * earlier + a`` per metric
    (``earlier``: the same hours on previous days, ``signals.previous_days``). An audience
    changes multiplicatively (``g``: more or fewer people, at the same rhythm); a delivery adds
    a rate of its own (``a``), night and day alike or in a block of hours. The fit needs a
    day with a rhythm to fit on (``contrast``)."""

    g: np.ndarray  # (N, 4, W)
    a: np.ndarray  # (N, 4, W) the additive rate per hour
    z: np.ndarray  # (N, 4, W) a over its standard error (residual spread, at least counting noise)
    contrast: np.ndarray  # (N, 4, W) the earlier day's rhythm beyond counting noise: sd / mean
    mean_earlier: np.ndarray  # (N, 4, W)
    valid: np.ndarray  # (N, 4, W) bool: 24 hours with an earlier day each

    @classmethod
    def of(cls, s: Signals, hours: int = 24, rows: np.ndarray | None = None) -> AdditiveFit:
        """The fit of every video, or of ``rows`` only (the others are not worth it)."""
        c, r, days, mask = s.counts, s.earlier, s.earlier_days, s.mask
        if rows is not None:
            c, r, days, mask = c[rows], r[rows], days[rows], mask[rows]
        v = (days > 0) & (mask > 0)
        vf = np.broadcast_to(v[:, None, :], c.shape).astype(np.float64)
        n = _trailing_sums(vf, hours)
        sr, sc = _trailing_sums(r * vf, hours), _trailing_sums(c * vf, hours)
        srr, src, scc = _trailing_sums(r * r * vf, hours), _trailing_sums(r * c * vf, hours), _trailing_sums(c * c * vf, hours)
        valid = n >= hours
        nn = np.maximum(n, 1.0)
        rbar, cbar = sr / nn, sc / nn
        var_r = np.maximum(srr / nn - rbar**2, 0.0)
        cov = src / nn - rbar * cbar
        g = np.clip(cov / np.maximum(var_r, 1e-9), 0.25, 4.0)
        a = cbar - g * rbar
        ss = np.maximum(scc - 2 * g * src - 2 * a * sc + g * g * srr + 2 * g * a * sr + n * a * a, 0.0)
        sigma2 = np.maximum(ss / np.maximum(n - 2, 1.0), cbar + 1.0)  # never below counting noise
        se = np.sqrt(sigma2 * (1.0 / nn + rbar**2 / np.maximum(nn * var_r, 1e-9)))
        rhythm = np.sqrt(np.maximum(var_r - rbar, 0.0))  # beyond the counting noise of the earlier day
        return cls(g, a, a / se, rhythm / (rbar + 1.0), rbar, valid)


class DripFeed:
    """A constant rate added night and day (panels' drip-feed): against the same hours of the
    previous days, the video's count is its earlier rhythm times a factor *plus a constant*,
    which no audience produces (more or fewer people keep their rhythm: the quiet hours grow
    with the busy ones). The hours of the day whose excess carries the constant are marked."""

    name = "drip_feed"
    min_history_hours = 48
    PERSIST = 8

    @staticmethod
    def _alone(fit: AdditiveFit) -> np.ndarray:
        return np.maximum(_alone_of(fit, unknown=0.7), 0.35)  # bots holding proportions add every metric
    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        per_metric = np.zeros(s.counts.shape)
        rows = _floor_rows(s)  # a day with a floor under (almost) every hour: the rest cannot
        if rows.size:
            per_metric[rows] = self._rows(s, rows)
        return per_metric.max(axis=1), per_metric >= 0.5

    def _rows(self, s: Signals, rows: np.ndarray) -> np.ndarray:
        fit = AdditiveFit.of(s, rows=rows)
        counts, earlier = s.counts[rows], s.earlier[rows]
        size = (fit.a >= 0.35 * fit.mean_earlier + 2.0) & (fit.a >= 3.0)
        end = (_sigmoid(1.5 * (fit.z - 5.0)) * _sigmoid(12.0 * (fit.contrast - 0.3)) * size * fit.valid
               * (fit.g <= 3.0))
        # a drip keeps its rate: the day fitted PERSIST hours earlier carries the same constant
        # (an organic surge grows or decays from one day to the next)
        lag = self.PERSIST
        same = np.zeros_like(end)
        prev_a, prev_z = fit.a[..., :-lag], fit.z[..., :-lag]
        same[..., lag:] = (np.abs(fit.a[..., lag:] - prev_a) <= 0.35 * fit.a[..., lag:]) & (prev_z >= 4.0)
        end = end * same * self._alone(fit)
        per_metric = np.zeros(counts.shape)
        ends = np.nonzero(end >= 0.05)
        if ends[0].size:
            i, m, t = ends
            ev, gg, aa = end[ends], fit.g[ends], fit.a[ends]
            carries = np.zeros((24, t.size), dtype=bool)  # the hours of each fitted day that carry the rate
            for k in range(24):
                h = np.maximum(t - k, 0)
                carries[k] = counts[i, m, h] - gg * earlier[i, m, h] >= 0.5 * aa
            floor = carries.sum(axis=0) >= 20  # under (almost) every hour of the day: a floor, not a surge
            for k in range(24):
                on = floor & carries[k]
                np.maximum.at(per_metric, (i[on], m[on], np.maximum(t[on] - k, 0)), ev[on])
        return per_metric


def _day_gains(s: Signals) -> np.ndarray:
    """(N, 4, W) each metric's count over the 24 hours ending at each hour minus the same hours
    on the previous days (0 where there are none): what the gates of the day-against-earlier
    detectors read, computed once per batch."""
    got = getattr(s, "_day_gains", None)
    if got is None:
        diff = (s.counts - s.earlier).astype(np.float32)  # earlier is 0 where no day is observed
        c = np.cumsum(diff, axis=-1)
        got = c.copy()
        got[..., 24:] -= c[..., :-24]
        s._day_gains = got  # type: ignore[attr-defined]
    return got


def _floor_rows(s: Signals) -> np.ndarray:
    """Videos with a day that gained 3 an hour over the same hours of the previous days in some
    metric, with 48 observed hours, and where 20 hours of such a day exceed a quarter of the
    same hour before by 1.5: what a drip's fit needs at the least (g >= 0.25, a >= 3 carried by
    >= 20 hours at half of it)."""
    rows = _day_gain_rows(s, 72.0)
    if not rows.size:
        return rows
    r = s.earlier[rows]  # a rhythm to fit on: the earlier days vary beyond counting noise somewhere
    rows = rows[(r.var(axis=-1) > 1.1 * r.mean(axis=-1) + 0.5).any(axis=1)]
    if not rows.size:
        return rows
    over = (s.counts[rows] - 0.25 * s.earlier[rows] >= 1.5) & (s.earlier_days[rows] > 0)[:, None, :]
    return rows[(_trailing_sums(over.astype(np.float32), 24) >= 20).any(axis=(1, 2))]


def _day_gain_rows(s: Signals, gain: float) -> np.ndarray:
    """Videos with a day (24 hours ending at some hour) whose count in some metric exceeds the
    same hours of the previous days by ``gain``, with 48 observed hours."""
    ok = s.history[:, -1] >= 48
    rows = np.flatnonzero(ok)
    if not rows.size:
        return rows
    return rows[(_day_gains(s)[rows] >= gain).any(axis=(1, 2))]


def _alone_of(fit: AdditiveFit, unknown: float) -> np.ndarray:
    """(N, 4, W) whether a metric's added rate came without the others: another metric that the
    video's own mix says should have gained >= 2 an hour gained < 30 % of that (an audience,
    however it grows, brings every metric; a delivery brings what was paid for). ``unknown``
    where no other metric is big enough to tell."""
    mix = fit.mean_earlier + 0.5
    out = np.zeros(fit.a.shape)
    testable = np.zeros(fit.a.shape, dtype=bool)
    m = fit.a.shape[1]
    for k in range(m):
        for o in range(m):
            if o == k:
                continue
            expected = np.maximum(fit.a[:, k], 0.0) * mix[:, o] / mix[:, k]
            can = expected >= 2.0
            testable[:, k] |= can
            out[:, k] = np.maximum(out[:, k], can & (fit.a[:, o] < 0.3 * expected))
    return np.where(testable, out, unknown)


class ShiftHours:
    """A block of 5-14 hours a day with a rate of its own and sharp edges (a farm's shift, in
    its own time zone), against the same hours of the previous days: the rest of the day
    keeps the video's rhythm, the block's hours gain a flat excess that starts and stops at
    once, where an organic surge rises, peaks and decays."""

    name = "shift_hours"
    min_history_hours = 48

    def evidence(self, s: Signals) -> tuple[np.ndarray, np.ndarray]:
        per_metric = np.zeros(s.counts.shape)
        have = (s.earlier_days > 0) & (s.mask > 0)
        up = (s.counts - s.earlier >= 3.0) & have[:, None, :]
        # a block needs 5 hours in a row gaining 3 or more, and an hour after it that does not
        # (it stops at once): only the videos that have one
        ends = up[..., 4:-1] & up[..., 3:-2] & up[..., 2:-3] & up[..., 1:-4] & up[..., :-5] & ~up[..., 5:]
        rows = np.flatnonzero(ends.any(axis=(1, 2)))
        if rows.size:
            per_metric[rows] = self._rows(s, rows, have[rows])
        return per_metric.max(axis=1), per_metric >= 0.5

    def _rows(self, s: Signals, rows: np.ndarray, have: np.ndarray) -> np.ndarray:
        c, r, phi = s.counts[rows], s.earlier[rows], s.dispersion[rows]
        hv = have[:, None, :].astype(np.float64)
        # the day's multiplicative change, from the hours outside any block: a first pass over
        # the centred day, then again without the hours it finds hot
        def day_ratio(weight: np.ndarray) -> np.ndarray:
            return (_centred_window_sums(c * weight, 25) + 5.0) / (_centred_window_sums(r * weight, 25) + 5.0)

        g = day_ratio(hv)
        hot = (c - g * r) / np.sqrt(g * r * (1.0 + phi[:, :, None] * g * r) + 1.0) >= 2.5
        g = day_ratio(hv * ~hot)
        expected = g * r
        e = c - expected
        z = e / np.sqrt(expected * (1.0 + phi[:, :, None] * expected) + 1.0)
        hot = (z >= 2.5) & (e >= 3.0) & (hv > 0)
        out = np.zeros(c.shape)
        five = (hot[..., 4:] & hot[..., 3:-1] & hot[..., 2:-2] & hot[..., 1:-3] & hot[..., :-4]).any(axis=-1)
        for i, m in zip(*np.nonzero(five), strict=True):  # only (video, metric) with 5 hot hours in a row
            runs_s, runs_l = runs(hot[i, m])
            for a, length in zip(runs_s.tolist(), runs_l.tolist(), strict=True):
                if not 5 <= length <= 14:
                    continue
                block = e[i, m, a : a + length]
                before = z[i, m, a - 1] if a >= 1 else 0.0
                after = z[i, m, a + length] if a + length < c.shape[-1] else 0.0
                flat = block.min() >= 0.35 * block.max() and block[0] >= 0.5 * np.median(block)
                if not (flat and before < 1.0 and after < 1.0):
                    continue
                if block.mean() >= max(0.5 * (r[i, m, a : a + length].mean() + 1.0), 3.0):
                    out[i, m, a : a + length] = 0.9 * self._alone(e[i, :, a : a + length], r[i], m)
        return out

    @staticmethod
    def _alone(excess: np.ndarray, earlier: np.ndarray, m: int) -> float:
        """1 when another metric that the video's mix says should have followed the block's
        excess (>= 2 an hour) gained < 30 % of it; 0.6 when none is big enough to tell."""
        mix = earlier.mean(axis=1) + 0.5
        gain = excess.mean(axis=1)
        expected = max(gain[m], 0.0) * mix / mix[m]
        others = [o for o in range(len(mix)) if o != m and expected[o] >= 2.0]
        if not others:
            return 0.6
        return 1.0 if any(gain[o] < 0.3 * expected[o] for o in others) else 0.0


def _centred_window_sums(x: np.ndarray, size: int) -> np.ndarray:
    """Sums over the ``size`` hours centred on each hour, the window cut at the edges."""
    half = size // 2
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half + 1, half)]), axis=-1)
    return c[..., size:] - c[..., :-size]


def _trailing_max_to_hours(end: np.ndarray, hours: int) -> np.ndarray:
    """Evidence of the days ending at each hour -> per hour, the max over the days covering it."""
    start = np.zeros_like(end)
    start[..., : end.shape[-1] - hours + 1] = end[..., hours - 1 :]  # by the day's first hour
    return _spread(start, hours)


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of True in a 1-D mask."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(m.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    return starts, np.flatnonzero(d == -1) - starts


DETECTORS = (Spike(), OffpeakBurst(), DecayViolation(), Lockstep(), RatioAnomaly(), DripFeed(), ShiftHours())
assert tuple(d.name for d in DETECTORS) == PATTERNS


def detect_signals(s: Signals) -> PatternEvidence:
    """Run every detector on shared signals; each is silent where history is too short."""
    ev, mets = [], []
    for d in DETECTORS:
        e, m = d.evidence(s)
        gate = (s.history >= d.min_history_hours) * s.mask
        ev.append(e * gate)
        mets.append(m & (gate > 0)[:, None, :])
    return PatternEvidence(np.stack(ev, axis=1), np.stack(mets, axis=1), s.baseline, s)


def detect(
    counts: np.ndarray, start_hours: np.ndarray, mask: np.ndarray | None = None, published_hours: np.ndarray | None = None
) -> PatternEvidence:
    """Run every detector on a batch of windows (N, 4, W). ``mask`` is accepted for the old
    call shape; observation is derived from the counts (``signals.observed_mask``)."""
    return detect_signals(sig.compute(counts, start_hours, published_hours))


@dataclass(frozen=True)
class Burst:
    """Sub-hour concentration in the newest minutes of one video (the immediate path)."""

    evidence: float  # in [0, 1]
    metrics: tuple[str, ...]
    minute: int  # minutes since the epoch of the peak (-1: none)
    peak: int  # events in the peak minute
    usual_hour: float  # the usual hourly count of the peak metric
    ring_views: int = -1  # judged without history (``BurstDetector.cold``): the views of the ring; -1: with


class BurstDetector:
    """Bots deliver bought engagement in a few minutes; a real audience, even a news surge,
    spreads over the hour. Evidence when a single minute of the minute ring holds more events
    of a metric than the video usually gets in ``hour_share`` hours, far beyond the other
    minutes of the ring, *and* either the other metrics of that minute did not follow (one
    metric moving alone) or the minute holds ``extreme_hours`` usual hours. The second
    condition matters because events may be pre-aggregated (one event per video and 10
    minutes, say): such chunks concentrate a real surge into single minutes too, but they
    carry every metric in the video's own mix, and never dozens of usual hours at once.

    A video without ``min_history_hours`` closed observed hours (new, or its older hours
    unknown) has no usual hour to compare with; only what no audience of any size produces
    counts for it (``cold``): a minute of a reaction metric (likes, comments, shares) far
    beyond every view in the ring. Reactions follow views, and both are reported at the same
    granularity (the event contract), so an organic ring never holds ten times more of one
    reaction than of views. Without this a bought burst on a new upload, bots' favourite
    target, waited for its hour to close and the next to confirm it (the hourly path's
    impossible mix): up to two hours in real time."""

    name = "spike"
    min_history_hours = 3  # closed observed hours before the usual hour means anything
    hour_share = 2.0  # the peak minute must exceed this many usual hours
    extreme_hours = 40.0  # ... or this many, whatever the mix
    min_peak = 30
    cold_views = 10.0  # without history: one reaction minute beyond this many times the ring's views

    def judge(self, minute_counts: np.ndarray, closed_counts: np.ndarray, minute_head: int) -> Burst | None:
        """The burst evidence of a minute ring judged against the video's closed hours
        ``closed_counts`` (4, T): ``evidence`` with enough history, ``cold`` without; None when
        no minute of the ring is big enough to look at."""
        ring = np.asarray(minute_counts)
        if ring.size == 0 or ring.max() < self.min_peak:
            return None
        usual, observed, mix = usual_hour(closed_counts)
        if observed >= self.min_history_hours:
            return self.evidence(ring, usual, minute_head, mix)
        return self.cold(ring, minute_head)

    def cold(self, minute_counts: np.ndarray, minute_head: int) -> Burst:
        """Evidence for a video without history (see the class docstring): the peak minute of
        each reaction metric against ``cold_views`` times all views of the ring (+ ``min_peak``,
        so a handful of reactions is never enough)."""
        ring = np.asarray(minute_counts, dtype=np.float64)
        peak_at = ring[1:].argmax(axis=1)
        peak = ring[1:][np.arange(ring.shape[0] - 1), peak_at]
        views = ring[0].sum()
        beyond = np.log(peak + 1.0) - np.log(self.cold_views * views + self.min_peak + 1.0)
        per_metric = _sigmoid(4.0 * beyond) * (peak >= self.min_peak)
        m = int(per_metric.argmax())
        if per_metric[m] < 0.05:
            return Burst(0.0, (), -1, 0, 0.0)
        from stream_detector.series import METRICS

        on = tuple(METRICS[k + 1] for k in np.flatnonzero(per_metric >= 0.5)) or (METRICS[m + 1],)
        return Burst(float(per_metric[m]), on, minute_head - (ring.shape[1] - 1) + int(peak_at[m]), int(peak[m]), 0.0,
                     int(views))

    def evidence(self, minute_counts: np.ndarray, usual_hour: np.ndarray, minute_head: int,
                 mix: np.ndarray | None = None) -> Burst:
        """``minute_counts`` (4, M) oldest first ending at ``minute_head``; ``usual_hour`` (4,)
        the video's usual hourly count per metric and ``mix`` (4,) its recent totals per metric
        (both from closed hours; the mix defaults to the usual hour)."""
        ring = np.asarray(minute_counts, dtype=np.float64)
        if ring.size == 0 or ring.max() < self.min_peak:
            return Burst(0.0, (), -1, 0, 0.0)
        peak_at = ring.argmax(axis=1)
        peak = ring[np.arange(ring.shape[0]), peak_at]
        if ring.shape[1] > 1:  # the other minutes of the ring: what this audience does right now
            others = np.where(np.arange(ring.shape[1])[None, :] == peak_at[:, None], np.nan, ring)
            rest = np.nanmedian(others, axis=1)
        else:
            rest = np.zeros(ring.shape[0])
        usual = np.maximum(np.asarray(usual_hour, dtype=np.float64), 1.0)
        share = np.log(peak + 1.0) - np.log(self.hour_share * usual + 1.0)
        vs_rest = np.log(peak + 1.0) - np.log(10.0 * rest + 1.0)
        extreme = _sigmoid(4.0 * (np.log(peak + 1.0) - np.log(self.extreme_hours * usual + 1.0)))
        alone = np.zeros(ring.shape[0])
        mix = np.asarray(usual_hour if mix is None else mix, dtype=np.float64) + 0.5
        for m in range(ring.shape[0]):
            same_minute = ring[:, peak_at[m]]
            for o in range(ring.shape[0]):
                if o == m:
                    continue
                expected = peak[m] * mix[o] / mix[m]  # the other metric, at the video's own mix
                if expected >= 20:
                    gap = np.log1p(expected) - np.log1p(same_minute[o])
                    alone[m] = max(alone[m], float(_sigmoid(4.0 * (gap - np.log(5.0)))))
        per_metric = _sigmoid(4.0 * share) * _sigmoid(4.0 * vs_rest) * np.maximum(alone, extreme) * (peak >= self.min_peak)
        m = int(per_metric.argmax())
        if per_metric[m] < 0.05:
            return Burst(0.0, (), -1, 0, 0.0)
        from stream_detector.series import METRICS

        on = tuple(METRICS[k] for k in np.flatnonzero(per_metric >= 0.5)) or (METRICS[m],)
        return Burst(float(per_metric[m]), on, minute_head - (ring.shape[1] - 1) + int(peak_at[m]),
                     int(peak[m]), float(usual_hour[m]))


def usual_hour(closed_counts: np.ndarray, hours: int = 24) -> tuple[np.ndarray, int, np.ndarray]:
    """(4,) the median of the last ``hours`` observed closed hours, the observed hours available
    (observation starts at the first activity), and (4,) the totals of those hours (the mix)."""
    active = np.flatnonzero(closed_counts.sum(axis=0) > 0)
    if active.size == 0:
        zeros = np.zeros(closed_counts.shape[0])
        return zeros, 0, zeros
    seen = closed_counts[:, active[0] :]
    recent = seen[:, -hours:]
    return np.median(recent, axis=1), int(seen.shape[1]), recent.sum(axis=1)
