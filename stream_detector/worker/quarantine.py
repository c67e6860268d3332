"""Videos whose judgement raises: isolated like poison records, retried a bounded number of
times, then set aside where an operator sees them.

One video whose window makes the scoring core or the decision raise (a bug met by rare data)
must cost that video, never its batch, its lane or the worker: ``ScoringLoop`` bisects a
failing batch down to the videos that fail and hands each to ``Quarantine.record``. A video
is tried ``MAX_ATTEMPTS`` times, ``DETECTOR_SCORING_RETRY_SECONDS`` apart (doubling), then **set aside** for
``SET_ASIDE_S``: claimed and released without scoring, listed at ``/quarantine`` with its
reason and traceback, counted (``detector_scoring_failures_total{outcome}``) and alerted
(``DetectorScoringFailures``). Another serving model (a fix pushed) or the end of the set-aside
time tries it again.

When every video fails it is not a poison video but a broken scorer: ``BrokenScoring`` after
``BROKEN_AFTER`` failed videos in a row with no success between them, and the worker ends
loudly instead of setting its whole population aside.

State: one JSON document per video (``keys.quarantined``, hash-tagged by video, expiring with
the set-aside time) and an index of the videos (``keys.quarantine_index``, a sorted set by last
failure) for the listing. Each worker keeps the set-aside ids in memory, refreshed every
``REFRESH_S`` (one index read, not one per batch).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from stream_detector import keys, redis_client
from stream_detector.metrics import Metrics

log = logging.getLogger("stream_detector.quarantine")

MAX_ATTEMPTS = 3
SET_ASIDE_S = 6 * 3600
BROKEN_AFTER = 8
REFRESH_S = 5.0
LISTED = 1000  # the index keeps at most this many videos (the most recent failures)
TRACEBACK_CHARS = 8000


class BrokenScoring(RuntimeError):
    """Every video fails: the scorer itself is broken, the worker must end."""


@dataclass
class Failure:
    """One video's failed judgement."""

    video_id: str
    partition: int
    path: str  # cadence / immediate
    reason: str  # one line: the exception
    traceback: str

    @classmethod
    def of(cls, video_id: str, partition: int, path: str, exc: BaseException) -> Failure:
        text = "".join(traceback.format_exception(exc))  # a child's exception carries its remote traceback
        return cls(video_id, partition, path, f"{type(exc).__name__}: {exc}"[:500], text[-TRACEBACK_CHARS:])


@dataclass
class QuarantineEntry:
    video_id: str
    partition: int
    path: str
    attempts: int
    reason: str
    traceback: str
    model_sha256: str
    first_failed_at: float
    last_failed_at: float
    retry_at: float | None  # next attempt (epoch s); None when set aside
    set_aside_until: float | None

    @classmethod
    def from_json(cls, raw: bytes | str) -> QuarantineEntry:
        return cls(**json.loads(raw))

    def to_dict(self) -> dict:
        return asdict(self)


class Quarantine:
    def __init__(self, redis: aioredis.Redis, prefix: str, metrics: Metrics, *, retry_s: float = 30.0) -> None:
        self.redis = redis
        self.retry_s = retry_s  # before the 2nd attempt; doubles for each next one
        self.prefix = prefix
        self.metrics = metrics
        self._set_aside: dict[str, str] = {}  # video -> model sha256 it failed with
        self._refreshed = 0.0
        self._failed_in_a_row = 0

    def _key(self, video_id: str) -> str:
        return keys.quarantined(self.prefix, video_id)

    @property
    def _index(self) -> str:
        return keys.quarantine_index(self.prefix)

    def succeeded(self) -> None:
        self._failed_in_a_row = 0

    def failed(self, failure: Failure) -> None:
        """A video failed; ``BrokenScoring`` once ``BROKEN_AFTER`` failed in a row (checked as
        the failures are found, before a whole batch is bisected video by video)."""
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= BROKEN_AFTER:
            raise BrokenScoring(f"{self._failed_in_a_row} videos in a row failed to score, none succeeded "
                                f"(last: {failure.video_id}: {failure.reason}): the scorer is broken")

    async def record(self, failure: Failure, model_sha256: str) -> float | None:
        """Count a failure; returns the seconds before the next attempt, or None when the video
        is now set aside."""
        now = time.time()
        raw = await self.metrics.timed_redis("quarantine", self.redis.get(self._key(failure.video_id)))
        old = QuarantineEntry.from_json(raw) if raw else None
        same = old is not None and old.model_sha256 == model_sha256
        attempts = old.attempts + 1 if same else 1
        set_aside = attempts >= MAX_ATTEMPTS
        delay = None if set_aside else self.retry_s * 2 ** (attempts - 1)
        entry = QuarantineEntry(failure.video_id, failure.partition, failure.path, attempts, failure.reason,
                                failure.traceback, model_sha256, old.first_failed_at if same else now, now,
                                None if delay is None else now + delay, now + SET_ASIDE_S if set_aside else None)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._key(failure.video_id), json.dumps(entry.to_dict()), ex=int(SET_ASIDE_S))
        await self.metrics.timed_redis("quarantine", pipe.execute())
        pipe = self.redis.pipeline(transaction=False)  # the index lives in its own slot
        pipe.zadd(self._index, {failure.video_id: now})
        pipe.zremrangebyrank(self._index, 0, -LISTED - 1)
        await self.metrics.timed_redis("quarantine", pipe.execute())
        outcome = "set_aside" if set_aside else "retry"
        self.metrics.scoring_failures.labels(outcome=outcome).inc()
        log.error("scoring failed video=%s partition=%d path=%s attempt=%d/%d outcome=%s reason=%r traceback=%r",
                  failure.video_id, failure.partition, failure.path, attempts, MAX_ATTEMPTS, outcome,
                  failure.reason, failure.traceback)
        if set_aside:
            self._set_aside[failure.video_id] = model_sha256
        return delay

    async def set_aside(self, video_ids: list[str], model_sha256: str) -> set[str]:
        """Of ``video_ids``, those set aside for this model (refreshed every ``REFRESH_S``)."""
        if time.monotonic() - self._refreshed >= REFRESH_S:
            await self._refresh()
        if not self._set_aside:
            return set()
        return {v for v in video_ids if self._set_aside.get(v) == model_sha256}

    async def _refresh(self) -> None:
        self._refreshed = time.monotonic()
        entries = await self.entries()
        now = time.time()
        self._set_aside = {e.video_id: e.model_sha256 for e in entries
                           if e.set_aside_until is not None and e.set_aside_until > now}

    async def entries(self, limit: int = LISTED) -> list[QuarantineEntry]:
        """The videos that failed recently, newest failure first (expired entries pruned)."""
        ids = [v.decode() if isinstance(v, bytes) else v for v in
               await self.metrics.timed_redis("quarantine", self.redis.zrevrange(self._index, 0, limit - 1))]
        if not ids:
            return []
        raws = await self.metrics.timed_redis("quarantine", redis_client.mget(self.redis, [self._key(v) for v in ids]))
        gone = [v for v, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self.metrics.timed_redis("quarantine", self.redis.zrem(self._index, *gone))
        return [QuarantineEntry.from_json(raw) for raw in raws if raw is not None]

    async def entry(self, video_id: str) -> QuarantineEntry | None:
        raw = await self.metrics.timed_redis("quarantine", self.redis.get(self._key(video_id)))
        return QuarantineEntry.from_json(raw) if raw else None
