"""The user level: account state, judgement, decision and flags, on real Redis and a real broker."""

from __future__ import annotations

import asyncio
import json
import time

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector import keys
from stream_detector.accounts import (
    ACCOUNT_PATTERNS,
    SHIFT_MIN_HOURS,
    SHIFT_SPAN,
    SUSPECT_P,
    AccountActivity,
    AccountJudge,
    AccountScore,
    Action,
    InMemoryAccountStore,
    account_flag_id,
    account_record,
    carried_share,
    carried_suspicion,
    channel_hash,
    decide_account,
    next_quiet_judgement,
    shard_of,
    shift_hours,
    suspicion,
    suspicion_threshold,
)
from stream_detector.decision import Thresholds
from stream_detector.metrics import Metrics
from stream_detector.operating_points import OperatingCurve
from stream_detector.worker.account_store import AccountStore
from tests.harness import Deployment, WorkerProcess

SCHEMA = json.loads((__import__("pathlib").Path(__file__).resolve().parent.parent / "schemas" /
                     "account-flag.schema.json").read_text())
T0 = 1767571200 // 60  # Monday 2026-01-05 00:00 UTC, epoch minutes


def act(minute: int, video: str, channel: str = "c", likes: int = 1, partition: int = 0) -> Action:
    return Action(minute, video, channel_hash(channel, video), (0, likes, 0, 0), partition)


def test_an_action_key_round_trips_and_applying_twice_changes_nothing():
    a = act(T0 + 7, "v|with|bars", "ch", likes=3, partition=5)
    assert Action.parse(a.key()) == a
    once = AccountActivity("u")
    once.add([a, act(T0 + 60, "v2")])
    twice = AccountActivity("u")
    twice.add([a, act(T0 + 60, "v2")])
    twice.add([a])  # a replay
    assert once == twice and len(once.actions) == 2
    assert once.day_masks == {T0 // 60 // 24: 0b11}


def _judge(activity: AccountActivity, store: InMemoryAccountStore | None = None,
           suspicion: dict | None = None) -> AccountScore:
    j = AccountJudge()
    engagers = store.co_engagers(j.sync_queries(activity)) if store is not None else {}
    return j.judge(activity, engagers, suspicion)


def _shift_minutes(rng, days: int, start: int, length: int, *, drift: int = 0, per_hour=(1, 4)) -> list[int]:
    """Bursty actions in every hour of a block of ``length`` hours from UTC hour ``start`` on
    ``days`` days (the block moving ``drift`` hours a day)."""
    minutes = []
    for day in range(days):
        s = start + day * drift
        for h in range(s, s + length):
            minutes += [T0 + (day * 24 + int(h)) * 60 + int(m) for m in rng.integers(0, 60, rng.integers(*per_hour))]
    return sorted(set(minutes))


def _activity(minutes: list[int], user: str = "s") -> AccountActivity:
    a = AccountActivity(user)
    a.add([act(m, f"v{k % 7}", f"c{k % 3}") for k, m in enumerate(minutes)])
    return a


def test_a_farm_keeping_shift_hours_is_flagged_a_person_whose_day_moves_is_not():
    rng = np.random.default_rng(4)
    shift = _judge(_activity(_shift_minutes(rng, 4, 9, 9)))
    assert shift.flagged and shift.evidence["shift_hours"] == 1.0 and shift.evidence["no_sleep"] == 0.0
    assert shift.patterns == ["shift_hours"] and "shift hours" in shift.explanation
    state, status = decide_account(None, shift, last_minute=T0 + 4 * 24 * 60)
    rec = account_record(shift, state, status, watermark=time.time(), detected_at=time.time())
    jsonschema.validate(rec, SCHEMA)
    assert rec["patterns"] == ["shift_hours"] and rec["schema_version"] == SCHEMA["properties"]["schema_version"]["enum"][0]
    # the same block across midnight UTC (a farm in its own time zone) is one block
    assert _judge(_activity(_shift_minutes(rng, 4, 20, 9))).evidence["shift_hours"] == 1.0
    # a person as busy, whose active hours move from day to day, keeps no shift
    moving = _judge(_activity(_shift_minutes(rng, 4, 8, 9, drift=3)))
    assert moving.evidence["shift_hours"] == 0.0 and not moving.flagged
    # two days are not a habit; a block longer than a shift is a waking day
    assert _judge(_activity(_shift_minutes(rng, 2, 9, 9))).evidence["shift_hours"] == 0.0
    assert _judge(_activity(_shift_minutes(rng, 4, 7, 15))).evidence["shift_hours"] == 0.0
    # activity outside the block on a busy day breaks it
    outside = _shift_minutes(rng, 4, 9, 9) + [T0 + (24 + 22) * 60 + 5]
    assert _judge(_activity(sorted(outside))).evidence["shift_hours"] == 0.0


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 23), length=st.integers(SHIFT_MIN_HOURS, SHIFT_SPAN), days=st.integers(3, 7),
       move=st.integers(-48, 48), seed=st.integers(0, 2**16))
def test_a_shift_is_found_wherever_it_sits_on_the_clock(start, length, days, move, seed):
    """Moving every action by whole hours (another time zone, another week) keeps the evidence."""
    minutes = _shift_minutes(np.random.default_rng(seed), days, start, length)
    act_here = _activity(minutes)
    moved = _activity([m + 60 * move for m in minutes])
    assert shift_hours(act_here.day_masks) == 1.0
    assert shift_hours(moved.day_masks) == shift_hours(act_here.day_masks)


def test_a_person_sleeps_and_bursts_a_machine_does_neither():
    rng = np.random.default_rng(1)
    person = AccountActivity("p")
    minutes = []
    for day in range(3):  # awake 8-23, bursty
        for h in rng.choice(np.arange(8, 23), 10, replace=False):
            minutes += [T0 + (day * 24 + int(h)) * 60 + int(m) for m in rng.integers(0, 60, rng.integers(1, 4))]
    person.add([act(m, f"v{k % 9}", f"c{k % 5}") for k, m in enumerate(sorted(minutes))])
    bot = AccountActivity("b")
    bot.add([act(T0 + 37 * k, f"v{k % 9}", f"c{k % 5}") for k in range(40 * 3)])  # every 37 min, day and night
    sp, sb = _judge(person), _judge(bot)
    assert not sp.flagged and sp.evidence["no_sleep"] < 0.5 and sp.evidence["regular"] < 0.5
    assert sb.flagged and sb.evidence["no_sleep"] == 1.0 and sb.evidence["regular"] == 1.0
    assert "no sleep" in sb.explanation and "machine-regular" in sb.explanation


def test_acting_in_lockstep_on_unrelated_channels_is_sync_a_fan_stays_with_one_creator():
    store = InMemoryAccountStore()
    farm = [f"f{k}" for k in range(8)]
    batch: dict[str, list[Action]] = {}
    for job, video in enumerate(["a1", "b1", "c1", "d1"]):  # four customers, four channels, within 2 minutes
        for k, u in enumerate(farm):
            batch.setdefault(u, []).append(act(T0 + 300 * job + k % 3, video, f"ch-{video}"))
    fans = [f"fan{k}" for k in range(8)]
    for job, video in enumerate(["s1", "s2", "s3", "s4"]):  # one creator's four uploads
        for k, u in enumerate(fans):
            batch.setdefault(u, []).append(act(T0 + 300 * job + k, video, "the-creator"))
    store.apply(batch)
    farm_score = _judge(store.activity["f0"], store)
    fan_score = _judge(store.activity["fan0"], store)
    assert farm_score.evidence["sync"] == 1.0 and set(farm_score.partners) == set(farm[1:])
    assert farm_score.flagged and farm_score.channels == 4
    assert fan_score.evidence["sync"] == 0.0 and not fan_score.flagged


def test_being_near_the_same_accounts_within_half_an_hour_needs_more_than_that():
    """Loose co-engagement (+-30 min) is what an account watching boosted videos shares with the
    bots boosting them: alone it does not flag; in lockstep (+-3 min) it does."""
    store = InMemoryAccountStore()
    batch: dict[str, list[Action]] = {}
    for job, video in enumerate(["a1", "b1", "c1", "d1"]):
        for k in range(8):
            batch.setdefault(f"f{k}", []).append(act(T0 + 300 * job + 3 * k, video, f"ch-{video}"))
    store.apply(batch)
    sc = _judge(store.activity["f0"], store)
    assert 0.5 <= sc.evidence["sync"] < 0.7 and not sc.flagged


def test_fake_hours_need_most_actions_there_on_unrelated_channels_or_in_several_hours():
    a = AccountActivity("u")
    a.add([act(T0 + 60 * k, f"v{k % 3}", f"c{k % 3}") for k in range(6)])
    hot = {(f"v{k}", (T0 + 60 * j) // 60): 0.9 for k in range(3) for j in range(6)}
    assert _judge(a, suspicion=hot).evidence["fake_hours"] == 1.0
    # a farm account on one customer, across its delivery's hours
    one_channel = AccountActivity("w")
    one_channel.add([act(T0 + 60 * k, "v0", "same") for k in range(3)])
    assert _judge(one_channel, suspicion=hot).evidence["fake_hours"] == 1.0
    # three comments in one suspicious hour of one post: a person, whatever the video level said
    one_hour = AccountActivity("p")
    one_hour.add([act(T0 + k, "v0", "same") for k in range(5)])
    assert _judge(one_hour, suspicion=hot).evidence["fake_hours"] == 0.0
    # most of its activity elsewhere: it landed there by chance
    busy = AccountActivity("b")
    busy.add([act(T0 + 60 * k, "v0", "c0") for k in range(3)] + [act(T0 + 60 * k, f"o{k}", f"o{k}") for k in range(5)])
    assert _judge(busy, suspicion=hot).evidence["fake_hours"] == 0.0
    # the video level localises fake hours to +-1 h: the hour next to a suspicious one counts, two away does not
    edge = AccountActivity("e")
    edge.add([act(T0 + 60 * k, "late", "cl") for k in range(3)])
    one_hot = {("late", T0 // 60 + 3): 0.9}
    assert _judge(edge, suspicion=one_hot).evidence["fake_hours"] == 0.0, "only its last action is next to it"
    assert _judge(edge, suspicion={("late", T0 // 60 + 1): 0.9}).evidence["fake_hours"] == 1.0
    assert ("late", T0 // 60 + 3) in AccountJudge.suspicion_queries(edge)
    # too few actions there to say anything
    few = AccountActivity("f")
    few.add([act(T0, "v0", "c0"), act(T0 + 60, "v1", "c1")])
    assert _judge(few, suspicion=hot).evidence["fake_hours"] == 0.0


def test_the_account_decision_publishes_once_updates_materially_withdraws_and_ids_are_deterministic():
    base = AccountScore("u", 0.95, dict.fromkeys(ACCOUNT_PATTERNS, 0.0) | {"no_sleep": 1.0}, [], 0,
                        [{"video_id": "v", "first": T0, "last": T0, "metrics": ["likes"], "events": 3}], "x")
    state, status = decide_account(None, base, last_minute=T0)
    assert status == "new" and state.flag_id == account_flag_id("u", 0, 1)
    again, status = decide_account(state, base, last_minute=T0 + 30)
    assert status is None and again == state, "the same evidence publishes nothing"
    more = AccountScore("u", 0.97, base.evidence | {"regular": 1.0}, [], 0, base.videos, "y")
    state, status = decide_account(state, more, last_minute=T0 + 60)
    assert status == "updated" and "regular" in state.patterns
    calm = AccountScore("u", 0.1, dict.fromkeys(ACCOUNT_PATTERNS, 0.0), [], 0, base.videos, "z")
    assert decide_account(state, calm, last_minute=T0 + 120)[1] is None, "not within a day of its flag"
    state, status = decide_account(state, calm, last_minute=T0 + 2 * 24 * 60)
    assert status == "withdrawn" and state.generation == 1
    rec = account_record(calm, state, status, watermark=T0 * 60.0, detected_at=T0 * 60.0)
    jsonschema.validate(rec, SCHEMA)
    rec = account_record(more, state, "updated", watermark=T0 * 60.0, detected_at=T0 * 60.0)
    jsonschema.validate(rec, SCHEMA)


@pytest.mark.asyncio
async def test_the_redis_store_keeps_what_the_in_memory_one_keeps_and_a_replay_adds_nothing(redis_client):
    rng = np.random.default_rng(3)
    batch: dict[str, list[Action]] = {}
    for _ in range(400):  # within the day the engagers are kept; each account's actions in time order
        u = f"u{int(rng.integers(0, 40))}"
        batch.setdefault(u, []).append(act(T0 + int(rng.integers(0, 1400)), f"v{int(rng.integers(0, 30))}",
                                           f"c{int(rng.integers(0, 6))}", likes=int(rng.integers(1, 3)),
                                           partition=int(rng.integers(0, 4))))
    for acts in batch.values():
        acts.sort(key=lambda a: a.minute)
    store = AccountStore(redis_client, "acc", Metrics(), ttl_s=3600)
    memory = InMemoryAccountStore()
    due = await store.apply(batch)
    memory.apply(batch)
    assert set(due) == {u for u, acts in batch.items() if len({a.key() for a in acts}) >= 3}
    assert await store.apply(batch) == [], "a replay: nothing new, nobody due again"
    users = sorted(batch)
    later = {users[0]: [act(T0 + d * 1440 + 5, "v1", "c1") for d in (3, 8, 9)] + [act(T0 + 2 * 1440, "v2")],
             "dup": [act(T0 + 1401, "v1", "c1")] * 2}  # a producer's retry can put one action twice in a batch
    users.append("dup")
    await store.apply(later)  # days 8 apart share a field in Redis: both keep the last 8 days
    memory.apply(later)
    got = await store.activity(users)
    for u in users:
        want = memory.activity[u]
        assert got[u].actions == want.actions and got[u].day_masks == want.day_masks, u
    assert len(got["dup"].actions) == 1
    for u in users:  # both keys of an account live as long as the store's TTL (refreshed once a clock period)
        assert 0 < await redis_client.ttl(keys.account_state("acc", u)) <= 3600
        assert 0 < await redis_client.ttl(keys.account_ring("acc", u)) <= 3600
    crowd = {f"fan{k}": [act(T0 + 600 + k % 20, "viral", "cv")] for k in range(200)}  # a crowd within minutes
    await store.apply(crowd)
    memory.apply(crowd)
    queries = [(a.video_id, a.minute) for a in batch[users[0]]] + [("viral", T0 + 605)]
    redis_co = await store.co_engagers(queries)
    memory_co = memory.co_engagers(queries)
    assert ("viral", T0 + 605) not in redis_co, "being in a crowd says nothing: the query is left out"
    assert redis_co.keys() == memory_co.keys() and len(redis_co) == len(set(queries)) - 1
    for q in redis_co:
        assert sorted(redis_co[q]) == sorted(memory_co[q])
    # the engagers of an hour (what a newly suspicious hour makes due): the same accounts from both,
    # each at its latest minute on the video (an account that came back later is not there)
    for video in ("v1", "v2", "viral"):
        for hour in range(T0 // 60, T0 // 60 + 25):
            for hours in (1, 3):
                assert sorted(await store.engaged_in(video, hour, hours=hours)) == sorted(
                    memory.engaged_in(video, hour, hours=hours)), (video, hour, hours)
    assert len(memory.engaged_in("viral", (T0 + 600) // 60, limit=50)) == 50
    hours = await store.video_hours(["v1"])
    actions_v1 = {(u, a.minute) for b in (batch, later) for u, acts in b.items() for a in acts if a.video_id == "v1"}
    assert sum(t for t, _ in hours["v1"][0].values()) == len(actions_v1)


@pytest.mark.asyncio
async def test_a_videos_account_actions_count_once_each_in_their_hour_whatever_order_they_arrive_in(redis_client):
    """Who engaged a video, and how many account actions each hour had: an action counts when it is
    later than the account's latest on the video (a replay, or an earlier action arriving late, adds
    nothing); a flagged account's actions count as flagged too."""
    store = AccountStore(redis_client, "ord", Metrics(), ttl_s=3600)
    h = T0 // 60
    first = {"a": [act(T0 + m, "v", partition=1) for m in (10, 5, 70, 70, 65, 130)],  # out of order, one twice
             "b": [act(T0 + 8, "v"), act(T0 + 9, "w")]}
    await store.apply(first)
    await store.apply(first)  # a replay
    await store.mark_flagged("b", True)
    await store.apply({"b": [act(T0 + 7, "v"), act(T0 + 75, "v")], "a": [act(T0 + 125, "v"), act(T0 + 131, "v")]})
    hours = (await store.video_hours(["v"]))["v"][0]
    # a: 10 and 70 (5, the second 70 and 65 arrived after a later one), 130, then 131; b: 8, then 75 flagged
    assert hours == {h: (2, 0), h + 1: (2, 1), h + 2: (2, 0)}
    assert (await store.video_hours(["w"]))["w"][0] == {h: (1, 0)}
    assert sorted(await store.engaged_in("v", h, hours=3)) == ["a", "b"]
    latest = {u.decode(): int(m) for u, m in await redis_client.zrange(keys.engagers("ord", "v"), 0, -1,
                                                                        withscores=True)}
    assert latest == {"a": T0 + 131, "b": T0 + 75}


@pytest.mark.asyncio
async def test_overlapping_co_engager_queries_find_what_the_in_memory_store_finds(redis_client):
    """A judgement claim's queries on one video overlap (its accounts were made due by the same
    suspicious hours): each finds what the in-memory store finds, a query whose window holds a
    crowd is left out while its neighbours are answered, on a busy video too."""
    store = AccountStore(redis_client, "co", Metrics(), ttl_s=3600)
    memory = InMemoryAccountStore()
    batch: dict[str, list[Action]] = {}
    for k in range(700):  # "busy": one engager a minute
        batch[f"b{k}"] = [act(T0 + k, "busy")]
    for k in range(200):  # "mixed": a crowd within minutes 300-310, a few before and after
        batch[f"c{k}"] = [act(T0 + 300 + k % 11, "mixed")]
    for k, m in enumerate((250, 275, 330, 345, 360, 498, 505)):
        batch.setdefault(f"s{k}", []).append(act(T0 + m, "mixed"))
    await store.apply(batch)
    memory.apply(batch)
    queries = [("busy", T0 + m) for m in range(100, 700, 50)]  # overlapping windows of 61 engagers each
    queries += [("mixed", T0 + m) for m in (280, 300, 340, 345, 500)] + [("mixed", T0 + 300), ("none", T0)]
    got, want = await store.co_engagers(queries), memory.co_engagers(queries)
    assert got.keys() == want.keys()
    assert ("mixed", T0 + 300) not in got and ("mixed", T0 + 280) not in got, "in the crowd's window"
    assert {("mixed", T0 + 340), ("mixed", T0 + 500), ("busy", T0 + 100)} <= got.keys()
    for q in got:
        assert sorted(got[q]) == sorted(want[q]), q
    assert len(got[("busy", T0 + 400)]) == 61


def test_accounts_are_sharded_by_partition_consistently():
    shards = [shard_of(f"user-{k}", 8) for k in range(2000)]
    assert shards == [shard_of(f"user-{k}", 8) for k in range(2000)]
    assert set(shards) == set(range(8)) and max(np.bincount(shards)) < 2 * 2000 / 8


def test_an_account_gone_quiet_is_judged_again_three_times_then_left_alone():
    assert next_quiet_judgement(100, 100) == 100 + 12 * 60
    assert next_quiet_judgement(100, 100 + 12 * 60) == 100 + 36 * 60
    assert next_quiet_judgement(100, 100 + 12 * 60 + 5) == 100 + 36 * 60
    assert next_quiet_judgement(100, 100 + 84 * 60) is None
    assert next_quiet_judgement(100, 99, after=()) is None


def test_what_is_suspicious_for_the_user_level_does_not_move_with_a_models_probability_scale():
    """A retrained model whose hour probabilities are a monotone rescale of another's, with the
    operating curve to match, makes the same hours suspicious: the threshold is the model's own
    calibration (an organic video rate), not a probability."""
    rng = np.random.default_rng(3)
    organic, fake = rng.beta(2, 8, 4000), rng.beta(5, 2, 1000)  # per video: the highest hour probability

    def squash(p):  # another model: the same order, another scale
        return np.asarray(p) ** 3

    curve_a, curve_b = OperatingCurve.measure(organic, fake), OperatingCurve.measure(squash(organic), squash(fake))
    t_a, t_b = suspicion_threshold(curve_a), suspicion_threshold(curve_b)
    assert t_b < t_a - 0.1, "the squashed model's threshold sits lower, where its probabilities are"
    hours = rng.random(20000)
    assert np.mean((suspicion(hours, t_a) >= SUSPECT_P) != (suspicion(squash(hours), t_b) >= SUSPECT_P)) < 0.01
    # on the user level's scale: the threshold is SUSPECT_P, order kept, 0 and 1 fixed
    s = suspicion(np.array([0.0, t_b / 2, t_b, (1 + t_b) / 2, 1.0]), t_b)
    assert s[2] == pytest.approx(SUSPECT_P) and s[0] == 0.0 and s[-1] == pytest.approx(1.0)
    assert np.all(np.diff(s) > 0)
    # never above the publish threshold (a flagged hour is suspicious); no curve, or one that
    # cannot reach the rate: SUSPECT_P as it stands
    assert Thresholds.from_artifact(0.3, suspect=suspicion_threshold(curve_a)).suspect == 0.3
    assert Thresholds.from_artifact(0.95, suspect=suspicion_threshold(None)).suspect == SUSPECT_P
    strict = OperatingCurve.from_points([{"threshold": 0.2, "fpr": 0.5}, {"threshold": 0.9, "fpr": 0.3}])
    assert Thresholds.from_artifact(0.95, suspect=suspicion_threshold(strict)).suspect == SUSPECT_P


QUIET_HOURS = (9, 10, 11)


def _farm_and_people(days: int = 3) -> list[dict]:
    """Accounts of a naive farm (around the clock, every 20 minutes, four customers of four
    channels), one account working a shift (the same nine hours every day) and people (awake
    8-23, bursty) on those videos and eight others, plus
    aggregated views that follow the day (flat views around the clock would make every
    video's hours suspicious, and so every person who engaged on them)."""
    rng = np.random.default_rng(7)
    start = T0 * 60
    events = []
    customers = customers_of_farm()
    for k in range(12):
        for step in range(days * 72):
            video, channel = customers[(step + k) % 4]
            events.append({"video_id": video, "ts": start + (step * 20 + k) * 60, "likes": 1, "user_id": f"farm-{k}",
                           "channel_id": channel})
    others = [(f"organic-{j}", f"ch-o{j}") for j in range(8)]  # people watch more than the farm's customers
    for k in range(30):
        for day in range(days):
            for h in rng.choice(np.arange(8, 23), 6, replace=False):
                video, channel = (customers + others)[int(rng.integers(0, 12))]
                events.append({"video_id": video, "ts": start + ((day * 24 + int(h)) * 60 + int(rng.integers(0, 60))) * 60,
                               "likes": 1, "user_id": f"person-{k}", "channel_id": channel})
    for h in QUIET_HOURS:  # one person acts three times on the first morning and never again
        events.append({"video_id": "organic-0", "ts": start + h * 3600, "likes": 1, "user_id": "quiet-0",
                       "channel_id": "ch-o0"})
    # one account working a shift, 0:00-8:59 UTC, on the people's videos: its third shift ends early
    # enough for its quiet judgement (12 event hours later) to fall inside the stream, so it is judged
    # with all three shifts known whatever the lane's timing
    shift = np.random.default_rng(11)
    for day in range(days):
        for h in range(0, 9):
            for minute in sorted(shift.choice(60, int(shift.integers(1, 4)), replace=False).tolist()):
                video, channel = others[int(shift.integers(0, len(others)))]
                events.append({"video_id": video, "ts": start + ((day * 24 + h) * 60 + minute) * 60, "likes": 1,
                               "user_id": "shift-0", "channel_id": channel})
    for video, channel in customers + others:  # audiences sleep too: views follow the day
        for hour in range(days * 24):
            awake = 0.15 + 0.85 * np.sin(np.pi * max(0, hour % 24 - 6) / 18) ** 2
            events.append({"video_id": video, "ts": start + hour * 3600, "views": int(rng.poisson(60 * awake)),
                           "channel_id": channel})
    return sorted(events, key=lambda e: e["ts"])


def test_a_worker_flags_the_farms_accounts_not_the_people_and_serves_them(kafka_bootstrap, redis_url, tmp_path):
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    worker = WorkerProcess(dep, tmp_path)
    try:
        worker.wait_ready()
        events = _farm_and_people()
        # the first half-day, until the quiet person is judged (by then it has gone quiet), then the rest
        split = sum(e["ts"] < (T0 + 12 * 60) * 60 for e in events)
        dep.produce([(e["video_id"], json.dumps(e).encode()) for e in events[:split]])
        t0 = time.monotonic()
        while worker.get("/accounts/quiet-0")[0] != 200 and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        dep.produce([(e["video_id"], json.dumps(e).encode()) for e in events[split:]])
        worker.wait_drained(timeout_s=120)
        records = [json.loads(r.value) for r in dep.read_topic(dep.account_flags, idle_s=3.0)]
        flagged = {r["user_id"] for r in records if r["status"] != "withdrawn"}
        for r in records:
            jsonschema.validate(r, SCHEMA)
        wrong = {u: worker.get_json(f"/accounts/{u}")[1] for u in flagged if not u.startswith(("farm-", "shift-"))}
        assert flagged == {f"farm-{k}" for k in range(12)} | {"shift-0"}, json.dumps(wrong)
        assert {p for r in records if r["user_id"] == "shift-0" for p in r["patterns"]} == {"shift_hours"}
        first = [r for r in records if r["user_id"] == "farm-0"][0]
        assert first["videos"] and first["patterns"]
        assert {"no_sleep", "regular"} <= {p for r in records if r["user_id"] == "farm-0" for p in r["patterns"]}
        status, doc = worker.get_json("/accounts/farm-0")
        assert status == 200 and doc["flagged"] and doc["flag"]["flag_id"] in {r["flag_id"] for r in records}
        status, doc = worker.get_json("/accounts/person-0")
        assert status == 200 and not doc["flagged"]
        assert worker.get("/accounts/nobody")[0] == 404
        m = worker.metrics()
        assert m["detector_account_actions_total"] == sum(1 for e in events if "user_id" in e)
        assert m['detector_account_flags_total{status="new"}'] == 13
        # an account gone quiet is judged again 12 and 36 event hours after its last action, or
        # once if the worker reaches both at once (the stream runs 72 h; it was first judged before
        # it went quiet): after that, its next quiet judgement is the last, at 84 h
        last = (T0 + QUIET_HOURS[-1] * 60) * 60_000
        assert _quiet_due(redis_url, dep, "quiet-0") == last + 84 * 3_600_000, worker.log_tail()
        assert worker.metrics()["detector_account_quiet_judgements_total"] >= 1
        # the farm's accounts carry its customers' hours: video flags name them and say so
        flags = [json.loads(r.value) for r in dep.read_topic(dep.flags, idle_s=3.0)]
        carried = [f for f in flags if any("coordinated_accounts" in w["patterns"] for w in f["windows"])]
        assert carried, "hours carried by flagged accounts are flagged"
        assert all(f["accounts"]["flagged_share"] >= 0.3 for f in carried)
        # ... and the user level takes the hours they carry as suspicious, whatever the counts
        # said: the next accounts working in them are judged with that evidence
        noted, owed = _carried_hours_noted(redis_url, dep.run_id, [c for c, _ in customers_of_farm()])
        assert noted >= 0.9 * owed and owed >= 12, (noted, owed)
        # a moderator clears one of them (the moderation loop): its flag is withdrawn and says why
        asyncio.run(_send_verdict(dep, {"flag_id": first["flag_id"], "user_id": "farm-0", "verdict": "false_positive",
                                        "scope": "episode", "reviewer": "mod", "ts": time.time()}))
        t0 = time.monotonic()
        withdrawn = []
        while not withdrawn and time.monotonic() - t0 < 20:
            later = [json.loads(r.value) for r in dep.read_topic(dep.account_flags, idle_s=0.5)]
            withdrawn = [r for r in later if r["user_id"] == "farm-0" and r["status"] == "withdrawn"
                         and "moderation" in r]
        assert withdrawn, worker.log_tail()
        jsonschema.validate(withdrawn[0], SCHEMA)
        assert withdrawn[0]["moderation"]["verdict"] == "false_positive"
        assert "cleared by moderation" in withdrawn[0]["explanation"]
        # an account allowlist (scope account): the standing flag of farm-1 is withdrawn too
        asyncio.run(_send_verdict(dep, {"user_id": "farm-1", "verdict": "false_positive", "scope": "account",
                                        "ts": time.time()}))
        t0 = time.monotonic()
        allowed = []
        while not allowed and time.monotonic() - t0 < 20:
            later = [json.loads(r.value) for r in dep.read_topic(dep.account_flags, idle_s=0.5)]
            allowed = [r for r in later if r["user_id"] == "farm-1" and r["status"] == "withdrawn"
                       and (r.get("moderation") or {}).get("scope") == "account"]
        assert allowed, worker.log_tail()
    finally:
        assert worker.terminate() == 0


def _quiet_due(redis_url: str, dep: Deployment, user: str, wait_s: float = 20.0) -> float | None:
    """The account's due time in the worker's quiet schedule, once it is past its 36-hour judgement
    (the account lane judges quiet accounts on its own passes: polled, bounded)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    key = keys.due(dep.run_id, f"{dep.events}#accounts-quiet", shard_of(user, dep.partitions))
    try:
        t0 = time.monotonic()
        while True:
            due = r.zscore(key, user)
            if (due is not None and due > (T0 + 48 * 60) * 60_000) or time.monotonic() - t0 > wait_s:
                return due
            time.sleep(0.2)
    finally:
        r.close()


def customers_of_farm() -> list[tuple[str, str]]:
    return [("cust-a", "ch-a"), ("cust-b", "ch-b"), ("cust-c", "ch-c"), ("cust-d", "ch-d")]


def _carried_hours_noted(redis_url: str, prefix: str, videos: list[str]) -> tuple[int, int]:
    """(carried hours noted as suspicious at least as high as their share says, carried hours
    the video level has judged since they were carried: all but each video's last six hours)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    noted = owed = 0
    try:
        for v in videos:
            counts = {k.decode(): int(x) for k, x in r.hgetall(keys.video_accounts(prefix, v)).items()}
            suspicious = {int(k): float(x) for k, x in r.hgetall(keys.video_suspicion(prefix, v)).items()}
            hours = sorted(int(k[1:]) for k in counts if k.startswith("t"))
            for h in hours[:-6]:
                share = carried_share(counts[f"t{h}"], counts.get(f"f{h}", 0))
                if share:
                    owed += 1
                    noted += suspicious.get(h, 0.0) >= carried_suspicion(share) - 1e-3
    finally:
        r.close()
    return noted, owed


async def _send_verdict(dep: Deployment, doc: dict) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=dep.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(dep.verdicts, json.dumps(doc).encode(), key=doc["user_id"].encode())
    finally:
        await producer.stop()
