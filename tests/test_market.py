"""The market simulator: deliveries as panels sell them, organic look-alikes, real viral dynamics."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.dev.market import DELIVERY_KINDS, LOOKALIKE_KINDS, MIN_ORDER, simulate_market
from stream_detector.dev.texture import RealTexture


@pytest.fixture(scope="module")
def market():
    return simulate_market(300, seed=3, texture=RealTexture("test"))


def test_every_kind_and_look_alike_is_there_with_its_truth(market):
    d = market
    assert {k for k in d.delivery if k} == set(DELIVERY_KINDS)
    assert {k for k in d.lookalike if k} == set(LOOKALIKE_KINDS)
    for i in range(len(d)):
        fake = bool(d.delivery[i])
        assert bool(d.label[i]) == fake and d.hour_fake[i].any() == fake
        if d.lookalike[i]:
            assert not fake and d.organic_kind[i] == d.lookalike[i]
    # truth per hour is exactly where delivered events were placed
    ex = d.minute_extras
    for i in np.flatnonzero(d.label)[:40].tolist():
        rows = ex[(ex[:, 0] == i)]
        hours = set(rows[:, 1].tolist())
        assert hours == set(np.flatnonzero(d.hour_fake[i]).tolist())
        assert np.allclose(d.counts[i] - d.organic_counts[i], np.bincount(
            rows[:, 2] * d.hours + rows[:, 1], weights=rows[:, 4], minlength=4 * d.hours).reshape(4, d.hours))


def test_amplitudes_span_the_range_and_orders_meet_a_panels_minimum(market):
    d = market
    fakes = np.flatnonzero(d.label)
    amp = d.amplitude[fakes]
    assert amp.min() >= 0.1 and (amp < 1).any() and (amp > 3).any()
    bands = {d.band_of(i) for i in fakes}
    assert bands == {"<1x", "1-3x", ">3x"}
    for i in fakes.tolist():
        delivered = d.fake_events[i]
        k = d.delivery[i]
        if k in ("drip_feed", "likes_only", "comments_only", "scheduled_bursts", "revival", "shift_farm"):
            m = int(np.flatnonzero(delivered)[0])
            assert delivered[m] >= MIN_ORDER[m] - 1, (k, delivered)


def test_minute_placement_is_what_each_delivery_does(market):
    d = market
    ex = d.minute_extras
    mc = d.minute_counts()
    assert (mc.sum(axis=-1) == np.rint(d.counts)).all(), "minutes add up to the hours"
    sched = [i for i in range(len(d)) if d.delivery[i] == "scheduled_bursts"]
    for i in sched:
        inj = d.injections[i][0]
        rows = ex[ex[:, 0] == i]
        if inj["period_minutes"] >= 60:  # one fixed minute of the hour, the same size every time
            assert set(rows[:, 3].tolist()) == {inj["minute"]}
        assert len(set(rows[:, 4].tolist())) <= len(inj["metrics"])
    bots = [i for i in range(len(d)) if d.delivery[i] == "bot_proportions"]
    for i in bots:
        inj = d.injections[i][0]
        rows = ex[ex[:, 0] == i]
        views = {(t, m): c for _, t, met, m, c in rows.tolist() if met == 0}
        likes = {(t, m): c for _, t, met, m, c in rows.tolist() if met == 1}
        for key, v in views.items():  # exact proportions, minute by minute
            assert likes.get(key, 0) == int(np.floor(inj["k_likes"] * v + 0.5))


def test_real_viral_dynamics_front_load_the_conversation():
    d = simulate_market(240, seed=9, fake_fraction=0.0, lookalikes=("viral_post",), lookalike_share=1.0)
    early, late, peaks = [], [], []
    for i in range(len(d)):
        t0 = int(d.published_hour[i] - d.start_hour)
        if t0 < 0 or t0 + 16 > d.hours:
            continue
        c = d.organic_counts[i]
        early.append((c[2, t0 + 3 : t0 + 7].sum() + 0.5) / (c[1, t0 + 3 : t0 + 7].sum() + 1))
        late.append((c[2, t0 + 13 : t0 + 16].sum() + 0.5) / (c[1, t0 + 13 : t0 + 16].sum() + 1))
        peaks.append(int(np.argmax(c[0, t0 : t0 + 16])))
    assert np.median(peaks) <= 6, "viral posts peak early"
    assert np.median(early) > 1.4 * np.median(late), "comments per like fall over the first day"


def test_seeded_and_subsettable():
    a = simulate_market(60, seed=1)
    b = simulate_market(60, seed=1)
    assert np.array_equal(a.counts, b.counts) and a.delivery == b.delivery
    sub = a.subset(np.arange(0, 60, 2))
    assert sub.delivery == a.delivery[::2] and np.array_equal(sub.amplitude, a.amplitude[::2])
    assert sub.channel == a.channel[::2]


def test_the_market_tables_say_what_each_caught_kind_was_named_as():
    """Per kind, the names given add up to the caught videos, and 'named exactly' is the
    share of them named the kind's own pattern (through the real scoring core and decision)."""
    from stream_detector.config import DEFAULT_MODEL_PATH
    from stream_detector.models import ModelArtifact
    from stream_detector.scoring import Scorer
    from stream_detector.worker.model_slot import decision_of
    from training.market_eval import evaluate_market, markdown

    model = ModelArtifact.load(DEFAULT_MODEL_PATH)
    data = simulate_market(120, seed=4, texture=RealTexture("test"))
    m = evaluate_market(Scorer(model), decision_of(model, None), data)
    expected = {data.delivery[i]: data.pattern[i] for i in range(len(data)) if data.label[i]}
    assert m["names_by_kind"], "some delivery was caught"
    for kind, given in m["names_by_kind"].items():
        caught = m["recall_by_kind"][kind] * sum(1 for i in range(len(data)) if data.delivery[i] == kind)
        assert sum(given.values()) == round(caught)
        if not given:  # none of the kind caught: nothing named
            assert m["named_exact_by_kind"][kind] is None
            continue
        assert m["named_exact_by_kind"][kind] == given.get(expected[kind], 0) / sum(given.values())
    assert "named as" in markdown(m)
