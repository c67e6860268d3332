"""The durable re-scoring schedule on a real Redis: due order, the immediate path's own marks,
leases that keep a video due when it changed while it was being scored."""

from __future__ import annotations

import uuid

import pytest

from stream_detector.schedule import EventTimeSchedule, RescoreSchedule, now_ms
from stream_detector.worker.marks import URGENT_DUE_MS


@pytest.mark.asyncio
async def test_cadence_claims_leave_spike_marks_to_the_immediate_path(redis_client):
    schedule = RescoreSchedule(redis_client, prefix=f"t{uuid.uuid4().hex[:8]}", topic="events", lease_s=30)
    now = now_ms()
    await schedule.mark({0: {"spiked": URGENT_DUE_MS, "closed": now - 1000, "later": now + 60_000}})
    cadence, lease = await schedule.claim(0, 10, after_ms=URGENT_DUE_MS)
    assert cadence == ["closed"]  # not the spike's mark, not what is due later
    immediate, _ = await schedule.claim(0, 10, at_ms=URGENT_DUE_MS)
    assert immediate == ["spiked"]
    assert (await schedule.claim(0, 10))[0] == []  # both leased, "later" not due yet
    # a change while "closed" is being scored keeps it due after the release
    await schedule.mark({0: {"closed": URGENT_DUE_MS}})
    assert await schedule.release(0, ["closed"], lease) == 0
    again, _ = await schedule.claim(0, 10, at_ms=URGENT_DUE_MS)
    assert again == ["closed"]


@pytest.mark.asyncio
async def test_marks_ahead_are_claimed_before_routine_ones_and_their_wait_is_measured_from_their_time(redis_client):
    from prometheus_client import CollectorRegistry, Histogram

    waited = Histogram("waited_seconds", "test", buckets=(1, 60, 3600), registry=CollectorRegistry())
    schedule = RescoreSchedule(redis_client, prefix=f"t{uuid.uuid4().hex[:8]}", topic="events#accounts",
                               lease_s=30, delay=waited)
    now = now_ms()
    await schedule.mark({0: {f"routine{k}": now - 10_000 + k for k in range(5)}})
    await schedule.mark({0: {"suspect": now}}, ahead=True)
    await schedule.mark({0: {"suspect": now - 20_000}})  # a routine mark does not move it back
    first, _ = await schedule.claim(0, 2)
    assert first == ["suspect", "routine0"]
    assert waited._sum.get() < 30, "waited seconds, not decades"
    rest, _ = await schedule.claim(0, 10)
    assert rest == [f"routine{k}" for k in range(1, 5)]


@pytest.mark.asyncio
async def test_an_event_time_schedule_is_due_by_the_watermark_and_a_later_mark_postpones(redis_client):
    """The user level's quiet judgements: due in event time (a replay of last year is due as its
    events pass, not by the wall clock), postponed when the account acts again, and a lease that
    runs out in event time makes a crashed judge's account due again."""
    schedule = EventTimeSchedule(redis_client, prefix=f"t{uuid.uuid4().hex[:8]}", topic="events#accounts-quiet",
                                 lease_s=30)
    hour = 3_600_000
    t0 = 1_700_000_000_000  # event time, years before the wall clock
    await schedule.mark({1: {"quiet": t0 + 12 * hour, "back": t0 + 12 * hour, "later": t0 + 36 * hour}})
    await schedule.mark({1: {"back": t0 + 20 * hour}})  # it acted again: its quiet judgement moves on
    await schedule.mark({1: {"quiet": t0}})  # ... and an earlier mark does not move it back
    assert (await schedule.claim(1, 10, at_ms=t0 + 11 * hour))[0] == []
    got, lease = await schedule.claim(1, 10, at_ms=t0 + 13 * hour)
    assert got == ["quiet"] and lease == t0 + 13 * hour + 30_000
    assert (await schedule.claim(1, 10, at_ms=t0 + 13 * hour))[0] == [], "leased"
    got, lease = await schedule.claim(1, 10, at_ms=t0 + 13 * hour + 31_000)
    assert got == ["quiet"], "the lease ran out"
    assert await schedule.release(1, got, lease) == 1
    got, lease = await schedule.claim(1, 10, at_ms=t0 + 21 * hour)
    assert got == ["back"]
    await schedule.mark({1: {"back": t0 + 44 * hour}})  # judged: its next quiet judgement
    assert await schedule.release(1, ["back"], lease) == 0  # kept for it
    got, lease = await schedule.claim(1, 10, at_ms=t0 + 40 * hour)
    assert got == ["later"] and await schedule.release(1, got, lease) == 1
    assert (await schedule.claim(1, 10, at_ms=t0 + 45 * hour))[0] == ["back"]
