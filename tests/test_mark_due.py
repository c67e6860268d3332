"""An hour closure's marks on a real Redis: a pass that claims them the moment they land
judges the closed hour, and a write that fails leaves the closure to its retry."""

from __future__ import annotations

import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from stream_detector.config import Settings
from stream_detector.dependencies import DependencyGuard
from stream_detector.events import Event
from stream_detector.metrics import Metrics
from stream_detector.schedule import RescoreSchedule
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.marks import DueMarks

HOUR = 480_000  # an event hour (epoch hours) of the test's partition clock


class AfterScheduleWrites(Metrics):
    """Runs ``hook`` right after each schedule write returns: the moment a concurrent scoring
    pass could claim what it wrote. With ``fail_call`` = n, the n-th schedule call raises
    instead (an injected connection fault: a real one cannot be timed onto one call)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None
        self.fail_call: int | None = None
        self.calls = 0

    async def timed_redis(self, operation, awaitable):
        if operation == "schedule":
            self.calls += 1
            if self.calls == self.fail_call:
                awaitable.close()
                raise RedisConnectionError("injected: connection lost during the marks write")
        result = await super().timed_redis(operation, awaitable)
        if operation == "schedule" and self.hook is not None:
            await self.hook()
        return result


def _ingest(redis_client, metrics: Metrics) -> tuple[DueMarks, Checkpoint, RescoreSchedule]:
    settings = Settings(key_prefix=f"t{uuid.uuid4().hex[:8]}", events_topic="events")
    schedule = RescoreSchedule(redis_client, prefix=settings.key_prefix, topic="events")  # its own metrics
    ctx = WorkerContext(settings, metrics, DependencyGuard(metrics, limit_s=5.0), redis=redis_client,
                        schedule=schedule)
    cp = Checkpoint(ctx)
    cp.clock.set_open({0: HOUR})
    cp.clock.high[0] = (HOUR + 1) * 3600 + 10.0  # this batch's events opened the next hour
    return DueMarks(ctx, cp, confirm_hours=lambda: 1), cp, schedule


@pytest.mark.asyncio
async def test_a_claim_the_moment_a_closure_is_marked_sees_the_closed_hour(redis_client):
    metrics = AfterScheduleWrites()
    ingest, cp, schedule = _ingest(redis_client, metrics)
    await redis_client.zadd(ingest.ctx.active_key(0), {"idle": HOUR})  # last active in the closing hour
    seen: dict[str, int] = {}

    async def claim_now() -> None:
        ids, _ = await schedule.claim(0, 10)
        for vid in ids:
            seen[vid] = cp.clock.open_hour(0)  # the now_hour a scoring pass would judge with

    metrics.hook = claim_now
    await ingest.mark_due([Event("busy", (HOUR + 1) * 3600 + 5.0, (3, 0, 0, 0))], [0], set())
    assert seen.get("idle") == HOUR + 1, seen  # claimed as soon as marked, and judged with the hour closed
    assert cp.clock.open_hour(0) == HOUR + 1


@pytest.mark.asyncio
async def test_a_failed_marks_write_leaves_the_closure_to_the_retry(redis_client):
    metrics = AfterScheduleWrites()
    ingest, cp, schedule = _ingest(redis_client, metrics)
    await redis_client.zadd(ingest.ctx.active_key(0), {"idle": HOUR})
    events = [Event("busy", (HOUR + 1) * 3600 + 5.0, (3, 0, 0, 0))]
    metrics.fail_call = 2  # a closure reads the closing hour's videos (1), then writes the marks (2)
    with pytest.raises(RedisConnectionError):
        await ingest.mark_due(events, [0], set())
    assert metrics.calls == 2
    assert cp.clock.open_hour(0) == HOUR  # not moved: the retry must still see the hour close
    assert (await schedule.claim(0, 10))[0] == []
    metrics.fail_call = None
    await ingest.mark_due(events, [0], set())  # the guard's retry
    claimed, _ = await schedule.claim(0, 10)
    assert sorted(claimed) == ["busy", "idle"] and cp.clock.open_hour(0) == HOUR + 1


async def _calls(redis_client, command: str) -> int:
    stats = await redis_client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.asyncio
async def test_active_sets_are_written_only_with_what_changed_and_stay_exact(redis_client):
    ingest, cp, _ = _ingest(redis_client, Metrics())
    cp.clock.high[0] = HOUR * 3600 + 10.0  # the clock stays at HOUR: no closure in these batches
    key = ingest.ctx.active_key(0)

    async def batch(*pairs: tuple[str, int]) -> tuple[int, int]:
        before = await _calls(redis_client, "zadd"), await _calls(redis_client, "pfadd")
        await ingest.mark_due([Event(v, h * 3600 + 30.0, (1, 0, 0, 0)) for v, h in pairs], [0] * len(pairs), set())
        return await _calls(redis_client, "zadd") - before[0], await _calls(redis_client, "pfadd") - before[1]

    assert await batch(("a", HOUR), ("b", HOUR)) == (1, 1)
    assert await batch(("a", HOUR), ("b", HOUR), ("a", HOUR)) == (0, 0)  # nothing new: nothing sent
    assert await batch(("b", HOUR), ("c", HOUR)) == (1, 1)  # only the new video c
    assert {v.decode(): s for v, s in await redis_client.zrange(key, 0, -1, withscores=True)} == {
        "a": HOUR, "b": HOUR, "c": HOUR}
    ingest.written.forget(0)  # a revocation or a rebuild: written again
    assert (await batch(("a", HOUR),))[0] == 1
    cp.clock.high[0] = (HOUR + 1) * 3600 + 5.0  # this batch closes HOUR: the active set is written again
    await batch(("a", HOUR + 1), ("c", HOUR + 1))
    assert {v.decode(): s for v, s in await redis_client.zrange(key, 0, -1, withscores=True)} == {
        "a": HOUR + 1, "b": HOUR, "c": HOUR + 1}
    assert await batch(("a", HOUR + 1), ("c", HOUR + 1)) == (0, 0)


def _due_and_heads_per_event(cols, partitions, clocks, spikes, now, cadence, confirm):
    """The rule event by event, as the consume loop once ran it: the reference."""
    from stream_detector.worker.marks import URGENT_DUE_MS

    due, heads = {}, {}
    hours = (cols.ts // 3600).astype(int).tolist()
    for vid, hour, p in zip(cols.video_ids, hours, partitions.tolist(), strict=True):
        head = heads.setdefault(p, {})
        if hour > head.get(vid, -1):
            head[vid] = hour
        old, new = clocks[p]
        marks = due.setdefault(p, {})
        if vid in spikes:
            marks[vid] = URGENT_DUE_MS
        elif hour < old:
            marks[vid] = min(marks.get(vid, cadence), cadence)
        elif new > old and hour >= old - confirm:
            marks[vid] = min(marks.get(vid, now), now)
    return due, heads


def test_due_and_heads_per_video_match_the_rule_event_by_event():
    import random

    import numpy as np

    from stream_detector.events import EventColumns
    from stream_detector.worker.marks import due_and_heads

    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 60)
        vids = [f"v{rng.randrange(12)}" for _ in range(n)]
        parts = np.array([rng.choice([0, 0, 1, 3]) if rng.random() < 0.9 else rng.randrange(4) for _ in range(n)])
        hours = [rng.randint(100, 106) for _ in range(n)]
        cols = EventColumns(vids, np.array([h * 3600.0 + rng.uniform(0, 3599) for h in hours]),
                            np.ones((n, 4), dtype=np.int64), [])
        clocks = {}
        for p in set(parts.tolist()):
            old = rng.randint(101, 106)
            clocks[p] = (old, old + rng.choice([0, 0, 1, 2]))
        spikes = {v for v in set(vids) if rng.random() < 0.15}
        got = due_and_heads(cols, parts, clocks, spikes, 1_000, 6_000)
        assert got == _due_and_heads_per_event(cols, parts, clocks, spikes, 1_000, 6_000, confirm=1)
