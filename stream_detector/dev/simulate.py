"""Simulated social-video engagement: rich organic curves plus injected fake engagement.

Every video gets an organic base drawn from a generative model of audience behaviour:

* publication time (long before the window, or inside it, with a publication minute);
* heavy-tailed audience size (log-normal body plus a Pareto-like tail: from a fraction of a
  view per hour to hundreds of thousands);
* an audience time-zone mix (1-3 zones, UTC-8..UTC+9) with diurnal curves that are low at
  2-5 AM local and peak in the evening, each video with its own phase and depth;
* post-publication decay (exponential, power-law or slow-burn / delayed peak) with an
  initial ramp and a long-tail floor;
* weekly seasonality (weekend lift that varies by video);
* a category with category-specific likes/comments/shares-per-view ratios, each video's
  ratios drawn around the category mean and drifting slowly over time;
* autocorrelated log-noise, occasional mild organic bumps (mentions, recommendations), and
  over-dispersed counts (gamma-Poisson) with a shared shock across metrics plus independent
  per-metric noise.

Organic hard negatives (``ORGANIC_KINDS``): ``viral`` surges, ``news`` spikes,
``other_timezone`` audiences, strongly ``seasonal`` videos, ``sparse`` tiny videos, and
``regular`` ones. Fake engagement (``PATTERNS``) is injected into organic videos of every
kind and size, with magnitudes drawn from blatant to subtle; truth is kept per video, per
hour, per pattern and per metric, plus a list of injection records with their parameters.

Spike (and off-peak burst) extra counts are placed at specific minutes, so that
``iter_events`` and ``write_csv(granularity="minute")`` show the sub-hour concentration a
real bot burst has, while organic counts spread over the minutes of their hour.

Everything is seeded: the same arguments give identical arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream_detector.patterns import runs
from stream_detector.series import METRICS, SECONDS_PER_HOUR, HourlySeries, hour_start_iso

PATTERNS: tuple[str, ...] = ("spike", "offpeak_burst", "decay_violation", "lockstep", "ratio_anomaly")
ORGANIC_KINDS: tuple[str, ...] = ("regular", "viral", "news", "other_timezone", "seasonal", "sparse",
                                  "real_textured")
ORGANIC_MIX: tuple[float, ...] = (0.35, 0.15, 0.10, 0.15, 0.10, 0.15, 0.0)
# With a texture source: this share of "regular" videos become "real_textured" (their curve
# carries a real series' hourly texture at full strength), and this share of every other
# non-sparse kind carries it more mildly (so texture is no cue for a kind, nor for organic).
REAL_TEXTURED_SHARE = 0.6
MILD_TEXTURE_SHARE = 0.35

CATEGORIES: tuple[str, ...] = ("music", "gaming", "news", "education", "comedy", "sports")
CATEGORY_WEIGHTS: tuple[float, ...] = (0.20, 0.19, 0.12, 0.15, 0.19, 0.15)
# Mean (likes, comments, shares) per view, by category.
CATEGORY_RATIOS: dict[str, tuple[float, float, float]] = {
    "music": (0.060, 0.0035, 0.0080),
    "gaming": (0.050, 0.0080, 0.0030),
    "news": (0.025, 0.0070, 0.0070),
    "education": (0.040, 0.0030, 0.0040),
    "comedy": (0.070, 0.0050, 0.0120),
    "sports": (0.035, 0.0045, 0.0050),
}

# Monday 2026-01-05 00:00 UTC, in epoch hours.
DEFAULT_START_HOUR = 1767571200 // SECONDS_PER_HOUR

# Typical relative activity by local hour of day: low at 2-5 AM, peak around 20-21.
DIURNAL_24 = np.array(
    [0.55, 0.36, 0.22, 0.15, 0.13, 0.16, 0.27, 0.42, 0.52, 0.58, 0.62, 0.66,
     0.72, 0.71, 0.68, 0.70, 0.75, 0.82, 0.90, 0.97, 1.00, 0.96, 0.86, 0.72]
)
# Home markets (dominant zone of non-``other_timezone`` videos) and far zones.
HOME_ZONES = np.array([-6, -5, -4, -3, 0, 1, 2, 3])
HOME_ZONE_P = np.array([0.08, 0.22, 0.06, 0.10, 0.16, 0.22, 0.10, 0.06])
FAR_ZONES = np.array([-8, -7, 5, 7, 8, 9])

# Minimal hours after publication (inside the window) each pattern needs to fit.
_PATTERN_ROOM = {"spike": 6, "offpeak_burst": 56, "decay_violation": 64, "lockstep": 18,
                 "ratio_anomaly": 12}
# Absolute floors (counts) so injected extras are not within organic noise on tiny videos.
_SPIKE_FLOOR = np.array([40.0, 18.0, 8.0, 8.0])
_OFFPEAK_FLOOR = np.array([20.0, 8.0, 4.0, 4.0])
_DV_FLOOR = np.array([8.0, 3.0, 2.0, 2.0])

_V, _L, _C, _S = 0, 1, 2, 3


def _iso_minute(hour: int, minute: int) -> str:
    return hour_start_iso(hour)[:-6] + f"{minute:02d}:00Z"


@dataclass
class SimulatedDataset:
    """N simulated videos over T hours with hour-level fake-engagement truth.

    ``timezone_offsets[i][0]`` is the video's dominant audience zone (largest weight).
    Extra fields beyond the core contract: ``organic_counts`` (counts before injection),
    ``timezone_weights``, ``published_minute``, ``injections`` (per video, the list of
    injected patterns with their hours, metrics, variant and parameters),
    ``minute_extras`` (rows ``video, t, metric, minute, count`` of injected counts placed at
    exact minutes) and ``minute_onsets`` (rows ``video, t, first_minute, share``: in that
    hour ``share`` of the organic counts falls at or after ``first_minute``, e.g. the
    publication minute or a news onset).
    """

    video_ids: list[str]
    start_hour: int
    counts: np.ndarray
    hour_fake: np.ndarray
    hour_patterns: np.ndarray
    hour_metrics: np.ndarray
    label: np.ndarray
    pattern: list[str]
    organic_kind: list[str]
    category: list[str]
    published_hour: np.ndarray
    timezone_offsets: list[list[int]]
    seed: int
    organic_counts: np.ndarray | None = None
    timezone_weights: list[list[float]] = field(default_factory=list)
    published_minute: np.ndarray | None = None
    injections: list[list[dict]] = field(default_factory=list)
    minute_extras: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int64))
    minute_onsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float64))
    texture_source: list[str] = field(default_factory=list)  # real series behind a video's texture ("" none)

    @property
    def textured(self) -> np.ndarray:
        """(N,) bool: the video's organic curve carries real-world texture."""
        if not self.texture_source:
            return np.zeros(len(self), dtype=bool)
        return np.array([bool(s) for s in self.texture_source])

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def hours(self) -> int:
        return int(self.counts.shape[2])

    # ------------------------------------------------------------------ access
    def patterns_of(self, i: int) -> list[str]:
        """All patterns injected into video ``i`` (primary first)."""
        return [inj["pattern"] for inj in self.injections[i]] if self.injections else (
            [self.pattern[i]] if self.pattern[i] else [])

    def published_at(self, i: int) -> str:
        minute = int(self.published_minute[i]) if self.published_minute is not None else 0
        return _iso_minute(int(self.published_hour[i]), minute)

    def series(self, i: int) -> HourlySeries:
        meta = {
            "label": int(self.label[i]),
            "pattern": self.pattern[i],
            "patterns": self.patterns_of(i),
            "organic_kind": self.organic_kind[i],
            "category": self.category[i],
            "timezone_offsets": list(self.timezone_offsets[i]),
            "hour_fake": self.hour_fake[i].copy(),
        }
        return HourlySeries(self.video_ids[i], int(self.start_hour), self.counts[i].copy(),
                            int(self.published_hour[i]), meta)

    def iter_series(self) -> Iterator[HourlySeries]:
        for i in range(len(self)):
            yield self.series(i)

    def subset(self, idx: np.ndarray) -> SimulatedDataset:
        idx = np.arange(len(self))[np.asarray(idx)]
        lst = idx.tolist()
        remap = np.full(len(self), -1, dtype=np.int64)
        remap[idx] = np.arange(idx.size)

        def rows(a: np.ndarray) -> np.ndarray:
            if a.size == 0:
                return a.copy()
            keep = remap[a[:, 0].astype(np.int64)] >= 0
            out = a[keep].copy()
            out[:, 0] = remap[out[:, 0].astype(np.int64)]
            return out

        return SimulatedDataset(
            video_ids=[self.video_ids[i] for i in lst],
            start_hour=self.start_hour,
            counts=self.counts[idx].copy(),
            hour_fake=self.hour_fake[idx].copy(),
            hour_patterns=self.hour_patterns[idx].copy(),
            hour_metrics=self.hour_metrics[idx].copy(),
            label=self.label[idx].copy(),
            pattern=[self.pattern[i] for i in lst],
            organic_kind=[self.organic_kind[i] for i in lst],
            category=[self.category[i] for i in lst],
            published_hour=self.published_hour[idx].copy(),
            timezone_offsets=[list(self.timezone_offsets[i]) for i in lst],
            seed=self.seed,
            organic_counts=None if self.organic_counts is None else self.organic_counts[idx].copy(),
            timezone_weights=[list(self.timezone_weights[i]) for i in lst] if self.timezone_weights else [],
            published_minute=None if self.published_minute is None else self.published_minute[idx].copy(),
            injections=[self.injections[i] for i in lst] if self.injections else [],
            minute_extras=rows(self.minute_extras),
            minute_onsets=rows(self.minute_onsets),
            texture_source=[self.texture_source[i] for i in lst] if self.texture_source else [],
        )

    # ------------------------------------------------------------------ minute placement
    def _minute_index(self):
        """Per-video lookups of minute extras and organic onsets."""
        extras: dict[int, np.ndarray] = {}
        if self.minute_extras.size:
            order = np.argsort(self.minute_extras[:, 0], kind="stable")
            me = self.minute_extras[order]
            vids, starts = np.unique(me[:, 0], return_index=True)
            bounds = np.append(starts, me.shape[0])
            for v, a, b in zip(vids.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                extras[int(v)] = me[a:b]
        onsets: dict[int, dict[int, tuple[int, float]]] = {}
        for v, t, m0, w in self.minute_onsets.tolist():
            onsets.setdefault(int(v), {})[int(t)] = (int(m0), float(w))
        return extras, onsets

    @staticmethod
    def _minute_pvals(m0: int, w: float) -> np.ndarray:
        p = np.full(60, (1.0 - w) / 60.0)
        p[m0:] += w / (60 - m0)
        return p / p.sum()

    def _split_minutes(self, rng, organic: np.ndarray, onset_rows: dict[int, tuple[int, float]],
                       bins: np.ndarray) -> np.ndarray:
        """Split organic (4, T) counts into len(bins)-1 minute bins -> (4, T, B)."""
        widths = np.diff(bins).astype(np.float64)
        n = organic.astype(np.int64)
        out = rng.multinomial(n, widths / widths.sum())
        for t, (m0, w) in onset_rows.items():
            p = self._minute_pvals(m0, w)
            pb = np.add.reduceat(p, bins[:-1])
            out[:, t, :] = rng.multinomial(n[:, t], pb / pb.sum())
        return out

    def minute_counts(self, chunk_minutes: int = 1) -> np.ndarray:
        """(N, 4, T, 60) int32 counts per minute: organic counts spread over their hour (from
        the publication or news-onset minute on), injected extras at their exact minutes. The
        same placement as ``write_csv(granularity="minute")``. ``chunk_minutes`` > 1: organic
        counts pre-aggregated into one event per chunk (at its first minute), as a producer
        sending 10-minute counters would."""
        T, N = self.hours, len(self)
        rng = np.random.default_rng([self.seed, 7])
        extras, onsets = self._minute_index()
        bins = np.arange(61)
        C = np.rint(self.counts).astype(np.int64)
        out = np.zeros((N, len(METRICS), T, 60), dtype=np.int32)
        for i in range(N):
            org = C[i].copy()
            ex = extras.get(i)
            if ex is not None:
                np.subtract.at(org, (ex[:, 2], ex[:, 1]), ex[:, 4])
            per_min = self._split_minutes(rng, org, onsets.get(i, {}), bins)
            if chunk_minutes > 1:
                chunked = np.zeros_like(per_min)
                for c0 in range(0, 60, chunk_minutes):
                    chunked[:, :, c0] = per_min[:, :, c0 : c0 + chunk_minutes].sum(axis=-1)
                per_min = chunked
            if ex is not None:
                np.add.at(per_min, (ex[:, 2], ex[:, 1], ex[:, 3]), ex[:, 4])
            out[i] = per_min
        return out

    # ------------------------------------------------------------------ writers
    def write_csv(self, path, granularity: str = "hour") -> None:
        """CSV with columns ``video_id,ts,views,likes,comments,shares,published_at``.

        ``granularity="hour"``: one row per video-hour with any count; ``"minute"``: one row
        per non-empty minute (injected spike counts at their exact minutes). Rows are grouped
        by video and in time order within a video.
        """
        if granularity not in ("hour", "minute"):
            raise ValueError("granularity must be 'hour' or 'minute'")
        T = self.hours
        iso = [hour_start_iso(self.start_hour + t) for t in range(T)]
        C = np.rint(self.counts).astype(np.int64)
        with open(Path(path), "w", newline="", encoding="utf-8") as f:
            f.write("video_id,ts," + ",".join(METRICS) + ",published_at\n")
            if granularity == "hour":
                nz = C.any(axis=1)
                for i in range(len(self)):
                    ts_idx = np.flatnonzero(nz[i])
                    if ts_idx.size == 0:
                        continue
                    vid, pub = self.video_ids[i], self.published_at(i)
                    vals = C[i][:, ts_idx].T.tolist()
                    f.write("".join(
                        f"{vid},{iso[t]},{a},{b},{c},{d},{pub}\n"
                        for t, (a, b, c, d) in zip(ts_idx.tolist(), vals, strict=True)))
                return
            rng = np.random.default_rng([self.seed, 7])
            extras, onsets = self._minute_index()
            bins = np.arange(61)
            prefixes = [s[:-6] for s in iso]
            mins = [f"{m:02d}:00Z" for m in range(60)]
            for i in range(len(self)):
                vid, pub = self.video_ids[i], self.published_at(i)
                ex = extras.get(i)
                org = C[i].copy()
                if ex is not None:
                    np.subtract.at(org, (ex[:, 2], ex[:, 1]), ex[:, 4])
                rows_on = onsets.get(i, {})
                per_min = self._split_minutes(rng, org, rows_on, bins)  # (4, T, 60)
                if ex is not None:
                    np.add.at(per_min, (ex[:, 2], ex[:, 1], ex[:, 3]), ex[:, 4])
                nzm = per_min.any(axis=0)
                tt, mm = np.nonzero(nzm)
                vals = per_min[:, tt, mm].T.tolist()
                f.write("".join(
                    f"{vid},{prefixes[t]}{mins[m]},{a},{b},{c},{d},{pub}\n"
                    for t, m, (a, b, c, d) in zip(tt.tolist(), mm.tolist(), vals, strict=True)))

    def write_truth(self, path) -> None:
        """JSONL, one line per video: label, patterns, kind, fake hours and per-hour detail."""
        T = self.hours
        iso = [hour_start_iso(self.start_hour + t) for t in range(T)]
        with open(Path(path), "w", encoding="utf-8") as f:
            for i in range(len(self)):
                hours = np.flatnonzero(self.hour_fake[i]).tolist()
                rec = {
                    "video_id": self.video_ids[i],
                    "label": int(self.label[i]),
                    "pattern": self.pattern[i],
                    "patterns": self.patterns_of(i),
                    "organic_kind": self.organic_kind[i],
                    "category": self.category[i],
                    "published_at": self.published_at(i),
                    "timezone_offsets": list(self.timezone_offsets[i]),
                    "fake_hours": [iso[t] for t in hours],
                    "hour_patterns": {
                        iso[t]: [p for k, p in enumerate(PATTERNS) if self.hour_patterns[i, k, t]]
                        for t in hours
                    },
                    "hour_metrics": {
                        iso[t]: [m for k, m in enumerate(METRICS) if self.hour_metrics[i, k, t]]
                        for t in hours
                    },
                }
                if self.injections:
                    rec["injections"] = self.injections[i]
                f.write(json.dumps(rec) + "\n")

    def iter_events(self, chunk_minutes: int = 10, time_order: bool = True) -> Iterator[dict]:
        """Pre-aggregated events (DESIGN.md Event contract), one per (video, chunk) with counts.

        Organic counts of each hour are split over chunks of ``chunk_minutes`` minutes; injected
        minute-level extras (spikes, off-peak bursts) are their own events at their exact
        minute. Only non-zero metrics appear. With ``time_order`` events come in global
        time order (hour by hour), else video by video. Per video-hour, events sum to counts.
        """
        if not 1 <= chunk_minutes <= 60:
            raise ValueError("chunk_minutes must be in 1..60")
        rng = np.random.default_rng([self.seed, 11])
        T, N = self.hours, len(self)
        bins = np.append(np.arange(0, 60, chunk_minutes), 60)
        C = np.rint(self.counts).astype(np.int64)
        org = C.copy()
        ex = self.minute_extras
        if ex.size:
            np.subtract.at(org, (ex[:, 0], ex[:, 2], ex[:, 1]), ex[:, 4])
        extras, onsets = self._minute_index()
        pubs = [self.published_at(i) for i in range(N)]
        pub_sec = (np.asarray(self.published_hour, dtype=np.int64) * SECONDS_PER_HOUR
                   + (0 if self.published_minute is None else np.asarray(self.published_minute) * 60))

        def make(i: int, ts: int, vals) -> dict:
            ev = {"video_id": self.video_ids[i], "ts": int(ts)}
            for m, v in zip(METRICS, vals, strict=True):
                if v:
                    ev[m] = int(v)
            ev["published_at"] = pubs[i]
            ev["category"] = self.category[i]
            return ev

        def chunk_ts(i: int, t: int, b: int) -> int:
            # Chunk start, never before publication (the publication hour starts mid-hour).
            return max((self.start_hour + t) * SECONDS_PER_HOUR + int(bins[b]) * 60, int(pub_sec[i]))

        if not time_order:
            for i in range(N):
                rows_on = onsets.get(i, {})
                split = self._split_minutes(rng, org[i], rows_on, bins)  # (4, T, B)
                evs = []
                tt, bb = np.nonzero(split.any(axis=0))
                for t, b, vals in zip(tt.tolist(), bb.tolist(), split[:, tt, bb].T.tolist(), strict=True):
                    evs.append((chunk_ts(i, t, b), 0, make(i, chunk_ts(i, t, b), vals)))
                e = extras.get(i)
                if e is not None:
                    for _, t, m, minute, cnt in e.tolist():
                        ts = (self.start_hour + t) * SECONDS_PER_HOUR + minute * 60
                        vals = [0, 0, 0, 0]
                        vals[m] = cnt
                        evs.append((ts, 1, make(i, ts, vals)))
                evs.sort(key=lambda x: (x[0], x[1]))
                for _, _, ev in evs:
                    yield ev
            return

        widths = np.diff(bins).astype(np.float64)
        pv = widths / widths.sum()
        onsets_by_t: dict[int, list[tuple[int, int, float]]] = {}
        for i, per_t in onsets.items():
            for t, (m0, w) in per_t.items():
                onsets_by_t.setdefault(t, []).append((i, m0, w))
        extras_by_t: dict[int, list] = {}
        if ex.size:
            for i, t, m, minute, cnt in ex.tolist():
                extras_by_t.setdefault(int(t), []).append((int(i), int(m), int(minute), int(cnt)))
        for t in range(T):
            ct = org[:, :, t]  # (N, 4)
            split = rng.multinomial(ct, pv)  # (N, 4, B)
            for i, m0, w in onsets_by_t.get(t, []):
                p = self._minute_pvals(m0, w)
                pb = np.add.reduceat(p, bins[:-1])
                split[i] = rng.multinomial(ct[i], pb / pb.sum())
            evs = []
            vv, bb = np.nonzero(split.any(axis=1))
            for i, b, vals in zip(vv.tolist(), bb.tolist(), split[vv, :, bb].tolist(), strict=True):
                ts = chunk_ts(i, t, b)
                evs.append((ts, i, 0, vals))
            for i, m, minute, cnt in extras_by_t.get(t, []):
                ts = (self.start_hour + t) * SECONDS_PER_HOUR + minute * 60
                vals = [0, 0, 0, 0]
                vals[m] = cnt
                evs.append((ts, i, 1, vals))
            evs.sort(key=lambda x: (x[0], x[1], x[2]))
            for ts, i, _, vals in evs:
                yield make(i, ts, vals)


# ---------------------------------------------------------------------- helpers
def _logu(rng, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _surge_shape(tt: np.ndarray, t0: np.ndarray, rise: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Rise-then-decay bump per row, normalised to a peak of 1 (0 before ``t0``)."""
    k = tt[None, :] - t0[:, None]
    on = k >= 0
    kk = np.where(on, k, 0).astype(np.float64)
    g = (1.0 - np.exp(-(kk + 1.0) / rise[:, None])) * np.exp(-kk / tau[:, None])
    g = np.where(on, g, 0.0)
    mx = g.max(axis=1, keepdims=True)
    return g / np.where(mx > 0, mx, 1.0)


# ---------------------------------------------------------------------- organic model
def _texture(trng, texture, N: int, T: int, kind: np.ndarray, start: int):
    """(N, T) shared and (N, 3, T) per-metric log-multipliers from real series (0 = none),
    the diurnal depth factor, and each video's texture source name ("" = none)."""
    shared = np.zeros((N, T))
    per_metric = np.zeros((N, 3, T))
    depth = np.ones(N)
    source = [""] * N
    if texture is None:
        return shared, per_metric, depth, source
    k_real, k_sparse = ORGANIC_KINDS.index("real_textured"), ORGANIC_KINDS.index("sparse")
    full = kind == k_real
    mild = (~full) & (kind != k_sparse) & (trng.random(N) < MILD_TEXTURE_SHARE)
    idx = np.flatnonzero(full | mild)
    if idx.size == 0:
        return shared, per_metric, depth, source
    rows, names = texture.sample(trng, idx.size, T)
    side, _ = texture.sample(trng, idx.size * 3, T)
    strength = np.where(full[idx], trng.uniform(0.6, 1.0, idx.size), trng.uniform(0.25, 0.7, idx.size))
    shared[idx] = strength[:, None] * rows
    per_metric[idx] = trng.uniform(0.0, 0.35, (idx.size, 3))[:, :, None] * side.reshape(idx.size, 3, T)
    depth[idx] = np.where(full[idx], trng.uniform(0.0, 0.5, idx.size), 1.0)  # the series has a rhythm
    for j, i in enumerate(idx.tolist()):
        source[i] = names[j]
    return shared, per_metric, depth, source


def _organic(rng, N: int, T: int, start: int, kind: np.ndarray, room: np.ndarray, tex=None, adjust=None,
             in_window: np.ndarray | None = None):
    tt = np.arange(T)
    abs_h = start + tt
    k_viral, k_news = ORGANIC_KINDS.index("viral"), ORGANIC_KINDS.index("news")
    k_tz, k_seas = ORGANIC_KINDS.index("other_timezone"), ORGANIC_KINDS.index("seasonal")
    k_sparse = ORGANIC_KINDS.index("sparse")

    # Category (news videos lean to the news category).
    cat = rng.choice(len(CATEGORIES), size=N, p=CATEGORY_WEIGHTS)
    news_cat = (kind == k_news) & (rng.random(N) < 0.55)
    cat[news_cat] = CATEGORIES.index("news")

    # Publication: ~1/3 inside the window (leaving ``room`` hours), others up to 120 days before.
    hi = T - room
    in_win = (rng.random(N) < 0.33) & (hi > 0)
    if in_window is not None:  # 1: published inside the window, 0: before it, -1: drawn as above
        in_win = np.where(in_window == 1, hi > 0, np.where(in_window == 0, False, in_win))
    pub_in = np.floor(rng.random(N) * np.maximum(hi, 1)).astype(np.int64)
    age0 = np.rint(_logu(rng, 1.0, 2880.0, N)).astype(np.int64)
    pub_idx = np.where(in_win, pub_in, -age0)
    pub_minute = rng.integers(0, 60, N)

    # Time zones: 1-3 zones; dominant first.
    nz = rng.choice([1, 2, 3], size=N, p=[0.45, 0.35, 0.20])
    offs = rng.integers(-8, 10, size=(N, 3))
    offs[:, 0] = rng.choice(HOME_ZONES, size=N, p=HOME_ZONE_P)
    tz = kind == k_tz
    nz[tz] = 1
    offs[tz, 0] = rng.choice(FAR_ZONES, size=int(tz.sum()))
    for j in (1, 2):
        for _ in range(4):
            dup = (offs[:, j] == offs[:, 0]) | ((j == 2) & (offs[:, 2] == offs[:, 1]))
            if not dup.any():
                break
            offs[dup, j] = rng.integers(-8, 10, int(dup.sum()))
    wz = rng.gamma(np.array([4.0, 1.2, 1.2])[None, :].repeat(N, 0))
    wz[np.arange(3)[None, :] >= nz[:, None]] = 0.0
    top = wz.argmax(axis=1)
    r = np.arange(N)
    w0 = wz[r, 0].copy()
    wz[r, 0] = wz[r, top]
    wz[r, top] = w0
    wz /= wz.sum(axis=1, keepdims=True)

    # Diurnal curve per zone, with per-video phase, sharpness and depth.
    shift = rng.uniform(-1.2, 1.2, N)
    gam = rng.uniform(0.6, 1.6, N)
    depth = rng.uniform(0.55, 1.0, N)
    grid = np.arange(24)
    x = (abs_h[None, None, :] + offs[:, :, None] - shift[:, None, None]) % 24
    prof = np.interp(x, grid, DIURNAL_24, period=24) ** gam[:, None, None]
    m24 = (np.interp((grid[None, :] - shift[:, None]) % 24, grid, DIURNAL_24, period=24)
           ** gam[:, None]).mean(axis=1)
    diurnal = (wz[:, :, None] * prof).sum(axis=1) / m24[:, None]
    if tex is not None:
        depth = depth * tex[2]
    diurnal = 1.0 - depth[:, None] + depth[:, None] * diurnal

    # Weekly seasonality (local day of the dominant zone; Monday = 0).
    dow = ((abs_h[None, :] + offs[:, :1]) // 24 + 3) % 7
    week = rng.lognormal(0.0, 0.04, size=(N, 7))
    lift = np.exp(rng.normal(math.log(1.08), 0.12, N))
    week[:, 5] *= lift * rng.uniform(0.93, 1.05, N)
    week[:, 6] *= lift
    seas = np.flatnonzero(kind == k_seas)
    stype = rng.choice(3, size=seas.size, p=[0.45, 0.30, 0.25])
    for j, s in zip(seas.tolist(), stype.tolist(), strict=True):
        if s == 0:  # strong weekend audience
            week[j, 5:] *= rng.uniform(1.8, 3.5) / lift[j]
            week[j, 4] *= rng.uniform(1.0, 1.4)
        elif s == 1:  # weekday / work-hours audience
            week[j, 5:] *= rng.uniform(0.3, 0.55) / lift[j]
            week[j, 4] *= 0.85
        else:  # a weekly show / match day
            d = rng.integers(0, 7)
            week[j, d] *= rng.uniform(2.5, 5.0)
            week[j, (d + 1) % 7] *= rng.uniform(1.2, 1.8)
    week /= week.mean(axis=1, keepdims=True)
    weekly = week[r[:, None], dow]

    # Post-publication decay.
    ageh = tt[None, :] - pub_idx[:, None]
    active = ageh >= 0
    frac = np.ones((N, T))
    at_pub = ageh == 0
    frac[at_pub] = ((60 - pub_minute[:, None]) / 60.0 * np.ones((1, T)))[at_pub]
    age = np.where(ageh > 0, ageh + 0.5, (60 - pub_minute[:, None]) / 120.0).astype(np.float64)
    age = np.maximum(age, 0.05)
    shape = rng.choice(3, size=N, p=[0.35, 0.45, 0.20])
    tau = _logu(rng, 6.0, 240.0, N)
    base = rng.uniform(0.005, 0.15, N)
    t0 = _logu(rng, 1.0, 48.0, N)
    alpha = rng.uniform(0.4, 1.6, N)
    tp = _logu(rng, 12.0, 200.0, N)
    kk = rng.uniform(1.5, 4.0, N)
    d_exp = np.exp(-age / tau[:, None]) + base[:, None]
    d_pow = (1.0 + age / t0[:, None]) ** (-alpha[:, None])
    u = age / tp[:, None]
    d_slow = u ** kk[:, None] * np.exp(kk[:, None] * (1.0 - u)) + base[:, None]
    decay = np.where(shape[:, None] == 0, d_exp, np.where(shape[:, None] == 1, d_pow, d_slow))
    sparse = kind == k_sparse
    decay[sparse] = d_pow[sparse] ** 0.3  # tiny videos: a flat-ish trickle
    ramp = 1.0 - np.exp(-age / _logu(rng, 0.3, 4.0, N)[:, None])
    decay = decay * ramp * frac * active
    nact = np.maximum(active.sum(axis=1), 1)
    decay /= np.maximum(decay.sum(axis=1) / nact, 1e-12)[:, None]

    # Audience size: typical views per active hour (heavy tailed).
    log10s = rng.normal(1.4, 1.0, N)
    tail = rng.random(N) < 0.03
    log10s[tail] = rng.uniform(4.0, 5.6, int(tail.sum()))
    log10s = np.clip(log10s, -0.5, 5.7)
    log10s[sparse] = rng.uniform(-1.3, -0.2, int(sparse.sum()))
    scale = 10.0 ** log10s

    # Autocorrelated log-noise (rate) and ratio drift.
    sig = rng.uniform(0.03, 0.28, N)
    phi = rng.uniform(0.6, 0.97, N)
    sig_r = rng.uniform(0.02, 0.20, (N, 3))
    phi_r = rng.uniform(0.85, 0.98, (N, 3))
    eps = rng.standard_normal((T, N, 4))
    ar = np.empty((N, 4, T))
    z = np.concatenate([sig[:, None], sig_r], axis=1) * eps[0]
    ph = np.concatenate([phi[:, None], phi_r], axis=1)
    sg = np.concatenate([sig[:, None], sig_r], axis=1)
    inn = sg * np.sqrt(1.0 - ph**2)
    for t in range(T):
        if t:
            z = ph * z + inn * eps[t]
        ar[:, :, t] = z
    ar = np.exp(ar - 0.5 * sg[:, :, None] ** 2)

    # Mild organic bumps (mentions, recommendations) on ~35% of non-sparse videos.
    lo = np.maximum(pub_idx, 0)
    mult = np.ones((N, T))
    for _ in range(2):
        has = (rng.random(N) < 0.25) & ~sparse
        tb = lo + np.floor(rng.random(N) * np.maximum(T - lo, 1)).astype(np.int64)
        g = _surge_shape(tt, tb, _logu(rng, 1.0, 4.0, N), _logu(rng, 2.0, 24.0, N))
        amp = rng.uniform(0.3, 1.5, N) * has
        mult *= 1.0 + amp[:, None] * g

    # Viral surges and news spikes: all metrics, ratios shift plausibly.
    surge = np.zeros((N, T))
    F = np.ones(N)
    rho = np.ones((N, 3))
    onset = np.full(N, -1, dtype=np.int64)
    onset_min = np.zeros(N, dtype=np.int64)
    viral = kind == k_viral
    news = kind == k_news
    hi_on = np.maximum(T - 6 - lo, 1)
    t_on = lo + 1 + np.floor(rng.random(N) * hi_on).astype(np.int64)
    t_on = np.minimum(t_on, T - 1)
    gv = _surge_shape(tt, t_on, _logu(rng, 1.0, 12.0, N), _logu(rng, 4.0, 96.0, N))
    F_v = _logu(rng, 3.0, 50.0, N)
    surge[viral] = gv[viral]
    F[viral] = F_v[viral]
    rho_v = np.stack([rng.uniform(0.6, 1.2, N), rng.uniform(0.7, 1.5, N), rng.uniform(1.0, 2.5, N)], 1)
    rho[viral] = rho_v[viral]
    # News: instant rise at an onset minute, exponential decay over hours.
    at_pub_news = news & (pub_idx >= 0) & (rng.random(N) < 0.35)
    t_news = np.where(at_pub_news, pub_idx, t_on)
    m_news = np.where(at_pub_news, pub_minute, rng.integers(0, 60, N))
    tau_n = _logu(rng, 1.5, 12.0, N)
    k = tt[None, :] - t_news[:, None]
    since = k - 0.5 + (60 - m_news[:, None]) / 60.0  # hours since onset, mid-hour
    gn = np.where(k > 0, np.exp(-np.maximum(since, 0.0) / tau_n[:, None]), 0.0)
    gn = np.where(k == 0, (60 - m_news[:, None]) / 60.0, gn)
    surge[news] = gn[news]
    F[news] = _logu(rng, 4.0, 100.0, N)[news]
    rho_n = np.stack([rng.uniform(0.7, 1.1, N), rng.uniform(1.0, 3.0, N), rng.uniform(1.0, 3.0, N)], 1)
    rho[news] = rho_n[news]
    onset[news] = t_news[news]
    onset_min[news] = m_news[news]
    boost = 1.0 + (F[:, None] - 1.0) * surge
    share = (boost - 1.0) / boost

    rate_v = scale[:, None] * decay * diurnal * weekly * ar[:, 0] * mult * boost
    if tex is not None:
        rate_v = rate_v * np.exp(tex[0])
    rate_v = rate_v / (1.0 + rate_v / 3e6)  # soft ceiling: a few million views per hour at most
    cat_ratios = np.array([CATEGORY_RATIOS[c] for c in CATEGORIES])
    ratios = cat_ratios[cat] * rng.lognormal(0.0, 0.45, (N, 3))
    ratios[:, 0] = np.minimum(ratios[:, 0], 0.35)
    lam = np.empty((N, 4, T))
    lam[:, 0] = rate_v
    for m in range(3):
        lam[:, m + 1] = rate_v * ratios[:, m:m + 1] * ar[:, m + 1] * (1.0 + (rho[:, m:m + 1] - 1.0) * share)
        if tex is not None:
            lam[:, m + 1] *= np.exp(tex[1][:, m])

    if adjust is not None:  # another generator's organic dynamics on the same base (dev/market.py)
        lam = adjust(lam, {"pub_idx": pub_idx, "pub_minute": pub_minute, "offs": offs, "wz": wz, "scale": scale,
                           "cat": cat, "ratios": ratios, "decay": decay, "diurnal": diurnal, "age": age,
                           "weekly": weekly, "shift": shift, "gam": gam, "depth": depth})
    # Over-dispersed counts: shared gamma shock + independent per-metric gamma noise. Most
    # videos are moderately noisy; ~15% are bursty (referral-driven audiences).
    ks = _logu(rng, 8.0, 200.0, N)
    bursty = rng.random(N) < 0.15
    ks[bursty] = _logu(rng, 2.5, 8.0, int(bursty.sum()))
    km = np.concatenate([_logu(rng, 30.0, 400.0, (N, 1)), _logu(rng, 5.0, 100.0, (N, 3))], axis=1)
    shock = rng.gamma(np.broadcast_to(ks[:, None], (N, T))) / ks[:, None]
    noise = rng.gamma(np.broadcast_to(km[:, :, None], (N, 4, T))) / km[:, :, None]
    counts = rng.poisson(lam * shock[:, None, :] * noise)

    # Organic sub-hour onsets: publication minute, news onset minute.
    ons = []
    for i in np.flatnonzero((pub_idx >= 0) & (pub_idx < T)).tolist():
        ons.append((i, int(pub_idx[i]), int(pub_minute[i]), 1.0))
    for i in np.flatnonzero(news & (onset >= 0) & (onset < T) & (onset != pub_idx)).tolist():
        t = int(onset[i])
        ons.append((i, t, int(onset_min[i]), float(share[i, t])))
    minute_onsets = np.array(ons, dtype=np.float64).reshape(-1, 4)

    return {
        "cat": cat, "pub_idx": pub_idx, "pub_minute": pub_minute, "offs": offs, "nz": nz,
        "wz": wz, "lam": lam, "counts": counts.astype(np.int64), "ratios": ratios,
        "minute_onsets": minute_onsets,
    }


# ---------------------------------------------------------------------- fake injection
class _Injector:
    def __init__(self, rng, C, lam, org, start: int):
        self.rng = rng
        self.C = C  # (N, 4, T) int64, modified in place
        self.lam = lam
        self.pub_idx = org["pub_idx"]
        self.offs = org["offs"]
        self.ratios = org["ratios"]
        self.cat = org["cat"]
        self.start = start
        N, _, T = C.shape
        self.T = T
        self.tt = np.arange(T)
        self.HP = np.zeros((N, len(PATTERNS), T), dtype=bool)
        self.HM = np.zeros((N, 4, T), dtype=bool)
        self.extras: list[tuple[int, int, int, int, int]] = []
        lo = np.maximum(self.pub_idx, 0)
        act = self.tt[None, :] >= lo[:, None]
        masked = np.where(act[:, None, :], lam, np.nan)
        self.level = np.nan_to_num(np.nanmedian(masked, axis=2))  # (N, 4) typical hourly level

    def _avail(self, i: int, free: np.ndarray) -> np.ndarray:
        return free & (self.tt > self.pub_idx[i])

    def _stretch(self, mask: np.ndarray, min_len: int, length: int):
        starts, lens = runs(mask)
        ok = lens >= min_len
        if not ok.any():
            return None
        starts, lens = starts[ok], lens[ok]
        j = self.rng.choice(starts.size, p=lens / lens.sum())
        length = int(min(max(length, min_len), lens[j]))
        s = int(starts[j] + self.rng.integers(0, lens[j] - length + 1))
        return s, length

    def _mark(self, i: int, p: str, hours, metrics) -> None:
        hours = np.asarray(hours, dtype=np.int64)
        self.HP[i, PATTERNS.index(p), hours] = True
        for m in metrics:
            self.HM[i, m, hours] = True

    def _pick(self, options, probs):
        return options[self.rng.choice(len(options), p=probs)]

    # -- patterns -------------------------------------------------------------
    def spike(self, i: int, free: np.ndarray):
        rng = self.rng
        av = np.flatnonzero(self._avail(i, free))
        if av.size == 0:
            return None
        n = int(min(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]), av.size))
        hours = np.sort(rng.choice(av, n, replace=False))
        ms = self._pick(
            [(_V,), (_L,), (_V, _L), (_V, _L, _C, _S), (_C,), (_S,), (_L, _S), (_V, _L, _S)],
            [0.22, 0.22, 0.20, 0.10, 0.06, 0.06, 0.07, 0.07])
        factors = []
        for t in hours.tolist():
            f = float(_logu(rng, 3.0, 200.0))
            factors.append(f)
            k = int(rng.integers(1, 4))
            minutes = rng.choice(60, k, replace=False)
            share = rng.dirichlet(np.ones(k) * 2.0)
            for m in ms:
                lvl = self.level[i, m]
                floor = math.ceil(_SPIKE_FLOOR[m] * rng.uniform(1.0, 2.5) + 5.0 * math.sqrt(lvl))
                extra = int(max(math.ceil(f * lvl), floor))
                parts = rng.multinomial(extra, share)
                for mi, c in zip(minutes.tolist(), parts.tolist(), strict=True):
                    if c:
                        self.extras.append((i, t, m, mi, c))
                self.C[i, m, t] += extra
        self._mark(i, "spike", hours, ms)
        return {"hours": hours.tolist(), "metrics": list(ms), "factors": factors,
                "level": [float(x) for x in self.level[i]]}

    def offpeak_burst(self, i: int, free: np.ndarray):
        rng = self.rng
        z = int(self.offs[i, 0])
        local = (self.start + self.tt + z) % 24
        av = self._avail(i, free)
        night = (self.start + self.tt + z - 6) // 24  # night index, changes at 06:00 local
        n = int(rng.integers(2, 7))
        periodic = rng.random() < 0.75
        h0 = int(rng.integers(2, 6))
        if periodic:
            cand = np.flatnonzero(av & (local == h0))
            if cand.size == 0:
                periodic = False
        if periodic:
            n = min(n, cand.size)
            j = int(rng.integers(0, cand.size - n + 1))
            hours = list(cand[j:j + n].tolist())
            if h0 <= 4 and rng.random() < 0.2:  # two-hour bursts
                hours += [t + 1 for t in hours if t + 1 < self.T and av[t + 1]]
        else:
            cand = np.flatnonzero(av & (local >= 2) & (local <= 5))
            if cand.size == 0:
                return None
            nights = np.unique(night[cand])
            pick = rng.choice(nights, min(n, nights.size), replace=False)
            hours = [int(rng.choice(cand[night[cand] == d])) for d in pick.tolist()]
        hours = sorted(set(hours))
        ms = self._pick([(_V,), (_L,), (_V, _L), (_V, _L, _C, _S), (_L, _C), (_S,), (_V, _L, _S)],
                        [0.28, 0.22, 0.25, 0.08, 0.06, 0.05, 0.06])
        f = float(_logu(rng, 1.5, 40.0))
        width = int(rng.integers(3, 41))
        m_start = int(rng.integers(0, 61 - width))
        floors = _OFFPEAK_FLOOR * rng.uniform(1.0, 2.0)
        for t in hours:
            jit = rng.uniform(0.8, 1.25)
            for m in ms:
                lvl = self.level[i, m]
                extra = int(max(round(f * lvl * jit), math.ceil(floors[m] + 4.0 * math.sqrt(lvl))))
                parts = rng.multinomial(extra, np.ones(width) / width)
                for mi in np.flatnonzero(parts).tolist():
                    self.extras.append((i, t, m, m_start + mi, int(parts[mi])))
                self.C[i, m, t] += extra
        self._mark(i, "offpeak_burst", hours, ms)
        return {"hours": hours, "metrics": list(ms), "factor": round(f, 3), "periodic": bool(periodic),
                "local_hour": h0 if periodic else None, "zone": z}

    def decay_violation(self, i: int, free: np.ndarray):
        rng = self.rng
        av = self._avail(i, free)
        d0 = int(rng.integers(36, 97))
        D = int(rng.integers(12, 73))
        st = None
        for after in (d0, 36):
            st = self._stretch(av & (self.tt >= self.pub_idx[i] + after), 12, D)
            if st is not None:
                break
        if st is None:
            return None
        s, D = st
        e = s + D
        variant = self._pick(["plateau", "rising", "revival"], [0.40, 0.25, 0.35])
        ms = self._pick([(_V,), (_L,), (_V, _L)], [0.35, 0.25, 0.40])
        g = float(_logu(rng, 0.8, 8.0))
        k = np.arange(D, dtype=np.float64)
        if variant == "plateau":
            shape = np.ones(D)
        elif variant == "rising":
            shape = np.linspace(1.0, rng.uniform(1.5, 4.0), D)
        else:
            hold = max(1, int(D * rng.uniform(0.3, 0.7)))
            shape = (1.0 - np.exp(-(k + 1.0) / rng.uniform(2.0, 8.0))) * np.where(
                k < hold, 1.0, np.exp(-(k - hold) / rng.uniform(3.0, 12.0)))
            shape *= rng.uniform(1.5, 4.0)
        ref_lo = max(s - 24, 0, self.pub_idx[i] + 1)
        ref = self.lam[i, :, ref_lo:s].mean(axis=1) if s > ref_lo else self.lam[i, :, s:e].mean(axis=1)
        ref = np.maximum(ref, 0.3 * self.level[i])
        c = np.zeros(4)
        c[_V] = max(g * ref[_V], _DV_FLOOR[_V] * rng.uniform(1.0, 2.0))
        c[_L] = max(g * ref[_L], _DV_FLOOR[_L] * rng.uniform(1.0, 2.0))
        if _V in ms and _L in ms:
            c[_L] = max(c[_V] * self.ratios[i, 0] * rng.uniform(0.7, 3.0), _DV_FLOOR[_L])
        for m in ms:
            self.C[i, m, s:e] += rng.poisson(c[m] * shape) + 1
        hours = list(range(s, e))
        self._mark(i, "decay_violation", hours, ms)
        return {"hours": hours, "metrics": list(ms), "variant": variant, "factor": round(g, 3),
                "rate": [round(float(x), 3) for x in c]}

    def lockstep(self, i: int, free: np.ndarray):
        rng = self.rng
        st = self._stretch(self._avail(i, free), 12, int(rng.integers(12, 73)))
        if st is None:
            return None
        s, D = st
        e = s + D
        C = self.C[i]
        variant = self._pick(["ratio_lock", "multi_lock", "step"], [0.45, 0.20, 0.35])
        own = self.ratios[i]
        info: dict = {"variant": variant}
        touched: list[int] = []
        if variant in ("ratio_lock", "multi_lock"):
            if variant == "ratio_lock":
                a, b = self._pick([(_V, _L), (_V, _S), (_V, _C), (_L, _S)], [0.6, 0.15, 0.1, 0.15])
                own_r = own[b - 1] if a == _V else own[_S - 1] / max(own[_L - 1], 1e-6)
                if a == _V and b == _L and rng.random() < 0.5:
                    kb = float(rng.choice([0.02, 0.05, 0.1, 0.2, 0.25]))
                elif a == _V:  # bots keep comments/shares at a fixed (not tiny) share of views
                    kb = float(min(max(own_r * rng.uniform(0.8, 2.5), rng.uniform(0.004, 0.03)), 0.9))
                else:
                    kb = float(min(own_r * rng.uniform(0.8, 2.0), 0.9))
                locks = [(a, b, kb)]
            else:
                a = _V
                locks = [(_V, m, float(min(own[m - 1] * rng.uniform(0.8, 1.5), 0.5))) for m in (_L, _C, _S)]
            k_main = locks[0][2]
            need = rng.uniform(5.0, 30.0) / k_main  # the locked metric must be visible (>= ~5/h)
            if C[a, s:e].mean() < need:  # bots drive the base metric too
                C[a, s:e] += rng.poisson(need * rng.uniform(1.0, 2.0), D)
                touched.append(a)
            for src, dst, kk in locks:
                C[dst, s:e] = np.floor(kk * C[src, s:e] + 0.5).astype(np.int64)
                touched.append(dst)
            info["locks"] = [{"source": METRICS[x], "target": METRICS[y], "k": kk} for x, y, kk in locks]
        else:
            ms = self._pick([(_V, _L), (_V, _L, _S), (_L, _C), (_V, _L, _C, _S)], [0.5, 0.2, 0.1, 0.2])
            steps = {}
            if _V in ms:
                cv = max(round(rng.uniform(1.5, 10.0) * self.level[i, _V]), int(rng.integers(30, 301)))
                steps[_V] = int(cv)
                for m in ms:
                    if m != _V:
                        steps[m] = int(max(round(cv * own[m - 1] * rng.uniform(1.0, 3.0)), rng.integers(2, 8)))
            else:
                cl = max(round(rng.uniform(2.0, 10.0) * self.level[i, _L]), int(rng.integers(10, 101)))
                steps[_L] = int(cl)
                for m in ms:
                    if m != _L:
                        steps[m] = int(max(round(cl * rng.uniform(0.1, 0.5)), 2))
            for m, c in steps.items():
                C[m, s:e] += c
                touched.append(m)
            info["steps"] = {METRICS[m]: c for m, c in steps.items()}
        hours = list(range(s, e))
        touched = sorted(set(touched))
        self._mark(i, "lockstep", hours, touched)
        info.update({"hours": hours, "metrics": touched})
        return info

    def ratio_anomaly(self, i: int, free: np.ndarray):
        rng = self.rng
        st = self._stretch(self._avail(i, free), 6, int(rng.integers(6, 73)))
        if st is None:
            return None
        s, D = st
        e = s + D
        C = self.C[i]
        variant = self._pick(
            ["likes_gt_views", "views_no_engagement", "shares_gt_likes", "likes_excess", "comments_excess"],
            [0.25, 0.25, 0.20, 0.20, 0.10])
        info: dict = {"variant": variant}
        if variant == "likes_gt_views":
            q = rng.uniform(1.1, 4.0)
            fl = rng.uniform(3.0, 20.0)
            target = np.ceil(q * C[_V, s:e]) + rng.poisson(fl, D) + 1
            C[_L, s:e] = np.maximum(C[_L, s:e], target.astype(np.int64))
            ms = [_L]
            info["q"] = round(q, 3)
        elif variant == "views_no_engagement":
            F = float(_logu(rng, 3.0, 100.0))
            lvl = max(self.lam[i, _V, s:e].mean(), self.level[i, _V])
            C[_V, s:e] += rng.poisson(max(F * lvl, rng.uniform(30.0, 80.0)), D)
            ms = [_V]
            info["factor"] = round(F, 3)
        elif variant == "shares_gt_likes":
            q = rng.uniform(2.0, 15.0)
            target = np.ceil(q * C[_L, s:e]) + rng.poisson(rng.uniform(3.0, 20.0), D) + 1
            C[_S, s:e] = np.maximum(C[_S, s:e], target.astype(np.int64))
            ms = [_S]
            info["q"] = round(q, 3)
        elif variant == "comments_excess":
            q = rng.uniform(1.0, 5.0)
            target = np.ceil(q * C[_L, s:e]) + rng.poisson(rng.uniform(3.0, 15.0), D) + 1
            C[_C, s:e] = np.maximum(C[_C, s:e], target.astype(np.int64))
            ms = [_C]
            info["q"] = round(q, 3)
        else:  # likes_excess: like-rate far above the video's own and the category's
            cat_l = CATEGORY_RATIOS[CATEGORIES[self.cat[i]]][0]
            target_r = min(max(self.ratios[i, 0], cat_l) * rng.uniform(3.0, 10.0), 0.9)
            ms = [_L]
            if C[_V, s:e].mean() < 20:  # bots bring some views along on tiny videos
                C[_V, s:e] += rng.poisson(rng.uniform(20.0, 60.0), D)
                ms = [_V, _L]
            noisy = target_r * C[_V, s:e] * rng.gamma(20.0, 1 / 20.0, D)
            C[_L, s:e] = np.maximum(C[_L, s:e], np.rint(noisy).astype(np.int64))
            info["target_ratio"] = round(float(target_r), 4)
            info["own_ratio"] = round(float(self.ratios[i, 0]), 5)
        hours = list(range(s, e))
        self._mark(i, "ratio_anomaly", hours, ms)
        info.update({"hours": hours, "metrics": ms})
        return info


# ---------------------------------------------------------------------- entry point
def simulate(n_videos: int, seed: int, hours: int = 168, fake_fraction: float = 0.35,
             start_hour: int | None = None, id_prefix: str = "v", texture=None) -> SimulatedDataset:
    """Simulate ``n_videos`` videos over ``hours`` hours; ``fake_fraction`` get fake engagement.

    Fake videos are split evenly across ``PATTERNS`` (primary pattern), ~15% get a second one.
    The window starts at ``start_hour`` (default: Monday 2026-01-05 00:00 UTC).

    ``texture`` (an object with ``sample(rng, n, hours) -> (log-multipliers, names)``, e.g.
    ``stream_detector.dev.texture.RealTexture``) gives organic curves real-world hourly texture: a share
    of regular videos become ``real_textured``, a share of the others carry it mildly, and
    fakes are injected into textured curves as into any other. Its draws come from their own
    generator: without ``texture`` the output is the same as before texture existed.
    """
    N, T = int(n_videos), int(hours)
    if N < 0 or T < 1:
        raise ValueError("n_videos must be >= 0 and hours >= 1")
    if not 0.0 <= fake_fraction <= 1.0:
        raise ValueError("fake_fraction must be in [0, 1]")
    start = DEFAULT_START_HOUR if start_hour is None else int(start_hour)
    rng = np.random.default_rng(seed)

    kind = rng.choice(len(ORGANIC_KINDS), size=N, p=ORGANIC_MIX)
    n_fake = int(round(fake_fraction * N))
    fake_idx = rng.permutation(N)[:n_fake]
    primary = np.full(N, -1, dtype=np.int64)
    primary[fake_idx] = rng.permutation(np.arange(n_fake) % len(PATTERNS))
    # Hours a video needs after publication inside the window: a fake's primary pattern must
    # fit; organic videos draw a pattern-like room too, so publication time carries no label.
    virtual = np.where(primary >= 0, primary, rng.integers(0, len(PATTERNS), N))
    room = np.array([_PATTERN_ROOM[p] for p in PATTERNS], dtype=np.int64)[virtual]

    trng = np.random.default_rng([int(seed), 17])
    if texture is not None:
        regular = kind == ORGANIC_KINDS.index("regular")
        kind[regular & (trng.random(N) < REAL_TEXTURED_SHARE)] = ORGANIC_KINDS.index("real_textured")
    tex = _texture(trng, texture, N, T, kind, start)
    org = _organic(rng, N, T, start, kind, room, tex if texture is not None else None)
    C = org["counts"]
    organic_counts = C.astype(np.float64)
    inj = _Injector(rng, C, org["lam"], org, start)
    injections: list[list[dict]] = [[] for _ in range(N)]
    pattern = [""] * N
    for i in np.sort(fake_idx).tolist():
        p1 = PATTERNS[primary[i]]
        free = np.ones(T, dtype=bool)
        info = getattr(inj, p1)(i, free)
        if info is None:
            p1, info = "spike", inj.spike(i, free)
        if info is None:
            continue
        pattern[i] = p1
        injections[i].append({"pattern": p1, **info})
        if rng.random() < 0.15:
            others = [p for p in PATTERNS if p != p1]
            p2 = others[int(rng.integers(0, len(others)))]
            free = ~inj.HP[i].any(axis=0)
            info2 = getattr(inj, p2)(i, free)
            if info2 is not None:
                injections[i].append({"pattern": p2, **info2})
    hour_fake = inj.HP.any(axis=1)
    label = hour_fake.any(axis=1).astype(np.int64)
    minute_extras = np.array(inj.extras, dtype=np.int64).reshape(-1, 5)

    offs, nz, wz = org["offs"], org["nz"], org["wz"]
    return SimulatedDataset(
        video_ids=[f"{id_prefix}{seed}-{i:06d}" for i in range(N)],
        start_hour=start,
        counts=C.astype(np.float64),
        hour_fake=hour_fake,
        hour_patterns=inj.HP,
        hour_metrics=inj.HM,
        label=label,
        pattern=pattern,
        organic_kind=[ORGANIC_KINDS[k] for k in kind.tolist()],
        category=[CATEGORIES[c] for c in org["cat"].tolist()],
        published_hour=(start + org["pub_idx"]).astype(np.int64),
        timezone_offsets=[offs[i, : nz[i]].tolist() for i in range(N)],
        seed=int(seed),
        organic_counts=organic_counts,
        timezone_weights=[[round(float(w), 4) for w in wz[i, : nz[i]]] for i in range(N)],
        published_minute=org["pub_minute"].astype(np.int64),
        injections=injections,
        minute_extras=minute_extras,
        minute_onsets=org["minute_onsets"],
        texture_source=tex[3] if texture is not None else [],
    )
