"""What the worker's parts share: settings, metrics, the dependency guard, the clients."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_detector import keys
from stream_detector.config import Settings
from stream_detector.dependencies import DependencyGuard
from stream_detector.metrics import Metrics
from stream_detector.schedule import RescoreSchedule
from stream_detector.windows import WindowStore

if TYPE_CHECKING:
    from stream_detector.worker.accounts import AccountLoop


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

    def owned(self) -> set:
        return set(self.consumer.assignment()) if self.consumer is not None else set()
