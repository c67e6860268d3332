"""Simulator: determinism, shapes, truth consistency and property checks per pattern/kind."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from stream_detector.dev.simulate import (
    CATEGORY_RATIOS,
    DEFAULT_START_HOUR,
    ORGANIC_KINDS,
    PATTERNS,
    SimulatedDataset,
    simulate,
)
from stream_detector.series import METRICS, SECONDS_PER_HOUR, HourlySeries

V, L, C, S = 0, 1, 2, 3


@pytest.fixture(scope="module")
def big() -> SimulatedDataset:
    return simulate(2000, seed=123)


@pytest.fixture(scope="module")
def small() -> SimulatedDataset:
    return simulate(60, seed=7, hours=48, fake_fraction=0.5)


def _injections(d: SimulatedDataset, pattern: str):
    for i, injs in enumerate(d.injections):
        for inj in injs:
            if inj["pattern"] == pattern:
                yield i, inj


# ---------------------------------------------------------------- basics
def test_deterministic_and_seed_dependent():
    a, b = simulate(300, seed=5), simulate(300, seed=5)
    for f in ("counts", "hour_fake", "hour_patterns", "hour_metrics", "label", "published_hour"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.pattern == b.pattern and a.organic_kind == b.organic_kind
    assert a.video_ids == b.video_ids and a.timezone_offsets == b.timezone_offsets
    c = simulate(300, seed=6)
    assert not np.array_equal(a.counts, c.counts)
    assert a.video_ids != c.video_ids


def test_shapes_and_dtypes(big):
    n, t = 2000, 168
    assert len(big) == n
    assert big.start_hour == DEFAULT_START_HOUR
    assert (big.start_hour // 24 + 3) % 7 == 0  # a Monday
    assert big.start_hour % 24 == 0
    assert big.counts.shape == (n, 4, t) and big.counts.dtype == np.float64
    assert big.hour_fake.shape == (n, t) and big.hour_fake.dtype == bool
    assert big.hour_patterns.shape == (n, len(PATTERNS), t) and big.hour_patterns.dtype == bool
    assert big.hour_metrics.shape == (n, 4, t) and big.hour_metrics.dtype == bool
    assert big.label.shape == (n,) and np.issubdtype(big.label.dtype, np.integer)
    assert big.published_hour.shape == (n,) and np.issubdtype(big.published_hour.dtype, np.integer)
    assert len(set(big.video_ids)) == n
    assert all(len(x) == n for x in (big.pattern, big.organic_kind, big.category, big.timezone_offsets))
    assert all(1 <= len(z) <= 3 and all(-8 <= o <= 9 for o in z) for z in big.timezone_offsets)


def test_counts_nonnegative_integers(big):
    assert (big.counts >= 0).all()
    assert np.array_equal(big.counts, np.rint(big.counts))
    assert (big.organic_counts >= 0).all()


def test_no_counts_before_publication(big):
    t = np.arange(big.hours)
    before = (big.start_hour + t)[None, :] < big.published_hour[:, None]
    assert big.counts.sum(axis=1)[before].sum() == 0


def test_every_pattern_and_kind_present(big):
    assert set(big.pattern) - {""} == set(PATTERNS)
    assert set(big.organic_kind) == set(ORGANIC_KINDS) - {"real_textured"}  # that one needs a texture source
    for p in PATTERNS:  # every pattern injected into several organic kinds
        kinds = {big.organic_kind[i] for i in range(len(big)) if big.pattern[i] == p}
        assert len(kinds) >= 4, (p, kinds)


def test_mix_and_even_pattern_split(big):
    assert abs(big.label.mean() - 0.35) < 0.01
    per = [big.pattern.count(p) for p in PATTERNS]
    assert max(per) - min(per) <= 1
    kinds = np.array(big.organic_kind)
    for k, share in zip(ORGANIC_KINDS, (0.35, 0.15, 0.10, 0.15, 0.10, 0.15, 0.0), strict=True):
        assert abs((kinds == k).mean() - share) < 0.04, k
    second = sum(len(x) > 1 for x in big.injections) / big.label.sum()
    assert 0.08 < second < 0.22


def test_hour_truth_consistent(big):
    assert np.array_equal(big.label == 1, big.hour_fake.any(axis=1))
    assert np.array_equal(big.hour_fake, big.hour_patterns.any(axis=1))
    assert not (big.hour_metrics.any(axis=1) & ~big.hour_fake).any()
    assert not (big.hour_fake & ~big.hour_metrics.any(axis=1)).any()
    for i in range(len(big)):
        assert (big.pattern[i] == "") == (big.label[i] == 0)
        if big.label[i]:
            k = PATTERNS.index(big.pattern[i])
            assert big.hour_patterns[i, k].any()
    # Organic videos are untouched; fake ones differ from their organic base where marked.
    org = big.label == 0
    assert np.array_equal(big.counts[org], big.organic_counts[org])
    changed = (big.counts != big.organic_counts).any(axis=1)
    assert not (changed & ~big.hour_fake).any()


def test_fakes_not_only_on_big_videos(big):
    lvl = np.median(big.organic_counts[:, V], axis=1)
    fake, org = lvl[big.label == 1], lvl[big.label == 0]
    assert 0.5 < (np.median(fake) + 1) / (np.median(org) + 1) < 2.0
    assert (fake < 2).mean() > 0.1  # plenty of fakes on tiny videos, too


# ---------------------------------------------------------------- fake patterns
def test_spike_exceeds_level_by_factor(big):
    n = 0
    for i, inj in _injections(big, "spike"):
        org = big.organic_counts[i]
        lo = max(int(big.published_hour[i] - big.start_hour), 0)
        med = np.median(org[:, lo:], axis=1)
        for t, f in zip(inj["hours"], inj["factors"], strict=True):
            assert 3.0 <= f <= 200.0
            for m in inj["metrics"]:
                extra = big.counts[i, m, t] - org[m, t]
                assert extra >= f * inj["level"][m] - 1e-9
                assert extra >= 8
                assert big.counts[i, m, t] >= 2.5 * med[m]
                n += 1
    assert n > 100


def test_spike_extra_lands_in_few_minutes(big):
    me = big.minute_extras
    for i, inj in _injections(big, "spike"):
        rows = me[me[:, 0] == i]
        for t in inj["hours"]:
            for m in inj["metrics"]:
                r = rows[(rows[:, 1] == t) & (rows[:, 2] == m)]
                assert 1 <= len(np.unique(r[:, 3])) <= 3
                assert r[:, 4].sum() == big.counts[i, m, t] - big.organic_counts[i, m, t]


def test_offpeak_bursts_at_night_local(big):
    n_periodic = 0
    for i, inj in _injections(big, "offpeak_burst"):
        z = big.timezone_offsets[i][0]
        assert big.timezone_weights[i][0] == max(big.timezone_weights[i])
        hours = np.array(inj["hours"])
        local = (big.start_hour + hours + z) % 24
        assert ((local >= 2) & (local <= 5)).all(), (i, local)
        assert big.hour_patterns[i, PATTERNS.index("offpeak_burst"), hours].all()
        if inj["periodic"]:
            n_periodic += 1
            assert (local[:1] == inj["local_hour"]).all()
        for m in inj["metrics"]:
            assert (big.counts[i, m, hours] > big.organic_counts[i, m, hours]).all()
    assert n_periodic > 50


def test_lockstep_has_zero_residual(big):
    kinds = set()
    for i, inj in _injections(big, "lockstep"):
        h = np.array(inj["hours"])
        assert 12 <= len(h) <= 72
        kinds.add(inj["variant"])
        c = big.counts[i]
        if "locks" in inj:
            for lk in inj["locks"]:
                a, b = METRICS.index(lk["source"]), METRICS.index(lk["target"])
                assert np.array_equal(c[b, h], np.floor(lk["k"] * c[a, h] + 0.5))
        else:
            for name, step in inj["steps"].items():
                m = METRICS.index(name)
                assert np.all(c[m, h] - big.organic_counts[i, m, h] == step)
    assert kinds == {"ratio_lock", "multi_lock", "step"}


def test_ratio_anomaly_hours_have_abnormal_ratio(big):
    seen = set()
    for i, inj in _injections(big, "ratio_anomaly"):
        h = np.array(inj["hours"])
        c, o = big.counts[i][:, h], big.organic_counts[i][:, h]
        v = inj["variant"]
        seen.add(v)
        if v == "likes_gt_views":
            assert (c[L] > c[V]).all()
        elif v == "shares_gt_likes":
            assert (c[S] > c[L]).all()
        elif v == "comments_excess":
            assert (c[C] > c[L]).all()
        elif v == "views_no_engagement":
            assert c[V].sum() >= 3 * o[V].sum()
            assert (c[L].sum() + 1) / c[V].sum() < 0.5 * (o[L].sum() + 1) / max(o[V].sum(), 1)
        else:  # likes_excess: like-rate at least ~2.5x the video's own and its category's
            cat_l = CATEGORY_RATIOS[big.category[i]][0]
            assert c[L].sum() / c[V].sum() > 2.0 * cat_l
            assert c[L].sum() / c[V].sum() > 2.0 * inj["own_ratio"]
    assert seen == {"likes_gt_views", "views_no_engagement", "shares_gt_likes", "likes_excess",
                    "comments_excess"}


def test_decay_violation_days_after_publication(big):
    variants = set()
    for i, inj in _injections(big, "decay_violation"):
        h = np.array(inj["hours"])
        variants.add(inj["variant"])
        assert 12 <= len(h) <= 72
        assert (big.start_hour + h.min()) - big.published_hour[i] >= 36
        for m in inj["metrics"]:
            assert m in (V, L)
            assert (big.counts[i, m, h] > big.organic_counts[i, m, h]).all()
    assert variants == {"plateau", "rising", "revival"}


def test_magnitudes_span_subtle_to_blatant(big):
    f = np.array([x for _, inj in _injections(big, "spike") for x in inj["factors"]])
    assert (f < 5).mean() > 0.03 and (f > 50).mean() > 0.1


# ---------------------------------------------------------------- organic realism
def _utc_profile(d: SimulatedDataset, i: int) -> np.ndarray:
    hod = (d.start_hour + np.arange(d.hours)) % 24
    return np.bincount(hod, weights=d.organic_counts[i, V], minlength=24)


def test_other_timezone_peaks_away_from_utc_evening(big):
    peaks, expected = [], []
    for i in range(len(big)):
        if big.organic_kind[i] == "other_timezone" and big.organic_counts[i, V].sum() > 3000:
            peaks.append(int(np.argmax(_utc_profile(big, i))))
            expected.append((20 - big.timezone_offsets[i][0]) % 24)
    peaks, expected = np.array(peaks), np.array(expected)
    assert len(peaks) > 30
    assert np.isin(peaks, range(17, 23)).mean() < 0.1
    dist = np.minimum((peaks - expected) % 24, (expected - peaks) % 24)
    assert (dist <= 3).mean() > 0.6


def test_organic_nights_are_quiet(big):
    ratios = []
    for i in range(len(big)):
        quiet_kind = big.organic_kind[i] in ("regular", "other_timezone", "seasonal")
        if (big.label[i] == 0 and quiet_kind and len(big.timezone_offsets[i]) == 1
                and big.counts[i, V].sum() > 3000):
            local = (big.start_hour + np.arange(big.hours) + big.timezone_offsets[i][0]) % 24
            night = big.counts[i, V, (local >= 2) & (local <= 5)].mean()
            evening = big.counts[i, V, (local >= 18) & (local <= 22)].mean()
            ratios.append(night / evening)
    assert len(ratios) > 50
    assert np.median(ratios) < 0.5


def test_sparse_videos_are_mostly_zero(big):
    idx = [i for i in range(len(big)) if big.organic_kind[i] == "sparse" and big.label[i] == 0]
    v = big.counts[idx, V]
    assert (v == 0).mean() > 0.5
    assert np.median(v.max(axis=1)) <= 4


def test_audience_heavy_tailed(big):
    lvl = big.organic_counts[:, V].mean(axis=1)
    assert np.quantile(lvl, 0.2) < 3 and lvl.max() > 50_000


def test_organic_ratios_plausible_and_noisy(big):
    idx = [i for i in range(len(big)) if big.label[i] == 0 and big.organic_counts[i, V].sum() > 20_000]
    lv = big.counts[idx, L].sum(axis=1) / big.counts[idx, V].sum(axis=1)
    assert (lv < 0.5).all() and np.median(lv) > 0.01
    # Hourly like-rate is not constant in organic videos (no lockstep by accident).
    h = big.counts[idx, L] / np.maximum(big.counts[idx, V], 1)
    assert np.median(h.std(axis=1) / np.maximum(h.mean(axis=1), 1e-9)) > 0.05


def test_viral_and_news_rise_in_all_metrics(big):
    """At an organic surge's peak, likes rise with views and keep a plausible like-rate."""
    n, lifts = 0, []
    for i in range(len(big)):
        if big.label[i] or big.organic_kind[i] not in ("viral", "news"):
            continue
        c = big.counts[i]
        lo = max(int(big.published_hour[i] - big.start_hour), 0)
        t = int(np.argmax(c[V]))
        base = np.median(c[:, lo:], axis=1)
        win = slice(max(t - 1, lo), t + 2)
        if c[V, t] < 4 * max(base[V], 1) or c[L, win].sum() < 30:
            continue
        n += 1
        overall = c[L, lo:].sum() / c[V, lo:].sum()
        peak = c[L, win].sum() / c[V, win].sum()
        assert 0.25 < peak / overall < 4.0, (i, peak, overall)
        lifts.append(c[L, win].sum() / max(base[L] * (win.stop - win.start), 1))
    assert n > 10
    assert np.median(lifts) > 2.5


# ---------------------------------------------------------------- API / IO
def test_series_and_subset(small):
    s = small.series(3)
    assert isinstance(s, HourlySeries) and s.hours == 48
    assert s.video_id == small.video_ids[3] and s.start_hour == small.start_hour
    assert s.meta["label"] == small.label[3]
    assert len(list(small.iter_series())) == len(small)
    idx = np.array([5, 1, 9])
    sub = small.subset(idx)
    assert len(sub) == 3 and sub.video_ids == [small.video_ids[k] for k in idx]
    assert np.array_equal(sub.counts, small.counts[idx])
    assert sub.pattern == [small.pattern[k] for k in idx]
    for j, k in enumerate(idx):
        assert np.array_equal(sub.minute_extras[sub.minute_extras[:, 0] == j][:, 1:],
                              small.minute_extras[small.minute_extras[:, 0] == k][:, 1:])
    mask = small.label == 1
    assert len(small.subset(mask)) == int(mask.sum())


def _hour_sums(events, d: SimulatedDataset) -> np.ndarray:
    pos = {v: i for i, v in enumerate(d.video_ids)}
    out = np.zeros_like(d.counts)
    for ev in events:
        t = ev["ts"] // SECONDS_PER_HOUR - d.start_hour
        for m, name in enumerate(METRICS):
            out[pos[ev["video_id"]], m, t] += ev.get(name, 0)
    return out


@pytest.mark.parametrize("time_order", [True, False])
def test_iter_events_sum_to_counts(small, time_order):
    evs = list(small.iter_events(chunk_minutes=10, time_order=time_order))
    assert np.array_equal(_hour_sums(evs, small), small.counts)
    for ev in evs:
        assert isinstance(ev["ts"], int) and ev["published_at"].endswith("Z") and "category" in ev
        vals = [ev[m] for m in METRICS if m in ev]
        assert vals and all(isinstance(x, int) and x > 0 for x in vals)
    ts = np.array([ev["ts"] for ev in evs])
    if time_order:
        assert (np.diff(ts) >= 0).all()
    else:
        per = defaultdict(list)
        for ev in evs:
            per[ev["video_id"]].append(ev["ts"])
        assert all(np.all(np.diff(x) >= 0) for x in per.values())
    # Spike extras are emitted at their exact minute.
    me = small.minute_extras
    assert me.shape[0] > 0
    at = {(ev["video_id"], ev["ts"]) for ev in evs}
    for i, t, _m, minute, _c in me.tolist():
        ts = (small.start_hour + t) * SECONDS_PER_HOUR + minute * 60
        assert (small.video_ids[i], ts) in at


def test_iter_events_not_before_publication(small):
    pub = {small.video_ids[i]: small.published_at(i) for i in range(len(small))}
    for ev in small.iter_events(chunk_minutes=15):
        p = np.datetime64(pub[ev["video_id"]][:-1], "s").astype(np.int64)
        assert ev["ts"] >= p


def _read_csv(path, d: SimulatedDataset):
    pos = {v: i for i, v in enumerate(d.video_ids)}
    out = np.zeros_like(d.counts)
    last: dict[str, str] = {}
    with open(path, newline="") as f:
        r = csv.reader(f)
        assert next(r) == ["video_id", "ts", "views", "likes", "comments", "shares", "published_at"]
        for row in r:
            vid, ts = row[0], row[1]
            assert ts >= last.get(vid, "") and ts.endswith("Z")
            last[vid] = ts
            t = int(np.datetime64(ts[:-1], "h").astype(np.int64)) - d.start_hour
            vals = [int(x) for x in row[2:6]]
            assert any(vals)
            out[pos[vid], :, t] += vals
            assert row[6] == d.published_at(pos[vid])
    return out


@pytest.mark.parametrize("granularity", ["hour", "minute"])
def test_write_csv_round_trip(small, tmp_path, granularity):
    p = tmp_path / f"x_{granularity}.csv"
    small.write_csv(p, granularity=granularity)
    assert np.array_equal(_read_csv(p, small), small.counts)


def test_write_truth(small, tmp_path):
    p = tmp_path / "truth.jsonl"
    small.write_truth(p)
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    assert [x["video_id"] for x in lines] == small.video_ids
    for i, rec in enumerate(lines):
        assert rec["label"] == small.label[i] and rec["pattern"] == small.pattern[i]
        assert len(rec["fake_hours"]) == int(small.hour_fake[i].sum())
        assert set(rec["hour_patterns"]) == set(rec["fake_hours"])
        for pats in rec["hour_patterns"].values():
            assert pats and set(pats) <= set(PATTERNS)


def test_custom_window():
    d = simulate(50, seed=3, hours=72, start_hour=DEFAULT_START_HOUR + 24, id_prefix="x")
    assert d.counts.shape == (50, 4, 72) and d.video_ids[0] == "x3-000000"
    assert d.start_hour == DEFAULT_START_HOUR + 24
    assert np.array_equal(d.label == 1, d.hour_fake.any(axis=1))


# ---------------------------------------------------------------- real texture
def test_real_texture_is_a_first_class_organic_kind_and_reaches_fakes_too():
    from stream_detector.dev.texture import RealTexture

    plain = simulate(400, seed=11)
    textured = simulate(400, seed=11, texture=RealTexture("train"))
    again = simulate(400, seed=11, texture=RealTexture("train"))
    assert np.array_equal(textured.counts, again.counts), "texture is seeded"
    assert np.array_equal(plain.label, textured.label) and plain.pattern == textured.pattern
    kinds = np.asarray(textured.organic_kind)
    assert (kinds == "real_textured").sum() >= 40
    assert textured.textured[kinds == "real_textured"].all()
    assert 0 < textured.textured[kinds == "viral"].mean() < 1, "other kinds carry it mildly, some of them"
    assert not textured.textured[kinds == "sparse"].any()
    assert textured.textured[textured.label == 1].any(), "fakes are injected into textured curves too"
    # texture means hour-to-hour swings far beyond counting noise: a heavier tail of changes
    def swing(d, sel):
        x = np.log1p(d.counts[sel, 0])
        return float(np.quantile(np.abs(np.diff(x, axis=1))[d.counts[sel, 0, 1:] > 50], 0.95))
    real = (kinds == "real_textured") & (textured.label == 0)
    regular = (np.asarray(plain.organic_kind) == "regular") & (plain.label == 0)
    assert swing(textured, real) > 1.5 * swing(plain, regular)


def test_texture_pools_are_disjoint_in_files_and_time():
    from stream_detector.dev.texture import POOLS, load_pool

    train = dict(load_pool("train"))
    test = dict(load_pool("test"))
    split = [f for f, w in POOLS.items() if w == "split"]
    assert set(train) & set(test) == set(split)
    for f in split:  # the split file is cut in time: no hour in both pools
        assert len(train[f]) + len(test[f]) <= 1 + len(np.concatenate([train[f], test[f]]))
        assert not np.array_equal(train[f][-24:], test[f][:24])
    for name, s in (*train.items(), *test.items()):
        assert len(s) >= 100 and np.isfinite(s).all() and (s >= 0).all(), name
