"""The scoring core: hourly windows -> per-hour fake probability, flagged hours, patterns, why.

One implementation serves training (calibration, evaluation), the canary, the offline CLI and
the stream worker (parity-tested), batched across videos: shared signals once per batch,
features, one model call, the pattern detectors, the fitted combiner. What to *do* with the
scores (flag, update, withdraw) is the decision process's job (``decision.py``); the offline
verdict here is one decision over the whole series at the model's offline threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from stream_detector import signals as sig
from stream_detector.features import build_features, normalize
from stream_detector.patterns import PATTERNS, PatternEvidence, detect_signals
from stream_detector.series import METRICS, HourlySeries, hour_start_iso


class HourModel(Protocol):
    """What the scoring core needs of a model: the ONNX artifact, or a torch model in training."""

    window_hours: int
    threshold: float
    normalization: dict
    combiner: object

    def run(self, x: np.ndarray) -> np.ndarray: ...


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
class HourDetail:
    """Per-hour evidence of one scored window, kept so a decision can build its own windows."""

    start_hour: int
    counts: np.ndarray  # (4, W)
    evidence: np.ndarray  # (5, W) pattern evidence
    contribution: np.ndarray  # (5, W) each pattern's push on the combiner's logit
    model_contribution: np.ndarray  # (W,)
    metrics: np.ndarray  # (4, W) bool, metrics implicated
    baseline: np.ndarray  # (4, W)
    history: np.ndarray  # (W,) observed hours before each hour
    age: np.ndarray | None = None  # (W,) hours since publication
    quiet: np.ndarray | None = None  # (W,) how far below its daily peak the video usually is

    @property
    def hours(self) -> int:
        return int(self.counts.shape[1])


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
    detail: HourDetail | None = field(default=None, repr=False)

    @property
    def start_hour(self) -> int:
        return self.end_hour - len(self.hour_probability) + 1

    def to_dict(self) -> dict:
        """The offline CLI's output line (DESIGN.md contract)."""
        return {
            "video_id": self.video_id,
            "score": round(self.score, 4),
            "flagged": self.flagged,
            "windows": [w.to_dict() for w in self.windows],
        }

    def windows_where(self, hot: np.ndarray) -> list[FlaggedWindow]:
        """Runs of ``hot`` hours as flagged windows, each naming the evidence that drove it."""
        assert self.detail is not None
        out: list[FlaggedWindow] = []
        t, w = 0, hot.shape[0]
        while t < w:
            if not hot[t]:
                t += 1
                continue
            u = t
            while u < w and hot[u]:
                u += 1
            out.append(_window(self.detail, t, u, self.hour_probability))
            t = u
        return out

    def relabel(self, window: FlaggedWindow) -> FlaggedWindow:
        """A window published earlier, named and scored again with what this scoring knows
        about its hours (e.g. a burst that has since recurred every night); unchanged when its
        hours are no longer in this window."""
        assert self.detail is not None
        t = window.start_hour - self.start_hour
        u = window.end_hour - self.start_hour
        if t < 0 or u > len(self.hour_probability) or u <= t:
            return window
        fresh = _window(self.detail, t, u, self.hour_probability)
        return FlaggedWindow(window.start_hour, window.end_hour, max(window.score, fresh.score),
                             fresh.metrics, fresh.patterns)

    def explain(self, windows: list[FlaggedWindow], threshold: float) -> str:
        return _explain(self.detail, windows, self.score, threshold)


# How specific each pattern's evidence is of its own cause (several detectors react to one
# bought cause: a one-metric spike shifts that hour's mix, a step is also a plateau, a nightly
# burst is also a jump), and how plausible a window's length is for it.
_SPECIFICITY = {"lockstep": 1.3, "offpeak_burst": 1.2, "spike": 1.0, "decay_violation": 1.0, "ratio_anomaly": 0.9,
                "drip_feed": 1.25, "shift_hours": 1.25}
_SIDE_EFFECTS = {
    "spike": {"ratio_anomaly"},
    "offpeak_burst": {"spike", "ratio_anomaly"},
    "lockstep": {"ratio_anomaly", "decay_violation", "spike", "drip_feed"},
    "decay_violation": {"ratio_anomaly", "spike"},
    "ratio_anomaly": {"spike", "decay_violation"},
    # a rate added night and day also lifts a decayed video and shifts its mix
    "drip_feed": {"ratio_anomaly", "decay_violation", "spike", "offpeak_burst", "lockstep"},
    "shift_hours": {"ratio_anomaly", "decay_violation", "spike", "offpeak_burst", "drip_feed"},
}


def _length_fit(pattern: str, length: int) -> float:
    if pattern == "spike":
        return 1.0 if length <= 3 else 0.5
    if pattern == "offpeak_burst":
        return 1.0 if length <= 4 else 0.6
    if pattern in ("decay_violation", "lockstep"):
        return 1.0 if length >= 6 else 0.6
    if pattern == "drip_feed":
        return 1.0 if length >= 12 else 0.6
    if pattern == "shift_hours":
        return 1.0 if 5 <= length <= 14 else 0.6
    return 1.0 if length >= 4 else 0.7  # ratio_anomaly: a mix that stays off (one odd hour is a spike's)


def _names(d: HourDetail, seg: slice, length: int) -> list[str]:
    """The pattern(s) that caused a window: the evidence that is there (>= 0.3), weighed by how
    specific it is and how well the window's length fits it; a second pattern only when it is
    as strong and not a known side effect of the first. With no evidence (the model alone
    flagged it), the strongest evidence there is."""
    strength = d.evidence[:, seg].max(axis=1)
    if strength.max() < 0.3:  # the model alone flagged it: name it by its shape
        if _revival(d, seg, length):
            return ["decay_violation"]
        if length <= 3:
            return ["spike"]
        return _refined(d, seg, strength, {PATTERNS[int(strength.argmax())]})
    rank = {p: strength[k] * _SPECIFICITY[p] * _length_fit(p, length) for k, p in enumerate(PATTERNS)
            if strength[k] >= 0.3}
    top = max(rank, key=rank.get)
    top_rank = rank[top]  # a renamed cause keeps the rank of the evidence that made the window
    if top == "ratio_anomaly" and _revival(d, seg, length) and not _impossible_mix(d, seg):
        top = "decay_violation"  # a one-sided comeback days after publication: the mix shift is its side effect
    names = {top}
    for p, r in rank.items():
        if p != top and p not in _SIDE_EFFECTS[top] and strength[PATTERNS.index(p)] >= 0.9 and r >= 0.9 * top_rank:
            names.add(p)
    return _refined(d, seg, strength, names)


def _refined(d: HourDetail, seg: slice, strength: np.ndarray, names: set[str]) -> list[str]:
    """Names of a steady added rate, made specific by its metrics and the video's age."""
    if names <= _RATE_NAMES and _reactions_without_views(d, seg, strength):
        return ["ratio_anomaly"]
    if names == {"drip_feed"} and _decayed(d, seg):
        return ["decay_violation"]
    return [p for p in PATTERNS if p in names]


# what a steady added rate is named by before its metrics and the video's age say more
_RATE_NAMES = {"drip_feed", "decay_violation", "shift_hours", "ratio_anomaly"}
REVIVAL_AGE_HOURS = 48  # DESIGN: a decay violation is a flat or rising plateau "days later"


def _reactions_without_views(d: HourDetail, seg: slice, strength: np.ndarray) -> bool:
    """Likes or comments bought without the views they would come with: a steady rate of
    reactions alone is what breaks the video's mix (``ratio_anomaly``), however steady; a
    drip names added views."""
    return bool(strength[PATTERNS.index("ratio_anomaly")] >= 0.9 and d.metrics[1:, seg].any()
                and not d.metrics[0, seg].any())


def _decayed(d: HourDetail, seg: slice) -> bool:
    """A steady rate added to a video two days or more after publication: what it breaks is
    the decay (a revival, named ``decay_violation``); on a young video it is a drip."""
    return d.age is not None and bool(d.age[seg.start] >= REVIVAL_AGE_HOURS)


def _revival(d: HourDetail, seg: slice, length: int) -> bool:
    """A long stretch, two days or more after publication, well above the same hours a day
    earlier: engagement that came back or stopped decaying (DESIGN's decay violation)."""
    if not _decayed(d, seg) or length < 8 or seg.start < 24:
        return False
    now = d.counts[:, seg].sum()
    before = d.counts[:, seg.start - 24 : seg.stop - 24].sum()
    return bool(now >= 1.5 * before + 10)


def _impossible_mix(d: HourDetail, seg: slice) -> bool:
    """More likes, comments or shares than views over the window: a ratio anomaly whatever else."""
    sums = d.counts[:, seg].sum(axis=1)
    return bool((sums[1:] > 1.2 * sums[0] + 20).any())


def _window(d: HourDetail, t: int, u: int, hour_p: np.ndarray) -> FlaggedWindow:
    seg = slice(t, u)
    names = _names(d, seg, u - t)
    mets = [METRICS[m] for m in np.flatnonzero(d.metrics[:, seg].any(axis=1))]
    if not mets:
        ratio = (d.counts[:, seg].sum(axis=1) + 1) / (d.baseline[:, seg].sum(axis=1) + 1)
        mets = [METRICS[int(ratio.argmax())]]
    return FlaggedWindow(d.start_hour + t, d.start_hour + u, float(hour_p[seg].max()), tuple(mets), tuple(names))


def _explain(d: HourDetail | None, windows: list[FlaggedWindow], score: float, threshold: float) -> str:
    if not windows or d is None:
        return f"organic-looking engagement (score {score:.2f} < threshold {threshold:.2f})"
    top = max(windows, key=lambda w_: w_.score)
    t0, t1 = top.start_hour - d.start_hour, top.end_hour - d.start_hour
    parts = []
    for name in top.metrics:
        m = METRICS.index(name)
        seen = d.counts[m, t0:t1].sum()
        usual = d.baseline[m, t0:t1].sum()
        factor = (seen + 1.0) / (usual + 1.0)
        parts.append(f"{name} {seen:,.0f} vs usual ~{usual:,.0f} ({factor:.1f}x)")
    hours = t1 - t0
    span = f"{hour_start_iso(top.start_hour)} for {hours} h"
    extra = f"; {len(windows) - 1} more window(s)" if len(windows) > 1 else ""
    return f"{' / '.join(top.patterns)} at {span}: {', '.join(parts)}; score {top.score:.2f}{extra}"


@dataclass
class HourScores:
    """A batch's per-hour outputs before any decision (what calibration fits on)."""

    model_score: np.ndarray  # (N, W) the model's raw hour score
    evidence: PatternEvidence
    mask: np.ndarray  # (N, W)
    probability: np.ndarray | None = None  # (N, W) combined, once a combiner is applied


class Scorer:
    """Scores batches of hourly windows with one model (see module docstring)."""

    def __init__(self, model: HourModel, threshold: float | None = None) -> None:
        self.model = model
        self.window = model.window_hours
        # the offline verdict's threshold: the artifact's offline operating point at its default
        # target (the stream's target too: one calibration story), else its calibrated threshold
        default = model.offline_threshold() if hasattr(model, "offline_threshold") else model.threshold
        self.threshold = default if threshold is None else float(threshold)

    # -- the per-hour core, shared by training and serving ---------------------------------
    def components(self, counts: np.ndarray, starts: np.ndarray, pubs: np.ndarray) -> HourScores:
        """(N, 4, W) counts -> model hour scores and pattern evidence, signals computed once."""
        signals = sig.compute(counts, starts, pubs)
        x, _ = build_features(counts, starts, pubs, signals)
        model_score = self.model.run(normalize(x, signals.mask, self.model.normalization))
        evidence = detect_signals(signals)
        return HourScores(model_score, evidence, signals.mask)

    def hour_probabilities(self, counts: np.ndarray, starts: np.ndarray, pubs: np.ndarray) -> HourScores:
        h = self.components(counts, starts, pubs)
        h.probability = self.model.combiner.hour_probability(h.model_score, h.evidence.evidence) * h.mask
        return h

    # -- whole videos ------------------------------------------------------------------------
    def score(self, series: Sequence[HourlySeries]) -> list[VideoScore]:
        """Score each series on its trailing window (longer series: use :meth:`score_full`)."""
        if not series:
            return []
        w = self.window
        chunks = [s.last(w) for s in series]
        return self.score_windows([c.video_id for c in chunks], np.stack([c.counts for c in chunks]),
                                  np.array([c.start_hour for c in chunks], dtype=np.int64),
                                  np.array([-1 if c.published_hour is None else c.published_hour for c in chunks],
                                           dtype=np.int64))

    def score_windows(self, video_ids: Sequence[str], counts: np.ndarray, starts: np.ndarray,
                      pubs: np.ndarray) -> list[VideoScore]:
        """:meth:`score` of windows given as arrays: ``counts`` (N, 4, W) each the model's window
        length, starting at ``starts``; ``pubs`` the published hours (-1: unknown)."""
        if not len(video_ids):
            return []
        counts = np.asarray(counts, dtype=np.float64)  # once (windows may come as stored, uint32)
        w = counts.shape[-1]
        h = self.hour_probabilities(counts, starts, pubs)
        comb = self.model.combiner
        contribution = np.asarray(comb.pattern_weights)[None, :, None] * h.evidence.evidence
        model_push = comb.model_weight * h.model_score
        metrics = h.evidence.hour_metrics()
        sg = h.evidence.signals
        history = sg.history if sg is not None else np.zeros_like(h.mask)
        results = []
        threshold = self.threshold
        prob = h.probability
        scores = (prob.max(axis=1) if prob.shape[1] else np.zeros(len(video_ids))).tolist()
        evidence, baseline = h.evidence.evidence, h.evidence.baseline
        age = sg.age if sg is not None else [None] * len(video_ids)
        quiet = sg.quiet if sg is not None else [None] * len(video_ids)
        for i, (vid, start) in enumerate(zip(video_ids, starts.tolist(), strict=True)):
            detail = HourDetail(start, counts[i], evidence[i], contribution[i], model_push[i], metrics[i],
                                baseline[i], history[i], age[i], quiet[i])
            p, score = prob[i], scores[i]
            flagged = score >= threshold
            vs = VideoScore(vid, score, flagged, threshold, start + w - 1, [], "", p, detail)
            if flagged:
                vs.windows = vs.windows_where((p >= min(comb.hour_threshold, threshold)) | (p >= threshold))
                vs.explanation = vs.explain(vs.windows, threshold)
            else:
                vs.explanation = _explain(None, [], score, threshold)
            results.append(vs)
        return results

    def score_full(self, series: Sequence[HourlySeries]) -> list[VideoScore]:
        """Score whole series of any length: consecutive windows ending at the last hour; the
        first (shortest) piece of a series longer than a window is scored on the series' first
        full window instead, so every hour is judged with a window's context, and each piece
        speaks only for its own hours."""
        w = self.window
        pieces: list[HourlySeries] = []
        owner: list[tuple[int, int, int]] = []  # (series index, first owned hour, end owned hour)
        for i, s in enumerate(series):
            end = s.hours
            while True:
                begin = end - w
                if begin <= 0:
                    lo, hi = 0, min(w, s.hours)
                    pieces.append(HourlySeries(s.video_id, s.start_hour, s.counts[:, lo:hi], s.published_hour, s.meta))
                    owner.append((i, s.start_hour, s.start_hour + end))
                    break
                pieces.append(HourlySeries(s.video_id, s.start_hour + begin, s.counts[:, begin:end], s.published_hour, s.meta))
                owner.append((i, s.start_hour + begin, s.start_hour + end))
                end = begin
        scored = self.score(pieces)
        merged: dict[int, VideoScore] = {}
        for (i, lo, hi), vs in zip(owner, scored, strict=True):
            vs = self._own(vs, lo, hi)
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
                best.detail,
            )
        return [merged[i] for i in range(len(series))]

    def _own(self, vs: VideoScore, lo: int, hi: int) -> VideoScore:
        """``vs`` restricted to the absolute hours [lo, hi) (a piece's own hours)."""
        hours = vs.start_hour + np.arange(len(vs.hour_probability))
        own = (hours >= lo) & (hours < hi)
        if own.all():
            return vs
        p = np.where(own, vs.hour_probability, 0.0)
        score = float(p.max()) if p.size else 0.0
        out = VideoScore(vs.video_id, score, score >= self.threshold, vs.threshold, vs.end_hour, [], "",
                         vs.hour_probability, vs.detail)
        if out.flagged:
            hot = ((p >= min(self.model.combiner.hour_threshold, self.threshold)) | (p >= self.threshold)) & own
            out.windows = out.windows_where(hot)
        out.explanation = out.explain(out.windows, self.threshold)
        return out
