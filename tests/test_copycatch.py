"""The batch CopyCatch oracle finds a planted lockstep group and nothing in a crowd or in noise."""

from __future__ import annotations

import numpy as np
import pytest

from training.copycatch import CopyCatch


def _world(seed: int = 5):
    """400 people acting at random over a week on 50 videos; accounts 400-407 act together on
    videos 0-3, each within +-2 minutes of one time per video; accounts 408-599 are a crowd of
    192 in one minute on each of videos 10-12."""
    rng = np.random.default_rng(seed)
    n = 6000
    video, minute, account = rng.integers(0, 50, n), rng.integers(0, 7 * 24 * 60, n), rng.integers(0, 400, n)
    group = np.arange(400, 408)
    base = rng.integers(0, 10_000, 4)  # one time per video
    planted = [(v, int(base[v]) + int(d), a)
               for v in range(4) for a, d in zip(group, rng.integers(-2, 3, group.size), strict=True)]
    crowd = [(10, 500, a) for a in range(408, 600)] + [(11, 900, a) for a in range(408, 600)] \
        + [(12, 1300, a) for a in range(408, 600)]
    rows = np.array(planted + crowd)
    return (np.r_[video, rows[:, 0]], np.r_[minute, rows[:, 1]], np.r_[account, rows[:, 2]]), group


def test_a_planted_lockstep_group_is_found_and_nobody_else():
    (video, minute, account), group = _world()
    cc = CopyCatch(n=5, m=3, within_min=30, crowd=150).fit(video, minute, account, 600)
    assert cc.n_groups_ == 1
    assert set(np.flatnonzero(cc.group_ >= 0).tolist()) == set(group.tolist())
    assert cc.get_params() == {"n": 5, "m": 3, "within_min": 30, "crowd": 150}


def test_a_crowd_says_nothing_and_too_few_shared_videos_are_not_a_group():
    (video, minute, account), group = _world()
    crowded = CopyCatch(n=5, m=3, within_min=30, crowd=200).fit(video, minute, account, 600)
    assert set(range(408, 600)) <= set(np.flatnonzero(crowded.group_ >= 0).tolist()), \
        "with the crowd limit above its size, the crowd on three videos is a group"
    strict = CopyCatch(n=5, m=5, within_min=30).fit(video, minute, account, 600)
    assert strict.n_groups_ == 0, "the planted group shares four videos, not five"
    big = CopyCatch(n=9, m=3, within_min=30).fit(video, minute, account, 600)
    assert big.n_groups_ == 0, "eight accounts are not a group of nine"


@pytest.mark.parametrize("params", [{"n": 1}, {"m": 0}, {"within_min": 0}, {"crowd": 1}])
def test_parameters_out_of_range_are_refused(params):
    with pytest.raises(ValueError, match="out of range"):
        CopyCatch(**params).fit(np.zeros(2), np.zeros(2), np.arange(2))
