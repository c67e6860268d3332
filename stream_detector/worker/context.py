"""What the worker's parts share: settings, metrics, the dependency guard, the clients."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_detector import keys
from stream_detector.config import Settings
from stream_detector.dependencies import DependencyGuard
from stream_detector.events import dead_letter_headers
from stream_detector.metrics import Metrics
from stream_detector.schedule import RescoreSchedule
from stream_detector.windows import WindowStore

if TYPE_CHECKING:
    from stream_detector.worker.accounts import AccountLoop

MAX_DLQ_KEY_BYTES = 1024  # a dead-letter copy's key beyond this is cut (its partition does not matter)


@dataclass
class WorkerContext:
    settings: Settings
    metrics: Metrics
    guard: DependencyGuard
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    redis: aioredis.Redis | None = None
    producer: AIOKafkaProducer | None = None
    consumer: AIOKafkaConsumer | None = None
    windows: WindowStore | None = None
    schedule: RescoreSchedule | None = None
    accounts: AccountLoop | None = None  # the user level (worker/accounts.py)

    # key names (keys.py) for this deployment
    def flag_key(self, video_id: str) -> str:
        return keys.flag_state(self.settings.key_prefix, video_id)

    def shadow_flag_key(self, video_id: str, sha256: str) -> str:
        return keys.shadow_flag_state(self.settings.key_prefix, video_id, sha256)

    def channel_key(self, video_id: str) -> str:
        return keys.video_channel(self.settings.key_prefix, video_id)

    def score_key(self, video_id: str) -> str:
        return keys.score(self.settings.key_prefix, video_id)

    def watermark_key(self, partition: int) -> str:
        return keys.watermark(self.settings.key_prefix, self.settings.events_topic, partition)

    def active_key(self, partition: int) -> str:
        return keys.active_hours(self.settings.key_prefix, self.settings.events_topic, partition)

    async def send_dead_letters(self, dead: Sequence[tuple]) -> None:
        """Rejected records ``(record, topic-partition, Rejection)`` to the dead-letter topic,
        delivered: their original bytes (truncated, with headers saying so, when the copy
        would exceed the producer's request limit) and ``dead_letter_headers``. Bad events and
        bad verdicts go the same way; each caller counts its own."""
        assert self.producer is not None
        limit = self.settings.dlq_max_value_bytes
        futures = []
        for rec, tp, rejection in dead:
            value, key = rec.value, rec.key
            headers = dead_letter_headers(rejection, tp.topic, tp.partition, rec.offset)
            if value is not None and len(value) > limit:
                headers += [("dlq.truncated", b"true"), ("dlq.original_size", str(len(value)).encode())]
                value = value[:limit]
            if key is not None and len(key) > MAX_DLQ_KEY_BYTES:
                headers += [("dlq.key_truncated", b"true"), ("dlq.original_key_size", str(len(key)).encode())]
                key = key[:MAX_DLQ_KEY_BYTES]
            futures.append(await self.producer.send(self.settings.dlq_topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)

    def owned(self) -> set:
        return set(self.consumer.assignment()) if self.consumer is not None else set()
