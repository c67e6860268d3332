"""The deployment's topics: one home for their names, partitions and retention.

The worker creates what is missing at start, `python -m stream_detector.dev.topics` does the
same for brokers without Kafka's scripts, and docker-compose's kafka-init creates the same set
(a test reads the compose file against this list). An existing topic is never changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from stream_detector.config import Settings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
# the windows' rebuild source: 168 h of window plus lateness and margin (README: "State in Redis")
EVENTS_RETENTION_MS = 8 * DAY_MS
OUTPUT_RETENTION_MS = 14 * DAY_MS  # flags, dead letters: two weeks for consumers to catch up


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str]


def deployment_topics(settings: Settings, events_partitions: int | None = None,
                      output_partitions: int | None = None) -> list[TopicSpec]:
    """Every topic a deployment reads or writes, with the partitions and configs it needs."""
    events = events_partitions or settings.topic_partitions
    out = output_partitions or settings.topic_partitions
    keep = {"retention.ms": str(OUTPUT_RETENTION_MS)}
    return [
        TopicSpec(settings.events_topic, events, {"retention.ms": str(EVENTS_RETENTION_MS)}),
        TopicSpec(settings.flags_topic, out, keep),
        TopicSpec(settings.dlq_topic, out, keep),
        TopicSpec(settings.shadow_flags_topic, out, keep),
        TopicSpec(settings.account_flags_topic, out, keep),
        TopicSpec(settings.review_topic, out, keep),
        # one partition, kept forever: every worker reads all of it in order (later verdicts on
        # a subject win); human-rate and small; the labels the next model is judged with
        TopicSpec(settings.verdicts_topic, 1, {"retention.ms": "-1"}),
        # one partition: every worker folds the same ordered model log
        TopicSpec(settings.control_topic, 1, {"cleanup.policy": "compact"}),
    ]


async def ensure_deployment_topics(settings: Settings, timeout_s: float = 30) -> dict[str, int]:
    specs = deployment_topics(settings)
    return await ensure_topics(settings.kafka_bootstrap_servers, {t.name: t.partitions for t in specs}, timeout_s,
                               configs={t.name: t.configs for t in specs})


async def ensure_topics(
    bootstrap_servers: str, topics: dict[str, int], timeout_s: float = 30,
    configs: dict[str, dict[str, str]] | None = None,
) -> dict[str, int]:
    """Create the topics that are missing, with the given partition counts and topic
    ``configs`` (retention, compaction; idempotent).

    An existing topic is left as it is (a partition count other than requested is logged:
    changing it would move videos between partitions). Returns every topic's partition count
    once metadata shows each with at least one; raises ``TimeoutError`` after ``timeout_s``.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    deadline = time.monotonic() + timeout_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(min(timeout_s, 30) * 1000)
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, n, 1, topic_configs=(configs or {}).get(t)) for t, n in topics.items()
                   if t not in existing]
        if missing:
            resp = await admin.create_topics(missing)
            for item in getattr(resp, "topic_errors", []):
                name, code = item[0], item[1]
                if code not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS (a concurrent creator)
                    raise RuntimeError(f"creating topic {name!r} failed: error code {code} {item}")
        while True:
            described = await admin.describe_topics(list(topics))
            counts = {
                d["topic"]: len(d["partitions"]) for d in described if d.get("error_code") == 0
            }
            if all(counts.get(t, 0) > 0 for t in topics):
                for t, n in topics.items():
                    if counts[t] != n:
                        log.warning("topic %s has %d partitions, %d requested", t, counts[t], n)
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible in metadata after {timeout_s}s: {counts}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


