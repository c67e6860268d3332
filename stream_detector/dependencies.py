"""Redis and the broker come and go: bounded retries with backoff, health the probes can trust.

A Redis restart, a failover or a network blip must not stop a worker: the call that hit it
is retried with exponential backoff (consumption pauses meanwhile, because the consume loop
is waiting on it: backpressure, nothing is fetched or committed past what is written), the
dependency is reported down (``/readyz`` 503, ``detector_dependency_up`` 0, an outage
counted) and up again on the first success. Only an outage longer than
``DETECTOR_DEPENDENCY_TIMEOUT_SECONDS`` ends the worker, with a non-zero exit code, for the
orchestrator to restart it elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream_detector.metrics import Metrics

log = logging.getLogger("stream_detector.dependencies")
T = TypeVar("T")

DEPENDENCIES = ("redis", "broker")
TRANSIENT: dict[str, tuple[type[BaseException], ...]] = {
    "redis": (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, TimeoutError, OSError),
    "broker": (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError, TimeoutError),
}


class Backoff:
    """Exponential backoff between retries, reset by a success: the one retry policy of the
    worker's loops (dependency calls, scoring lanes, the model registry follower)."""

    def __init__(self, first_s: float = 0.2, max_s: float = 5.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.delay = first_s
        self.failures = 0  # consecutive, since the last success

    async def sleep(self) -> None:
        self.failures += 1
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_s)

    def reset(self) -> None:
        self.delay, self.failures = self.first_s, 0


class DependencyLost(RuntimeError):
    """A dependency stayed unreachable longer than the configured limit."""


class DependencyGuard:
    """Up/down state of each dependency, and the retry policy for calls to them."""

    def __init__(self, metrics: Metrics, *, limit_s: float, first_backoff_s: float = 0.2,
                 max_backoff_s: float = 5.0) -> None:
        self.metrics = metrics
        self.limit_s = limit_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.down_since: dict[str, float] = {}
        for dep in DEPENDENCIES:
            metrics.dependency_up.labels(dependency=dep).set(1)

    def up(self, dep: str) -> bool:
        return dep not in self.down_since

    def mark_down(self, dep: str, why: str) -> None:
        if dep in self.down_since:
            return
        self.down_since[dep] = time.monotonic()
        self.metrics.dependency_up.labels(dependency=dep).set(0)
        self.metrics.dependency_outages.labels(dependency=dep).inc()
        log.warning("%s unreachable (%s); retrying with backoff, consumption paused", dep, why)

    def mark_up(self, dep: str) -> None:
        since = self.down_since.pop(dep, None)
        if since is None:
            return
        self.metrics.dependency_up.labels(dependency=dep).set(1)
        log.warning("%s is back after %.1f s", dep, time.monotonic() - since)

    def check_limit(self, dep: str) -> None:
        since = self.down_since.get(dep)
        if since is not None and time.monotonic() - since > self.limit_s:
            raise DependencyLost(f"{dep} unreachable for more than {self.limit_s:g} s "
                                 f"(DETECTOR_DEPENDENCY_TIMEOUT_SECONDS)")

    async def call(self, dep: str, what: str, factory: Callable[[], Awaitable[T]],
                   stopping: asyncio.Event | None = None) -> T:
        """``await factory()``, retried while ``dep`` fails transiently (see the module doc).
        Its success marks ``dep`` up: a factory must touch ``dep`` (one that returns without
        calling it would hide an outage from the limit)."""
        backoff = Backoff(self.first_backoff_s, self.max_backoff_s)
        while True:
            try:
                result = await factory()
            except TRANSIENT[dep] as exc:
                self.mark_down(dep, f"{what}: {type(exc).__name__}: {str(exc)[:120]}")
                self.check_limit(dep)
                if stopping is not None and stopping.is_set():
                    raise
                await backoff.sleep()
                continue
            self.mark_up(dep)
            return result
