"""Features, pattern detectors, flags and the scoring core on hand-made curves."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.features import CHANNELS, build_features, fit_normalization, normalize
from stream_detector.flags import flag_id, merge_windows, severity
from stream_detector.models import ModelArtifact
from stream_detector.patterns import PATTERNS, detect
from stream_detector.scoring import FlaggedWindow, Scorer
from stream_detector.series import HourlySeries

W = 168
START = 1767571200 // 3600  # Monday 2026-01-05 00:00 UTC


def organic(rng, level=200.0, tz=0, like_rate=0.08) -> np.ndarray:
    """A plausible organic week: diurnal rhythm in the audience's zone, noise, correlated metrics."""
    hours = np.arange(W)
    local = (hours + tz) % 24
    rhythm = 0.25 + 0.75 * np.exp(-0.5 * ((local - 20) / 4.0) ** 2) + 0.3 * np.exp(-0.5 * ((local - 12) / 3.0) ** 2)
    views = rng.poisson(rng.gamma(20, 1 / 20, W) * level * rhythm)
    likes = rng.binomial(views, like_rate * rng.uniform(0.8, 1.2))
    comments = rng.binomial(views, 0.01)
    shares = rng.binomial(views, 0.005)
    return np.stack([views, likes, comments, shares]).astype(float)


def evidence_for(counts: np.ndarray):
    counts = counts[None]
    starts = np.array([START])
    _, mask = build_features(counts, starts, np.array([-1]))
    return detect(counts, starts, mask, np.array([-1]))


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_features_shape_mask_and_no_nan(rng):
    c = organic(rng)
    c[:, :30] = 0  # published at hour 30
    x, mask = build_features(c[None], np.array([START]), np.array([START + 30]))
    assert x.shape == (1, len(CHANNELS), W)
    assert np.isfinite(x).all()
    assert mask[0, :30].sum() == 0 and mask[0, 30:].all()
    assert np.all(x[0, :, :30] == 0), "nothing leaks into hours before publication"


def test_normalisation_uses_only_the_statistics_it_is_given(rng):
    x, mask = build_features(organic(rng)[None], np.array([START]), np.array([-1]))
    stats = fit_normalization(x, mask)
    other = fit_normalization(x * 3 + 1, mask)
    assert not np.allclose(normalize(x, mask, stats), normalize(x, mask, other))
    with pytest.raises(ValueError):
        normalize(x, mask, stats | {"channels": ["x"]})


def test_features_are_blind_to_the_audience_time_zone(rng):
    """Same curve shifted by a time zone: the relative channels carry the same information."""
    base = organic(np.random.default_rng(3), tz=0)
    shifted = np.roll(base, 9, axis=1)
    xa, _ = build_features(base[None], np.array([START]), np.array([START - 500]))
    xb, _ = build_features(shifted[None], np.array([START]), np.array([START - 500]))
    q = CHANNELS.index("diurnal_quietness")
    # equal up to the hours np.roll wrapped around the week's edges
    assert np.allclose(xa[0, q, 24:-24], np.roll(xb[0, q], -9)[24:-24], atol=0.05)
    assert not np.allclose(xa[0, q, 24:-24], xb[0, q, 24:-24], atol=0.05), "the channel does follow the rhythm"


def test_spike_detector_names_an_implausible_like_spike(rng):
    c = organic(rng)
    c[1, 100] += 10_000
    ev = evidence_for(c)
    assert ev.evidence[0, PATTERNS.index("spike"), 100] >= 0.5
    assert ev.metrics[0, PATTERNS.index("spike"), 1, 100], "likes are the metric involved"
    assert ev.evidence[0, PATTERNS.index("spike")].argmax() == 100


def test_lockstep_detector_sees_noise_free_tracking(rng):
    c = organic(rng, level=400)
    c[1, 60:90] = np.round(c[0, 60:90] * 0.1)
    ev = evidence_for(c)
    lock = ev.evidence[0, PATTERNS.index("lockstep")]
    assert lock[62:88].min() >= 0.5
    assert lock[:50].max() < 0.5 and lock[100:].max() < 0.5


def test_ratio_detector_sees_more_likes_than_views(rng):
    c = organic(rng)
    c[1, 120:126] = c[0, 120:126] * 3 + 50
    ev = evidence_for(c)
    assert ev.evidence[0, PATTERNS.index("ratio_anomaly"), 121:125].min() >= 0.5


def test_offpeak_detector_sees_bursts_while_the_audience_sleeps(rng):
    c = organic(rng, level=300, tz=0)
    for day in range(2, 7):
        c[0, day * 24 + 3] += 4000  # 03:00 local, five nights
        c[1, day * 24 + 3] += 400
    ev = evidence_for(c)
    off = ev.evidence[0, PATTERNS.index("offpeak_burst")]
    assert all(off[day * 24 + 3] >= 0.5 for day in range(2, 7))


def test_detectors_stay_quiet_on_organic_curves():
    for seed in range(8):
        r = np.random.default_rng(100 + seed)
        ev = evidence_for(organic(r, level=float(r.choice([5, 50, 500, 5000])), tz=int(r.integers(-8, 9))))
        assert ev.evidence.max() < 0.5, f"seed {seed}: {ev.evidence.max(axis=2)}"


def test_flag_id_depends_only_on_video_and_hours():
    a = [FlaggedWindow(10, 12, 0.9, ("likes",), ("spike",))]
    b = [FlaggedWindow(10, 12, 0.7, ("views",), ("lockstep",))]
    assert flag_id("v", a) == flag_id("v", b)
    assert flag_id("v", a) != flag_id("w", a)
    assert flag_id("v", a) != flag_id("v", [FlaggedWindow(10, 13, 0.9, ("likes",), ("spike",))])


def test_merged_flag_hours_only_grow_and_latest_knowledge_wins():
    published = [{"start": "2026-01-05T10:00:00Z", "end": "2026-01-05T12:00:00Z", "score": 0.8,
                  "metrics": ["likes"], "patterns": ["spike"]}]
    current = [FlaggedWindow(START + 11, START + 14, 0.95, ("views",), ("lockstep",))]
    merged = merge_windows(published, current)
    assert [(w.start_hour - START, w.end_hour - START) for w in merged] == [(10, 14)]
    assert merged[0].patterns == ("spike", "lockstep") and merged[0].score == 0.95
    assert merge_windows(published, []) == merge_windows(published, merge_windows(published, []))


def test_severity_grows_with_the_score():
    order = ["low", "medium", "high", "critical"]
    values = [order.index(severity(s, 0.3)) for s in (0.31, 0.55, 0.75, 0.99)]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 3


@pytest.fixture(scope="module")
def scorer():
    return Scorer(ModelArtifact.load(DEFAULT_MODEL_PATH))


def test_scorer_flags_a_blatant_spike_and_explains_it(scorer):
    r = np.random.default_rng(5)
    c = organic(r)
    c[1, 140] += 10_000
    vs = scorer.score([HourlySeries("spiky", START, c, START - 300)])[0]
    assert vs.flagged and vs.score >= scorer.model.threshold
    assert any(w.start_hour <= START + 140 < w.end_hour for w in vs.windows)
    hit = next(w for w in vs.windows if w.start_hour <= START + 140 < w.end_hour)
    assert "likes" in hit.metrics and "spike" in hit.patterns
    assert "likes" in vs.explanation and "spike" in vs.explanation


def test_scorer_leaves_organic_curves_alone(scorer):
    series = [HourlySeries(f"o{s}", START, organic(np.random.default_rng(200 + s), level=lvl), START - 400)
              for s, lvl in enumerate([3, 30, 300, 3000, 30000])]
    scores = scorer.score(series)
    assert not any(v.flagged for v in scores), [(v.video_id, v.score) for v in scores]


def test_long_series_are_scored_in_windows_and_short_ones_padded(scorer):
    r = np.random.default_rng(9)
    long_counts = np.concatenate([organic(r), organic(r)], axis=1)
    long_counts[1, 20] += 20_000  # in the first week only
    full = scorer.score_full([HourlySeries("long", START, long_counts, START - 10)])[0]
    last_week_only = scorer.score([HourlySeries("long", START, long_counts, START - 10)])[0]
    assert full.flagged and any(w.start_hour == START + 20 for w in full.windows)
    assert not any(w.start_hour == START + 20 for w in last_week_only.windows)
    short = scorer.score([HourlySeries("short", START, organic(r)[:, :10], START)])[0]
    assert 0.0 <= short.score <= 1.0


def test_lagging_on_selected_cells_equals_the_dense_computation(rng):
    from stream_detector.patterns import lagging

    n, w = 6, 48
    before = rng.gamma(1.0, 40.0, (n, 4, w)) * (rng.random((n, 4, w)) > 0.2)
    now = before * np.exp(rng.normal(0, 1.2, (n, 4, w))) * (rng.random((n, 4, w)) > 0.1)
    rise = np.log1p(now) - np.log1p(before)
    phi = rng.uniform(0.05, 1.0, (n, 4))
    where = rng.random((n, 4, w)) > 0.7
    for unknown in (0.0, 0.6):
        dense = lagging(now, before, rise, phi, unknown=unknown)
        assert dense.max() > 0.5  # the draw has lagging metrics to find
        picked = lagging(now, before, rise, phi, unknown=unknown, where=where)
        np.testing.assert_array_equal(picked, np.where(where, dense, 0.0))
    assert not lagging(now, before, rise, phi, where=np.zeros_like(where)).any()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 12, 13, 40])
def test_spread_is_the_trailing_max_over_covering_windows(rng, size):
    from stream_detector.patterns import _spread

    flags = rng.random((3, 4, 30)) * (rng.random((3, 4, 30)) > 0.8)
    want = np.stack([flags[..., max(0, t - size + 1): t + 1].max(axis=-1) for t in range(30)], axis=-1)
    np.testing.assert_array_equal(_spread(flags, size), want)


@pytest.mark.parametrize(("size", "stride"), [(49, 4), (13, 2), (5, 1)])
def test_rolling_median_equals_the_median_of_each_reflect_padded_window(rng, size, stride):
    from stream_detector.signals import rolling_median

    w, half = 60, size // 2
    dense = rng.poisson(20.0, (3, 4, w)).astype(float)
    sparse = dense * (rng.random((3, 4, w)) < 0.15)  # rows with few non-zero hours: the shortcut
    signed = rng.normal(0, 1, (3, 4, w)) * (rng.random((3, 4, w)) < 0.3)  # negative values too
    for x in (dense, sparse, signed, np.concatenate([dense, sparse, signed])):
        padded = np.pad(x, [(0, 0), (0, 0), (half, half)], mode="reflect").astype(np.float32)
        want = np.stack([np.median(padded[..., c : c + size], axis=-1) for c in range(0, w, stride)], axis=-1)
        want = np.repeat(want, stride, axis=-1)[..., :w].astype(np.float64)
        np.testing.assert_array_equal(rolling_median(x, size, stride), want)


def test_sigmoid_in_place_equals_the_textbook_formula(rng):
    from stream_detector.patterns import _sigmoid

    x = np.concatenate([rng.normal(0, 10, 1000), [-1e9, -30.0, 0.0, 30.0, 1e9, np.nan]])
    np.testing.assert_array_equal(_sigmoid(x), 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30))))
    assert _sigmoid(np.float64(2.0)) == 1.0 / (1.0 + np.exp(-2.0))
    view = x[::2]
    before = view.copy()
    _sigmoid(view)
    np.testing.assert_array_equal(view, before)  # the input is left alone


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_centred_sums_equal_the_edge_padded_rolling_sum(rng, size):
    from stream_detector.patterns import _centred_sums, _rolling

    x = rng.poisson(5.0, (2, 4, 30)).astype(float) * rng.uniform(0.5, 2.0, (2, 4, 30))
    np.testing.assert_array_equal(_centred_sums(x, size), _rolling(x, size, "sum"))


def test_lockstep_computed_on_busy_videos_only_equals_every_video_computed(rng):
    from stream_detector import signals as sig
    from stream_detector.patterns import LOCKSTEP_HOURS, Lockstep, _window_sums

    quiet = [rng.poisson(0.5, (4, W)).astype(float) for _ in range(3)]
    steady = organic(rng)
    steady[1, 60:80] = np.round(0.1 * steady[0, 60:80])  # likes an exact fraction of views
    counts = np.stack([quiet[0], organic(rng), quiet[1], steady, quiet[2]])
    s = sig.compute(counts, np.full(len(counts), START), np.full(len(counts), -1))
    evidence, metrics = Lockstep().evidence(s)
    assert evidence[3].max() > 0.5  # the lockstep video is found
    busy = _window_sums((counts >= 3).astype(float), LOCKSTEP_HOURS) >= LOCKSTEP_HOURS
    every = Lockstep._busy(counts, busy)  # the same terms computed for every video
    np.testing.assert_array_equal(evidence, every.max(axis=1))
    np.testing.assert_array_equal(metrics, every >= 0.5)
    assert not evidence[[0, 2, 4]].any()


def test_masked_quantile_matches_numpy_quantile_on_the_valid_entries(rng):
    from stream_detector.signals import masked_quantile

    x = rng.normal(0, 1, (5, 3, 40))
    valid = rng.random((5, 3, 40)) < 0.4
    valid[0] = False  # rows with nothing valid: 0
    valid[1, 0] = True
    for q in (0.5, 0.8):
        got, k = masked_quantile(x, valid, q)
        np.testing.assert_array_equal(k, valid.sum(axis=-1))
        for idx in np.ndindex(k.shape):
            vals = np.sort(x[idx][valid[idx]])
            want = vals[int(np.floor(q * (len(vals) - 1)))] if len(vals) else 0.0
            assert got[idx] == want
    got, _ = masked_quantile(x[:, 0], valid[0, 0][None, :], 0.5)  # a mask broadcast over rows
    assert not got.any()


def _ring(views: list[int], likes: list[int]) -> np.ndarray:
    ring = np.zeros((4, 16), dtype=np.int64)
    ring[0, -len(views):], ring[1, -len(likes):] = views, likes
    return ring


@pytest.mark.parametrize(("views", "likes", "fires"), [
    ([0], [4000], True),  # bought likes on a new upload
    ([0, 0, 0], [60, 80, 100], True),  # a hundred likes a minute and nobody watching
    ([400, 3000], [30, 240], False),  # a fast organic start: reactions follow the views
    ([3], [35], False),  # a handful of reactions is never enough
    ([40, 40], [10, 300], False),  # 300 likes against 80 views in the ring: short of ten times
])
def test_a_burst_without_history_fires_only_on_reactions_far_beyond_every_view(views, likes, fires):
    from stream_detector.patterns import BurstDetector

    burst = BurstDetector().judge(_ring(views, likes), np.zeros((4, 0)), minute_head=1000)
    assert burst is not None and (burst.evidence >= 0.5) == fires
    if fires:
        assert burst.metrics == ("likes",) and burst.peak == max(likes) and burst.ring_views == sum(views)
        assert burst.minute == 1000 - (len(likes) - 1 - int(np.argmax(likes)))


def test_with_closed_history_a_burst_is_judged_against_the_usual_hour():
    from stream_detector.patterns import BurstDetector, usual_hour

    det = BurstDetector()
    closed = np.tile(np.array([[1000.0], [100.0], [5.0], [5.0]]), (1, 24))
    ring = _ring([0, 60], [5, 900])
    usual, _, mix = usual_hour(closed)
    assert det.judge(ring, closed, 500) == det.evidence(ring, usual, 500, mix)
    assert det.judge(ring, closed[:, :2], 500) == det.cold(ring, 500)  # two hours: too little history
    assert det.judge(_ring([0], [10]), closed, 500) is None  # no minute big enough to look at


def test_a_revival_with_strong_offpeak_evidence_is_named_not_a_crash():
    """The bug that stopped all detection: the revival rule renamed a ratio-driven window
    ``decay_violation`` (evidence below 0.3, so not ranked), and the loop over the other
    patterns read that rank (KeyError). A window days after publication, well above the day
    before, with a ratio shift and strong off-peak evidence."""
    from stream_detector.scoring import HourDetail, _names

    counts = np.zeros((4, W))
    counts[0] = 100.0
    counts[0, 100:112] = 400.0
    evidence = np.zeros((len(PATTERNS), W))
    evidence[PATTERNS.index("ratio_anomaly"), 100:112] = 1.0
    evidence[PATTERNS.index("offpeak_burst"), 100:112] = 0.95
    evidence[PATTERNS.index("lockstep"), 100:112] = 0.0
    detail = HourDetail(START, counts, evidence, evidence, np.zeros(W), np.zeros((4, W), bool), counts,
                        np.arange(W, dtype=float), age=np.arange(W) + 10.0)
    assert _names(detail, slice(100, 112), 12) == ["decay_violation"]
    evidence[PATTERNS.index("lockstep"), 100:112] = 0.95  # lockstep is specific enough to name itself
    assert _names(detail, slice(100, 112), 12) == ["lockstep"]


def _steady_rate_detail(age_at_start: float, metrics: tuple[int, ...], drip: float = 0.9,
                        ratio: float = 0.0):
    """A 30-hour window from hour 100 with drip-feed evidence (a steady added rate) and the
    metrics it implicates."""
    from stream_detector.scoring import HourDetail

    counts = np.full((4, W), 50.0)
    evidence = np.zeros((len(PATTERNS), W))
    evidence[PATTERNS.index("drip_feed"), 100:130] = drip
    evidence[PATTERNS.index("ratio_anomaly"), 100:130] = ratio
    implicated = np.zeros((4, W), bool)
    implicated[list(metrics), 100:130] = True
    return HourDetail(START, counts, evidence, evidence, np.zeros(W), implicated, counts,
                      np.arange(W, dtype=float), age=np.arange(W) - 100.0 + age_at_start)


def test_a_steady_rate_is_a_drip_on_a_young_video_and_a_revival_on_a_decayed_one():
    from stream_detector.scoring import REVIVAL_AGE_HOURS, _names

    young = _steady_rate_detail(REVIVAL_AGE_HOURS - 1.0, (0,))
    old = _steady_rate_detail(float(REVIVAL_AGE_HOURS), (0,))
    assert _names(young, slice(100, 130), 30) == ["drip_feed"]
    assert _names(old, slice(100, 130), 30) == ["decay_violation"]
    unknown_age = _steady_rate_detail(500.0, (0,))
    unknown_age.age = None  # no publication time: nothing says it decayed
    assert _names(unknown_age, slice(100, 130), 30) == ["drip_feed"]


def test_a_steady_rate_of_reactions_without_views_is_named_a_ratio_anomaly():
    """Likes bought alone break the video's mix however steady they come; with views among the
    implicated metrics, or a weak mix signal, the steady rate keeps its drip name."""
    from stream_detector.scoring import _names

    likes_alone = _steady_rate_detail(10.0, (1,), ratio=0.95)
    assert _names(likes_alone, slice(100, 130), 30) == ["ratio_anomaly"]
    assert _names(_steady_rate_detail(200.0, (2,), ratio=0.95), slice(100, 130), 30) == ["ratio_anomaly"]
    with_views = _steady_rate_detail(10.0, (0, 1), ratio=0.95)
    assert _names(with_views, slice(100, 130), 30) == ["drip_feed"]
    weak_mix = _steady_rate_detail(10.0, (1,), ratio=0.5)
    assert _names(weak_mix, slice(100, 130), 30) == ["drip_feed"]
