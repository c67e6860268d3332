"""The immediate path on a real Redis and a real broker: it decides the videos whose minute
ring holds a burst that fires, and hands the others back to the cadence path."""

from __future__ import annotations

import time
import uuid

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from stream_detector.config import DEFAULT_MODEL_PATH, Settings
from stream_detector.dependencies import DependencyGuard
from stream_detector.events import Event
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact
from stream_detector.publisher import FlagPublisher
from stream_detector.schedule import RescoreSchedule, now_ms
from stream_detector.windows import WindowStore
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.ingest import Arrivals
from stream_detector.worker.marks import URGENT_DUE_MS
from stream_detector.worker.model_slot import ModelSlot
from stream_detector.worker.scoring import ScoringLoop

NOW_HOUR = int(time.time() // 3600)  # the open event hour: the minute rings are in it


@pytest_asyncio.fixture
async def producer(kafka_bootstrap):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def _context(redis_client, producer, consumer=None) -> WorkerContext:
    """What the scoring loop shares with the rest of a worker, on the real servers."""
    metrics = Metrics()
    settings = Settings(key_prefix=f"imm{uuid.uuid4().hex[:8]}", events_topic="events",
                        flags_topic=f"flags-{uuid.uuid4().hex[:8]}")
    return WorkerContext(settings, metrics, DependencyGuard(metrics, limit_s=5.0), consumer=consumer,
                         redis=redis_client, producer=producer,
                         windows=WindowStore(redis_client, ttl_seconds=3600, prefix=settings.key_prefix,
                                             spike_minute_count=30, metrics=metrics),
                         schedule=RescoreSchedule(redis_client, prefix=settings.key_prefix, topic="events"))


def _slot_and_publisher(ctx: WorkerContext) -> tuple[ModelSlot, FlagPublisher]:
    slot = ModelSlot(ctx.settings, ModelArtifact.load(DEFAULT_MODEL_PATH), ctx.metrics)
    return slot, FlagPublisher(ctx.redis, ctx.producer, ctx.metrics, topic=ctx.settings.flags_topic,
                               state_key=ctx.flag_key, state_ttl_s=3600)


def _history(vid: str, views: int, likes: int) -> list[Event]:
    """40 closed hours of steady engagement, ten events an hour."""
    return [Event(vid, (NOW_HOUR - 40 + h) * 3600 + 360.0 * k, (views // 10, likes // 10, 0, 0))
            for h in range(40) for k in range(10)]


@pytest.mark.asyncio
async def test_immediate_path_decides_firing_bursts_and_hands_back_the_rest(redis_client, producer):
    ctx = _context(redis_client, producer)
    metrics = ctx.metrics
    minute = NOW_HOUR * 3600 + 600.0
    events = _history("calm", 1000, 100) + _history("bought", 1000, 100)
    events += [Event("calm", minute, (40, 4, 0, 0))]  # a busy minute in the video's own mix
    events += [Event("bought", minute, (0, 900, 0, 0))]  # 900 likes alone in one minute
    result = await ctx.windows.apply(events, list(range(len(events))))
    assert result.spikes == {"calm", "bought"}  # both reached the spike count: both are urgent
    await ctx.schedule.mark({0: {"calm": URGENT_DUE_MS, "bought": URGENT_DUE_MS}})

    slot, publisher = _slot_and_publisher(ctx)
    checkpoint = Checkpoint(ctx)
    checkpoint.clock.set_open({0: NOW_HOUR})
    loop = ScoringLoop(ctx, slot, checkpoint, Arrivals(), publisher)  # scores in a thread
    assert await loop._score_claimed(0, 10, URGENT_DUE_MS, "immediate") == 2

    assert metrics.videos_deferred._value.get() == 1
    assert metrics.videos_scored.labels(path="immediate")._value.get() == 1
    due = dict(await redis_client.zrange(ctx.schedule.key(0), 0, -1, withscores=True))
    assert set(due) == {b"calm"}  # handed back, due now: the cadence path's to judge
    assert abs(due[b"calm"] - now_ms()) < 10_000
    assert (await ctx.schedule.claim(0, 10, after_ms=URGENT_DUE_MS))[0] == ["calm"]
    assert publisher.published == 1  # the bought burst, flagged at once
    assert await redis_client.get(ctx.flag_key("bought")) is not None
    assert await redis_client.get(ctx.flag_key("calm")) is None


class _Assigned:  # the consumer's assignment, which is all the scoring loop asks of it
    def __init__(self, *partitions: int) -> None:
        from aiokafka import TopicPartition

        self.tps = {TopicPartition("events", p) for p in partitions}

    def assignment(self):
        return self.tps


@pytest.mark.asyncio
async def test_the_immediate_path_claims_where_spikes_were_marked_and_cadence_lanes_let_it_go_first(
        redis_client, producer, monkeypatch):
    import asyncio

    import stream_detector.worker.scoring as scoring

    ctx = _context(redis_client, producer, consumer=_Assigned(0, 1, 2, 3))
    minute = NOW_HOUR * 3600 + 600.0
    checkpoint = Checkpoint(ctx)
    for p in (1, 2, 3):
        vid = f"bought-{p}"
        events = _history(vid, 1000, 100) + [Event(vid, minute, (0, 900, 0, 0))]
        await ctx.windows.apply(events, list(range(len(events))), [p] * len(events))
        await ctx.schedule.mark({p: {vid: URGENT_DUE_MS}})
        checkpoint.clock.set_open({p: NOW_HOUR})
    slot, publisher = _slot_and_publisher(ctx)
    arrivals = Arrivals()
    loop = ScoringLoop(ctx, slot, checkpoint, arrivals, publisher)

    arrivals.add([], {"bought-1", "bought-3"}, {1, 3})  # the consume side wrote two spikes' marks
    assert arrivals.spiked.is_set() and not arrivals.calm.is_set()
    loop._swept = time.monotonic()  # the once-a-second claim in every partition is not due
    assert await loop.score_immediate() == 2  # partitions 1 and 3 only, together
    assert arrivals.calm.is_set() and not arrivals.spiked_partitions
    assert await redis_client.zcard(ctx.schedule.key(2)) == 1  # partition 2's mark was not announced
    loop._swept = 0.0
    assert await loop.score_immediate() == 1  # ... the sweep finds it
    assert publisher.published == 3

    # a cadence lane waits (at most CADENCE_YIELD_S) while a spike's pass is pending
    monkeypatch.setattr(scoring, "CADENCE_YIELD_S", 30.0)
    arrivals.spike({0})
    lane = asyncio.create_task(loop.score_cadence(0, 1))
    await asyncio.sleep(0.3)
    assert not lane.done()
    assert await loop.score_immediate() == 0  # partition 0 had nothing due after all: calm again
    assert await asyncio.wait_for(lane, 10) == 0
    monkeypatch.setattr(scoring, "CADENCE_YIELD_S", 0.2)
    arrivals.spike({0})  # nobody judges it: the lane goes on after the bound
    assert await asyncio.wait_for(loop.score_cadence(0, 1), 10) == 0


@pytest.mark.asyncio
async def test_a_bought_burst_on_a_new_video_is_flagged_at_once_a_viral_start_is_not(redis_client, producer):
    """No closed history, so no usual hour: only a minute no audience makes counts (likes far
    beyond every view of the ring). Before, both waited for their hour to close."""
    ctx = _context(redis_client, producer)
    minute = NOW_HOUR * 3600 + 600.0
    events = [Event("new-bought", minute, (0, 4000, 0, 0))]  # a new upload: 4,000 likes, no views
    events += [Event("new-viral", minute + 60.0 * k, (3000, 240, 10, 20)) for k in range(3)]  # a fast organic start
    result = await ctx.windows.apply(events, list(range(len(events))))
    assert result.spikes == {"new-bought", "new-viral"}
    await ctx.schedule.mark({0: {"new-bought": URGENT_DUE_MS, "new-viral": URGENT_DUE_MS}})
    slot, publisher = _slot_and_publisher(ctx)
    checkpoint = Checkpoint(ctx)
    checkpoint.clock.set_open({0: NOW_HOUR})
    loop = ScoringLoop(ctx, slot, checkpoint, Arrivals(), publisher)
    assert await loop._score_claimed(0, 10, URGENT_DUE_MS, "immediate") == 2
    assert publisher.published == 1
    assert ctx.metrics.videos_deferred._value.get() == 1  # the viral start goes to the hourly path
    state = await redis_client.get(ctx.flag_key("new-bought"))
    assert state is not None and b"likes" in state
    assert await redis_client.get(ctx.flag_key("new-viral")) is None
