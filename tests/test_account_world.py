"""The simulated accounts behind a market week: what the user level is evaluated on."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from stream_detector.dev.accounts import FAKE_ROLES, ROLES, build_world
from stream_detector.dev.market import simulate_market
from stream_detector.events import Rejection, parse_event
from stream_detector.series import METRICS


@pytest.fixture(scope="module")
def world():
    data = simulate_market(40, seed=5)
    return build_world(data, seed=5)


def test_every_event_of_a_world_is_a_valid_contract_1_1_event(world):
    now = time.time() + 10 * 365 * 86400
    bad = []
    for e in world.iter_events():
        got = parse_event(json.dumps(e).encode(), now=now, max_bytes=65536, max_count=2**31, max_future_s=3600)
        if isinstance(got, Rejection):
            bad.append((got.reason, e))
    assert not bad, bad[:3]


def test_the_world_delivers_the_weeks_counts_plus_the_stealthy_farms_cover_likes_on_popular_videos(world):
    d = world.data
    n, _, hours = d.counts.shape
    got = np.zeros_like(d.counts)
    start = int(d.start_hour)
    index = {v: i for i, v in enumerate(d.video_ids)}
    for e in world.iter_events():
        for m, name in enumerate(METRICS):
            if name in e:
                got[index[e["video_id"]], m, e["ts"] // 3600 - start] += e[name]
    extra = got - d.counts
    assert extra.min() >= 0
    likes = METRICS.index("likes")
    assert np.all(np.delete(extra, likes, axis=1) == 0), "views, comments and shares are the week's exactly"
    covered = np.flatnonzero(extra[:, likes].sum(axis=1) > 0)
    popular = np.argsort(-d.organic_counts[:, likes].sum(axis=1))[: max(5, n // 10)]
    assert set(covered.tolist()) <= set(popular.tolist()), "cover likes go to popular videos only"


def test_farm_accounts_act_on_the_fake_videos_and_people_on_everything(world):
    a = world.actions
    fake_video = np.asarray(world.data.label, dtype=bool)[a[:, 0]]
    fake_account = world.fake_accounts[a[:, 3]]
    assert fake_account.any() and (~fake_account).any()
    assert np.all(fake_video[a[:, 5] == 1] | fake_account[a[:, 5] == 1]), "bought actions are a farm's or a pod's"
    roles = {ROLES[int(r)] for r in world.role}
    assert set(FAKE_ROLES) & roles and "organic" in roles


def test_a_world_is_seeded():
    data = simulate_market(12, seed=9)
    assert np.array_equal(build_world(data, seed=9).actions, build_world(data, seed=9).actions)


def test_the_evaluator_judges_an_hours_engagers_again_once_it_is_found_suspicious(world):
    """The user level's evaluator, as the worker runs it: with the video level's suspicion (here
    the truth: fake hours at 1.0), farm accounts are flagged for working in fake hours, also
    those that did not act again after the hour was found suspicious, and people are not."""
    from stream_detector.accounts import SUSPECT_P
    from training.account_eval import SUSPICION_DELAY_MIN, account_metrics, replay_accounts

    blind = replay_accounts(world, step_minutes=30)
    truth = np.asarray(world.data.hour_fake, dtype=float)
    seen = replay_accounts(world, step_minutes=30, hour_p=truth)
    fake = world.fake_accounts
    assert (seen.first_flag[fake] >= 0).sum() > (blind.first_flag[fake] >= 0).sum()
    assert any("fake_hours" in p for p in seen.patterns)
    last_action = np.zeros(len(world.account_ids), dtype=np.int64)
    np.maximum.at(last_action, world.actions[:, 3], world.actions[:, 1])
    late = (seen.first_flag >= 0) & (seen.first_flag >= last_action + SUSPICION_DELAY_MIN - 60)
    assert late[fake].any(), "flagged when its hours were found suspicious, not only when it acted"
    m = account_metrics(seen, world)
    assert m["precision"] >= 0.9 and m["flagged_by_role"].get("organic", 0.0) <= 0.01, m
    # a group's later customers (delivery begun after its first account flag): none is carried
    # without carried hours; all, at once, if every bought hour is carried as it begins
    from dataclasses import replace

    assert m["later_customers"] > 0 and m["later_customers_carried"] is not None
    assert account_metrics(replace(seen, carried_at={}), world)["later_customers_carried"] == 0.0
    fake_hours = {(int(v), int(h)): int(h) * 60 for v, h in zip(*np.nonzero(truth), strict=True)}
    at_once = account_metrics(replace(seen, carried_at=fake_hours), world)
    assert at_once["later_customers_carried"] == at_once["later_customers_carried_within_1h"] == 1.0
    assert at_once["later_customers_hours_to_carried_median"] < 1.0
    assert "later_customers" not in account_metrics(replace(seen, carried_at=None), world)
    # the same suspicion, known only from day 5 (``suspect_at``, as the stream learns it): nothing
    # it would give is flagged before, and it still reaches accounts after
    known = 4 * 24 * 60
    delayed = replay_accounts(world, step_minutes=30, hour_p=truth,
                              suspect_at=np.where(truth >= SUSPECT_P, known, -1))
    before = (blind.first_flag >= 0) & (blind.first_flag < known)
    assert np.array_equal(np.where(delayed.first_flag < known, delayed.first_flag, -1),
                          np.where(before, blind.first_flag, -1))
    assert (delayed.first_flag[fake] >= 0).sum() > (blind.first_flag[fake] >= 0).sum()


def test_the_evaluator_judges_accounts_again_when_they_go_quiet(world):
    """Suspicion that comes after an account's last action (here 40 event hours after each fake
    hour; the video level's comes a median 34 hours after a farm account's last action on a
    market week) reaches it only through its quiet judgements (``accounts.QUIET_AFTER_MIN``)."""
    from stream_detector.accounts import SUSPECT_P
    from training.account_eval import account_metrics, replay_accounts

    truth = np.asarray(world.data.hour_fake, dtype=float)
    late = np.where(truth >= SUSPECT_P, np.arange(truth.shape[1])[None, :] * 60 + 40 * 60, -1)
    without = replay_accounts(world, step_minutes=60, hour_p=truth, suspect_at=late, quiet_after=())
    quiet = replay_accounts(world, step_minutes=60, hour_p=truth, suspect_at=late)
    fake = world.fake_accounts
    assert (quiet.first_flag[fake] >= 0).sum() > (without.first_flag[fake] >= 0).sum() + 10
    assert quiet.judged > without.judged
    m = account_metrics(quiet, world)
    assert m["precision"] >= 0.9 and m["flagged_by_role"].get("organic", 0.0) <= 0.01, m
