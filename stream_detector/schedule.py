"""Durable schedule of videos to re-score: one Redis sorted set per Kafka partition.

Why durable: offsets are committed as soon as windows are written, so "this video changed
and still needs scoring" must survive a crash too. Why per-video due times: re-scoring every
changed video on every tick does not scale (a hot video changes many times a second); each
video is re-scored at most once per cadence after its first unscored change, and a spike makes
it due at once (the immediate path).

Members are video ids, scores are due times in epoch milliseconds. ``mark`` uses ``ZADD LT``
(keep the earliest due time); ``claim`` leases due videos (moves their score to a lease
deadline, so a crashed scorer's work becomes due again); ``release`` removes a video only if
its score is still that lease, so a change that arrived while it was being scored keeps it
scheduled. Keys are hash-tagged per partition, so Redis Cluster works. A mark ahead
(``mark(..., ahead=True)``) is due ``AHEAD_MS`` earlier than its time: it sorts before every
routine one, so under a backlog the work most likely to matter is claimed first (the user
level: accounts that engaged in an hour just found suspicious).
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from prometheus_client import Histogram

from stream_detector import keys
from stream_detector.metrics import Metrics

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[4], ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], due[i])
end
return due
"""

_RELEASE = """
local n = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


AHEAD_MS = 10**12  # ~31 years: below every real due time (epoch ms ~1.8e12), above 0


def now_ms() -> int:
    return int(time.time() * 1000)


class RescoreSchedule:
    # due times on the wall clock: the earliest mark wins (ZADD LT), a lease runs on the wall
    # clock, and how long claimed members waited is observed; EventTimeSchedule turns it over
    event_time = False

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        topic: str,
        lease_s: float = 30.0,
        metrics: Metrics | None = None,
        delay: Histogram | None = None,
    ) -> None:
        """``delay``: the histogram that sees how long claimed members waited (default the
        video schedule's ``detector_schedule_delay_seconds``)."""
        metrics = metrics or Metrics()
        self.delay = delay if delay is not None else metrics.schedule_delay
        self.redis = redis
        self.prefix = prefix
        self.topic = topic
        self.lease_ms = int(lease_s * 1000)
        self.metrics = metrics
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    def key(self, partition: int) -> str:
        return keys.due(self.prefix, self.topic, partition)

    async def mark(self, due: dict[int, dict[str, int]], *, ahead: bool = False) -> None:
        """{partition: {video_id: due_ms}}; an earlier due time wins over a later one; marks
        ``ahead`` go before every routine one."""
        if not due:
            return
        if ahead:
            due = {p: {m: max(t - AHEAD_MS, 1) for m, t in members.items()} for p, members in due.items()}
        pipe = self.redis.pipeline(transaction=False)
        self.queue_marks(pipe, due)
        await self.metrics.timed_redis("schedule", pipe.execute())

    def queue_marks(self, pipe, due: dict[int, dict[str, int]]) -> None:
        """Add ``mark``'s commands to a pipeline the caller executes (one round trip per batch)."""
        for partition, videos in due.items():
            if videos:
                pipe.zadd(self.key(partition), videos, lt=not self.event_time, gt=self.event_time)

    async def claim(self, partition: int, limit: int, at_ms: int | None = None,
                    after_ms: int | None = None) -> tuple[list[str], int]:
        """Lease up to ``limit`` videos due at or before ``at_ms`` (default now) and, with
        ``after_ms``, strictly after it (the cadence path leaves the immediate path's marks to
        it), earliest first; returns (video_ids, lease deadline in epoch ms). How long the claimed videos waited
        past their due time goes to ``detector_schedule_delay_seconds`` (the cadence path's
        backlog; immediate-path marks carry no due time and are not observed)."""
        now = now_ms()
        at = now if at_ms is None else at_ms
        lease = (at if self.event_time else now) + self.lease_ms
        got = await self.metrics.timed_redis("schedule", self._claim(
            keys=[self.key(partition)], args=[at, lease, limit, "-inf" if after_ms is None else f"({after_ms}"]))
        ids = [v.decode() if isinstance(v, bytes) else v for v in got[0::2]]
        for due in () if self.event_time else got[1::2]:
            due_ms = float(due)
            if 0 < due_ms < AHEAD_MS:  # a mark ahead: its own time is AHEAD_MS later
                due_ms += AHEAD_MS
            if due_ms > 0:
                self.delay.observe(max(0.0, now - due_ms) / 1000.0)
        return ids, lease

    async def release(self, partition: int, video_ids: list[str], lease: int) -> int:
        if not video_ids:
            return 0
        return int(await self.metrics.timed_redis("schedule", self._release(keys=[self.key(partition)], args=[lease, *video_ids])))

    async def size(self, partitions: list[int]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for p in partitions:
            pipe.zcard(self.key(p))
        return int(sum(await self.metrics.timed_redis("schedule", pipe.execute())))


class EventTimeSchedule(RescoreSchedule):
    """Due times in event time (epoch ms of the stream's events), claimed up to the watermark:
    "an hour after this account's last action" means event hours, whatever the replay speed.
    A later mark postpones (``ZADD GT``: the account acted again); a lease is ``lease_s`` of
    event time past the claim's ``at_ms``, so a crashed judge's members come due again as the
    stream moves on. How long members waited is not observed: event time has no wall delay."""

    event_time = True
