"""The deployment's topics have one home (``stream_detector.topics``): the worker, the dev
tool and docker-compose create the same set, the events topic with the retention the
windows' rebuild needs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_detector.config import Settings
from stream_detector.topics import EVENTS_RETENTION_MS, deployment_topics
from tests.harness import Deployment, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


async def _configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        out = {}
        for t in topics:
            (res,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)])
            out[t] = {e[0]: e[1] for r in res.resources for e in r[4]}
        return out
    finally:
        await admin.close()


def test_the_worker_creates_every_topic_with_its_retention(kafka_bootstrap, redis_url, tmp_path):
    dep = Deployment(kafka_bootstrap, redis_url)  # topics not created: the worker does it
    worker = WorkerProcess(dep, tmp_path)
    try:
        worker.wait_ready()
        configs = asyncio.run(_configs(kafka_bootstrap, [dep.events, dep.flags, dep.account_flags, dep.models]))
    finally:
        assert worker.terminate() == 0
    assert configs[dep.events].get("retention.ms") == str(EVENTS_RETENTION_MS), "8 days: the rebuild's source"
    assert int(configs[dep.flags]["retention.ms"]) > EVENTS_RETENTION_MS
    assert int(configs[dep.account_flags]["retention.ms"]) > EVENTS_RETENTION_MS
    assert configs[dep.models].get("cleanup.policy") == "compact"


def test_docker_compose_creates_the_same_topics():
    specs = {t.name: t for t in deployment_topics(Settings(), events_partitions=8, output_partitions=4)}
    text = (ROOT / "docker-compose.yml").read_text()
    created = {m[0]: (int(m[1]), m[2]) for m in re.findall(r"^\s*create (\S+)\s+(\d+) (\S+)$", text, re.M)}
    assert set(created) == set(specs)
    for name, (partitions, config) in created.items():
        key, value = config.split("=", 1)
        assert (partitions, {key: value}) == (specs[name].partitions, specs[name].configs), name
