"""Property-based hunt for the bug class that stopped all detection: the scoring core, the
naming of windows and the decision process on adversarial windows (every pattern combination,
zeros, huge counts, short histories, NaN-prone inputs). A fixed seed (``derandomize``) and a
bounded number of examples keep CI repeatable and its time bounded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.decision import StreamDecision, Thresholds, VideoDecisionState
from stream_detector.flags import PATTERN_ORDER
from stream_detector.models import ModelArtifact
from stream_detector.patterns import PATTERNS, Burst
from stream_detector.scoring import HourDetail, Scorer, _names, _window
from stream_detector.series import METRICS

W = 168
START = 1767571200 // 3600
U32 = 2**32 - 1
CI = settings(derandomize=True, deadline=None, max_examples=150,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# the levels the naming rules branch on (0.3: evidence at all; 0.9: strong enough for a second name)
EVIDENCE_LEVELS = st.sampled_from([0.0, 0.29, 0.3, 0.9, 1.0])


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(ModelArtifact.load(str(DEFAULT_MODEL_PATH)))


@st.composite
def details(draw) -> tuple[HourDetail, int, int]:
    """An hour detail with arbitrary evidence per pattern over a window, counts that make
    revivals and impossible mixes possible, with and without a publication age."""
    length = draw(st.integers(1, 24))
    t = draw(st.integers(0, W - length))
    evidence = np.zeros((len(PATTERNS), W))
    for k in range(len(PATTERNS)):
        evidence[k, t:t + length] = draw(EVIDENCE_LEVELS)
    base = draw(st.sampled_from([0.0, 100.0, 1e6]))
    counts = np.full((4, W), base)
    counts[draw(st.integers(0, 3)), t:t + length] *= draw(st.sampled_from([0.0, 1.0, 50.0]))
    counts[:, t:t + length] += draw(st.sampled_from([0.0, 5000.0]))  # a comeback above the day before, or not
    age = None if draw(st.booleans()) else np.arange(W, dtype=float) + draw(st.sampled_from([-50.0, 30.0, 200.0]))
    metrics = np.zeros((4, W), dtype=bool)
    metrics[:, t:t + length] = draw(st.lists(st.booleans(), min_size=4, max_size=4))[0]
    detail = HourDetail(START, counts, evidence, evidence * 2 - 1, np.zeros(W), metrics, counts * 0.5,
                        np.arange(W, dtype=float), age, None)
    return detail, t, length


@settings(CI, max_examples=1500)  # cheap: many examples, to meet rare rule combinations
@given(details())
def test_every_evidence_combination_names_its_window(case):
    detail, t, length = case
    names = _names(detail, slice(t, t + length), length)
    assert names and set(names) <= set(PATTERNS)
    window = _window(detail, t, t + length, np.full(W, 0.9))
    assert window.patterns == tuple(names) and window.metrics and set(window.metrics) <= set(METRICS)


@st.composite
def windows(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of 1-3 stored windows: zeros, constants, huge counts up to the u32 ceiling, single
    spikes, short histories, reactions above views, arbitrary publication hours."""
    n = draw(st.integers(1, 3))
    out = np.zeros((n, 4, W))
    pubs = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        shape = draw(st.sampled_from(["zeros", "constant", "spike", "short", "huge", "reactions", "sparse",
                                      "plateau"]))
        level = draw(st.sampled_from([1, 3, 50, 1000, 10**6, U32]))
        c = out[i]
        if shape == "constant":
            c[:] = level
        elif shape == "spike":
            c[0] = 10
            c[draw(st.integers(0, 3)), draw(st.integers(0, W - 1))] = level
        elif shape == "short":
            c[:, W - draw(st.integers(1, 6)):] = level
        elif shape == "huge":
            c[:] = U32
        elif shape == "reactions":
            c[1:, draw(st.integers(0, W - 12)):] = level
        elif shape == "sparse":
            rng = np.random.default_rng(draw(st.integers(0, 2**16)))
            c[:] = rng.poisson(0.3, (4, W)) * (rng.random((4, W)) < 0.2)
        elif shape == "plateau":
            c[0] = np.where(np.arange(W) > W // 2, level, 10)
            c[1] = np.where(np.arange(W) > W // 2, level // 10, 1)
        pubs[i] = draw(st.sampled_from([-1, START - 500, START, START + 100, START + W - 1, START + 10**4]))
    starts = np.full(n, START, dtype=np.int64) + draw(st.integers(-10**5, 10**5))
    pubs = np.where(pubs >= 0, pubs - START + starts, -1)
    return out.astype(np.uint32).astype(np.float64), starts, pubs


@CI
@given(windows())
def test_the_scoring_core_never_raises_and_its_outputs_stay_in_range(scorer, batch):
    counts, starts, pubs = batch
    ids = [f"v{i}" for i in range(len(counts))]
    scores = scorer.score_windows(ids, counts, starts, pubs)
    assert [s.video_id for s in scores] == ids
    for vs in scores:
        assert np.isfinite(vs.hour_probability).all()
        assert vs.hour_probability.min() >= 0.0 and vs.hour_probability.max() <= 1.0
        assert 0.0 <= vs.score <= 1.0 and isinstance(vs.explanation, str) and vs.explanation
        for w in vs.windows:
            assert vs.start_hour <= w.start_hour < w.end_hour <= vs.end_hour + 1
            assert set(w.patterns) <= set(PATTERNS) and w.patterns and w.metrics
            assert vs.relabel(w).patterns  # an earlier window named again with today's evidence


@CI
@given(windows(), st.lists(st.tuples(st.integers(0, 40), st.floats(0, 1), st.booleans()), min_size=1, max_size=6))
def test_the_decision_never_raises_over_a_sequence_of_scorings(scorer, batch, steps):
    """A video judged again and again as hours close (its state through JSON each time, as the
    worker keeps it in Redis), with and without bursts: every record is well formed."""
    counts, starts, pubs = batch
    decision = StreamDecision(Thresholds.from_artifact(0.6, extent=0.3))
    state: VideoDecisionState | None = None
    issued = set()
    for shift, evidence, burst in steps:
        rolled = np.roll(counts[:1], -shift, axis=2)
        (vs,) = scorer.score_windows(["v"], rolled, starts[:1] + shift, pubs[:1])
        b = Burst(evidence, ("likes",), (vs.end_hour + 1) * 60 + 7, 500, 3.0) if burst else None
        state, rec = decision.decide(state, vs, now_hour=vs.end_hour + 1, burst=b)
        state = VideoDecisionState.from_dict(json.loads(json.dumps(state.to_dict())))
        if rec is not None:
            assert rec.status in ("new", "updated", "withdrawn") and rec.windows
            assert rec.flag_id not in issued, "a flag id never comes back"
            issued.add(rec.flag_id)
            for w in rec.windows:
                assert w.start_hour < w.end_hour and set(w.patterns) <= set(PATTERN_ORDER)
