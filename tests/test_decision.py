"""The stream decision process: closed hours, confirmation, hysteresis, withdrawal, material
updates, the immediate path; and the operating points that pick its threshold."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.decision import (
    StreamDecision,
    Thresholds,
    VideoDecisionState,
    closed_window,
    closed_windows,
)
from stream_detector.operating_points import OperatingCurve, OperatingPointError
from stream_detector.patterns import PATTERNS, Burst
from stream_detector.scoring import HourDetail, VideoScore
from stream_detector.series import HourlySeries

W = 168
END = 500_000  # epoch hour of the window's last (closed) hour
TH = Thresholds(publish=0.8, withdraw=0.4, extent=0.4, burst=0.5, confirm_hours=1, withdraw_after_hours=6)


def scored(p: np.ndarray, pattern: str = "spike", end: int = END) -> VideoScore:
    """A scored closed window with hour probabilities ``p`` driven by one pattern's evidence."""
    p = np.asarray(p, dtype=float)
    ev = np.zeros((len(PATTERNS), W))
    ev[PATTERNS.index(pattern)] = p
    metrics = np.zeros((4, W), dtype=bool)
    metrics[1] = p > 0.3
    detail = HourDetail(end - W + 1, np.ones((4, W)), ev, 3.0 * ev, np.zeros(W), metrics, np.ones((4, W)),
                        np.arange(W, dtype=float))
    return VideoScore("v", float(p.max()), False, 0.5, end, [], "", p, detail)


def hours(*pairs: tuple[int, float]) -> np.ndarray:
    p = np.zeros(W)
    for t, v in pairs:
        p[t] = v
    return p


def test_an_hour_needs_a_closed_hour_after_it_before_it_can_flag():
    d = StreamDecision(TH)
    edge = scored(hours((W - 1, 0.99)))  # the newest closed hour, nothing after it yet
    state, rec = d.decide(None, edge, now_hour=END + 1)
    assert rec is None and d.statistic(edge) == 0.0
    confirmed = scored(hours((W - 2, 0.99)), end=END)  # one closed hour after it
    state, rec = d.decide(state, confirmed, now_hour=END + 1)
    assert rec is not None and rec.status == "new"
    assert [(w.start_hour, w.end_hour) for w in rec.windows] == [(END - 1, END)]


def test_rescoring_the_same_closed_hours_never_publishes_twice():
    d = StreamDecision(TH)
    vs = scored(hours((100, 0.95)))
    state, first = d.decide(None, vs, now_hour=END + 1)
    assert first is not None
    for _ in range(50):  # a worker re-scoring every few seconds sees the same closed hours
        state, again = d.decide(state, vs, now_hour=END + 1)
        assert again is None


def test_updates_only_on_a_material_change():
    d = StreamDecision(TH)
    # an episode still going on (its last hour within withdraw_after_hours, 6, of the newest)
    state, rec = d.decide(None, scored(hours((162, 0.95))), now_hour=END + 1)
    assert rec.status == "new"
    # the window grows by one neighbouring hour: folded into the state, not published
    state, rec = d.decide(state, scored(hours((162, 0.95), (163, 0.9))), now_hour=END + 1)
    assert rec is None and state.windows[0].end_hour - state.windows[0].start_hour == 2
    # a separate window elsewhere is material
    state, rec = d.decide(state, scored(hours((162, 0.95), (163, 0.9), (165, 0.9))), now_hour=END + 1)
    assert rec is not None and rec.status == "updated" and len(rec.windows) == 2
    # a new pattern named on a grown window is material (the id follows the hours: a pattern
    # change on exactly the same hours would repeat the id, so it waits for the next change)
    p = hours((162, 0.95), (163, 0.9), *((t, 0.9) for t in range(165, 167)))
    vs = scored(p)
    vs.detail.evidence[:, 165:167] = 0.0
    vs.detail.evidence[PATTERNS.index("lockstep"), 165:167] = 0.95
    state, rec = d.decide(state, vs, now_hour=END + 1)
    assert rec is not None and "lockstep" in {p_ for w in rec.windows for p_ in w.patterns}


def test_an_ended_episode_whose_hours_still_flag_is_shown_once_with_its_extent():
    """Growth not worth an update while the episode goes on (11 hours on 7) is published once
    the episode is over (no newer flagged hour for withdraw_after_hours), even though its hours
    still flag in the window; then nothing more until it grows by EPISODE_END_GROWTH again."""
    from stream_detector.decision import EPISODE_END_GROWTH, EPISODE_END_MIN_HOURS

    d = StreamDecision(TH)
    state, rec = d.decide(None, scored(hours(*((t, 0.95) for t in range(158, 165)))), now_hour=END + 1)
    assert rec.status == "new" and state.published_hours == 7
    longer = [(t, 0.95) for t in range(155, 166)]
    state, rec = d.decide(state, scored(hours(*longer)), now_hour=END + 1)
    assert rec is None, "11 flagged hours on 7 published, the last one an hour old: going on"
    later = hours(*((t - 6, v) for t, v in longer))  # six hours on: the same hours, 6 h further back
    state, rec = d.decide(state, scored(later, end=END + 6), now_hour=END + 7)
    assert rec is not None and rec.status == "updated" and rec.cause == "hourly"
    assert sum(w.end_hour - w.start_hour for w in rec.windows) == 11
    state, rec = d.decide(state, scored(later, end=END + 6), now_hour=END + 7)
    assert rec is None, "shown once"
    one_more = later.copy()
    one_more[148] = 0.95  # an hour more (12 on 11 shown): less than the growth worth a record
    assert max(EPISODE_END_GROWTH * 11, 11 + EPISODE_END_MIN_HOURS) > 12
    state, rec = d.decide(state, scored(one_more, end=END + 6), now_hour=END + 7)
    assert rec is None and sum(w.end_hour - w.start_hour for w in state.windows) == 12


def test_an_ended_episode_grown_by_an_hour_or_two_is_not_shown_again():
    """A record's +-1 h already covers an hour more on either side: an ended episode's growth is
    shown when it adds at least EPISODE_END_MIN_HOURS hours, however large a share of it that is."""
    from stream_detector.decision import EPISODE_END_GROWTH, EPISODE_END_MIN_HOURS

    d = StreamDecision(TH)
    first, rec = d.decide(None, scored(hours(*((t, 0.95) for t in range(160, 164)))), now_hour=END + 1)
    assert rec.status == "new" and first.published_hours == 4
    two_more = hours(*((t - 6, 0.95) for t in range(158, 164)))  # 6 on 4, and the episode over
    assert EPISODE_END_GROWTH * 4 <= 6 < 4 + EPISODE_END_MIN_HOURS
    state, rec = d.decide(first, scored(two_more, end=END + 6), now_hour=END + 7)
    assert rec is None and sum(w.end_hour - w.start_hour for w in state.windows) == 6
    three_more = hours(*((t - 6, 0.95) for t in range(157, 164)))
    state, rec = d.decide(first, scored(three_more, end=END + 6), now_hour=END + 7)
    assert rec is not None and rec.status == "updated" and sum(w.end_hour - w.start_hour for w in rec.windows) == 7


def test_flags_are_cumulative_while_they_stand():
    d = StreamDecision(TH)
    state, _ = d.decide(None, scored(hours((100, 0.95))), now_hour=END + 1)
    state, rec = d.decide(state, scored(hours((130, 0.95), (100, 0.5))), now_hour=END + 1)
    assert rec is not None
    assert {(w.start_hour - (END - W + 1)) for w in rec.windows} == {100, 130}, "the first hour stays flagged"


def test_withdrawn_only_with_context_and_below_the_lower_threshold_then_a_new_id():
    d = StreamDecision(TH)
    state, first = d.decide(None, scored(hours((150, 0.95))), now_hour=END + 1)
    # hysteresis: between withdraw (0.4) and publish (0.8) the flag stands
    state, rec = d.decide(state, scored(hours((150, 0.6))), now_hour=END + 1)
    assert rec is None and state.active
    # below withdraw but with too little context after the hour (17 h here is enough; 3 h is not)
    shifted = scored(hours((W - 4, 0.1)), end=END)  # the flagged hour is now only 3 h from the edge
    state_b, rec = d.decide(VideoDecisionState(list(first.windows), first.flag_id, "new"),
                            _moved(shifted, first), now_hour=END + 1)
    assert rec is None
    state, rec = d.decide(state, scored(hours((150, 0.1))), now_hour=END + 1)
    assert rec is not None and rec.status == "withdrawn" and rec.flag_id != first.flag_id
    assert list(rec.windows) == list(first.windows), "a withdrawal names what it withdraws"
    assert not state.active
    state, again = d.decide(state, scored(hours((150, 0.1))), now_hour=END + 1)
    assert again is None, "withdrawn once"
    state, back = d.decide(state, scored(hours((150, 0.95))), now_hour=END + 1)
    assert back.status == "new" and back.flag_id not in (first.flag_id, rec.flag_id), "a flag id never comes back"


def _moved(vs: VideoScore, first) -> VideoScore:
    """``vs`` re-based so that the first flag's hour sits 3 h before its window's end."""
    hour = first.windows[0].start_hour
    end = hour + 3
    p = np.zeros(W)
    p[W - 4] = 0.1
    return scored(p, end=end)


def test_the_immediate_path_flags_at_once_and_is_not_withdrawn_by_hourly_scores():
    d = StreamDecision(TH)
    burst = Burst(0.97, ("likes",), (END + 1) * 60 + 7, 9000, 120.0)
    state, rec = d.decide(None, scored(np.zeros(W)), now_hour=END + 1, burst=burst)
    assert rec is not None and rec.status == "new"
    assert rec.windows[0].start_hour == END + 1 and rec.windows[0].patterns == ("spike",)
    for k in range(10):  # hours later, hourly evidence is flat: the burst's flag stands
        state, rec = d.decide(state, scored(np.zeros(W), end=END + 10 + k), now_hour=END + 11 + k)
        assert rec is None and state.active
    weak = Burst(0.3, ("likes",), (END + 1) * 60 + 7, 40, 120.0)
    _, rec = d.decide(None, scored(np.zeros(W)), now_hour=END + 1, burst=weak)
    assert rec is None


def test_severity_is_relative_to_the_publish_threshold():
    d = StreamDecision(TH)
    _, just = d.decide(None, scored(hours((100, 0.81))), now_hour=END + 1)
    _, far = d.decide(None, scored(hours((100, 0.999))), now_hour=END + 1)
    assert just.severity == "low" and far.severity == "critical"


def test_state_round_trips_through_json():
    import json

    d = StreamDecision(TH)
    state, _ = d.decide(None, scored(hours((100, 0.95), (120, 0.9))), now_hour=END + 1)
    again = VideoDecisionState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    # as the worker stores it, numpy scalars (a burst's hour, a score) included
    from dataclasses import replace

    from stream_detector.publisher import JSON_ENCODER

    odd = replace(state, score=np.float64(0.93), burst_hours=[np.int64(END + 1)])
    assert VideoDecisionState.from_dict(json.loads(JSON_ENCODER.encode(odd.to_dict()))) == odd


def test_closed_window_drops_the_open_hour_and_pads_a_quiet_video():
    counts = np.arange(4 * 10, dtype=float).reshape(4, 10) + 1
    s = HourlySeries("v", 1000, counts, None)
    open_now = closed_window(s, now_hour=1009)  # hour 1009 is still filling
    assert open_now.end_hour == 1008 and np.array_equal(open_now.counts, counts[:, :9])
    quiet = closed_window(s, now_hour=1015, confirm_hours=1)  # quiet since 1009: one closed empty hour
    assert quiet.end_hour == 1010 and quiet.counts[:, -1].sum() == 0
    assert np.array_equal(quiet.counts[:, :10], counts)
    assert closed_window(s, now_hour=1010).end_hour == 1009


@pytest.mark.parametrize("window", [12, 10, 7])
def test_closed_windows_of_a_batch_equal_each_closed_window_made_trailing(window):
    rng = np.random.default_rng(3)
    t = 10
    ends = np.array([1009, 1009, 1004, 1020, 1012, 1000, 990])
    counts = rng.poisson(5.0, (len(ends), 4, t)).astype(float)
    for now_hour in (995, 1000, 1005, 1009, 1010, 1011, 1013, 1030):
        for confirm in (0, 1, 2):
            keep, closed, first = closed_windows(counts, ends, now_hour, confirm, window)
            for r, end in enumerate(ends):
                one = closed_window(HourlySeries("v", int(end) - t + 1, counts[r], None), now_hour, confirm)
                assert keep[r] == (one.hours > 0), (now_hour, confirm, r)
                if one.hours:
                    want = one.last(window)
                    assert first[r] == want.start_hour
                    np.testing.assert_array_equal(closed[r], want.counts)


def test_operating_curve_maps_rates_to_thresholds_and_back():
    rng = np.random.default_rng(0)
    organic = rng.beta(1, 12, 5000)
    fakes = rng.beta(8, 1, 500)
    curve = OperatingCurve.measure(organic, fakes)
    t2 = curve.threshold_for(0.02)
    assert (organic >= t2).mean() <= 0.02 + 1e-9
    assert curve.threshold_for(0.05) <= t2 <= curve.threshold_for(0.01)
    assert curve.rate_at(t2) == pytest.approx(0.02, abs=0.006)
    again = OperatingCurve.from_points(curve.to_points())
    assert again.threshold_for(0.02) == pytest.approx(t2, abs=1e-5)
    floored = OperatingCurve.measure(organic, fakes, floor=0.01)  # e.g. the immediate path's own rate
    with pytest.raises(OperatingPointError):
        floored.threshold_for(0.005)
    with pytest.raises(OperatingPointError):
        OperatingCurve.from_points([{"threshold": 0.5}])


def test_short_windows_recurring_at_the_same_quiet_hour_are_named_offpeak():
    d = StreamDecision(TH)
    vs = scored(hours((27, 0.95), (51, 0.95), (110, 0.95)))
    vs.detail.quiet = np.zeros(W)
    vs.detail.quiet[[27, 51]] = 2.0  # the audience is usually asleep at that hour
    _, rec = d.decide(None, vs, now_hour=END + 1)
    names = {(w.start_hour - vs.start_hour): w.patterns for w in rec.windows}
    assert names[27] == names[51] == ("offpeak_burst",)
    assert names[110] == ("spike",), "a lone window at another hour keeps its own name"


def test_short_windows_at_one_hour_of_day_on_three_days_are_named_offpeak_whatever_the_audience():
    d = StreamDecision(TH)
    twice = scored(hours((27, 0.95), (51, 0.95), (110, 0.95)))
    twice.detail.quiet = np.zeros(W)  # an hour the audience is awake: twice may be chance
    _, rec = d.decide(None, twice, now_hour=END + 1)
    assert {w.patterns for w in rec.windows} == {("spike",)}
    thrice = scored(hours((27, 0.95), (51, 0.95), (76, 0.95), (110, 0.95)))  # the third an hour late
    thrice.detail.quiet = np.zeros(W)
    _, rec = d.decide(None, thrice, now_hour=END + 1)
    names = {(w.start_hour - thrice.start_hour): w.patterns for w in rec.windows}
    assert names[27] == names[51] == names[76] == ("offpeak_burst",)
    assert names[110] == ("spike",)


def test_once_bursts_keep_a_schedule_the_windows_it_explains_are_named_scheduled():
    """Bursts at minute 7 of three hours are a scheduled delivery: the burst hours and a lockstep
    window (the schedule's constant hourly sums) are named ``scheduled_bursts``; a window the
    schedule does not explain (a ratio anomaly) keeps its name; two bursts are no schedule yet."""
    d = StreamDecision(TH)
    p = hours(*((t, 0.95) for t in range(100, 112)), *((t, 0.95) for t in range(130, 140)))
    vs = scored(p, pattern="lockstep")
    vs.detail.evidence[:, 130:140] = 0.0
    vs.detail.evidence[PATTERNS.index("ratio_anomaly"), 130:140] = 0.95
    state = None
    for k, end in enumerate((END - 2, END - 1)):
        burst = Burst(0.97, ("views",), (end + 1) * 60 + 7, 900, 50.0)
        state, rec = d.decide(state, vs, now_hour=END + 1, burst=burst)
        named = {w.start_hour - vs.start_hour: w.patterns for w in state.windows}
        assert named[100] == ("lockstep",), f"{k + 1} bursts are no schedule"
    burst = Burst(0.97, ("views",), (END + 1) * 60 + 7, 900, 50.0)
    state, rec = d.decide(state, vs, now_hour=END + 1, burst=burst)
    named = {w.start_hour - vs.start_hour: w.patterns for w in state.windows}
    assert named[100] == ("scheduled_bursts",)
    assert named[130] == ("ratio_anomaly",)
    assert all(w.patterns == ("scheduled_bursts",) for w in state.windows if w.start_hour >= END - 1)


def test_the_hour_detail_is_only_read_where_uses_detail_or_the_floor_says_so():
    """The scoring process leaves a video's hour detail behind unless ``uses_detail`` or an hour
    at or above ``detail_floor`` asks for it: over flag episodes that start, grow, end and are
    withdrawn, deciding without it then gives the same states and records."""
    from dataclasses import replace

    d = StreamDecision(TH)
    rng = np.random.default_rng(7)
    left_behind, published = 0, 0
    for _video in range(40):
        state = None
        for step in range(30):
            end = END + step
            p = rng.uniform(0.0, 0.3, W)
            if rng.random() < 0.25:  # a few hot hours, sometimes above the publish threshold
                p[rng.integers(W - 30, W - 1, 3)] = rng.uniform(0.3, 1.0, 3)
            burst = Burst(float(rng.uniform(0.2, 1.0)), ("likes",), (end + 1) * 60 + 5, 900, 50.0) \
                if rng.random() < 0.1 else None
            full = scored(p, end=end)
            got = d.decide(state, full, now_hour=end + 1, burst=burst)
            published += got[1] is not None
            if not d.uses_detail(state, burst) and p.max() < d.detail_floor:
                left_behind += 1
                assert d.decide(state, replace(full, detail=None), now_hour=end + 1, burst=burst) == got
            state = got[0]
    assert left_behind > 200 and published > 20  # episodes happened, most scorings went without it
