"""Test harness: real worker processes against the session's real broker and Redis.

Each test gets its own topics, consumer group and Redis key prefix, so tests sharing one
broker and Redis never see each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_detector.dev.embedded import free_port  # noqa: F401 - tests take it from here
from stream_detector.dev.replay import produce
from stream_detector.metrics import read_samples
from stream_detector.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
IDLE_CLOSE_S = 1.0  # a replay that stopped gets its last hours closed (and judged) after this


@dataclass
class Deployment:
    """Names of one isolated deployment on the shared broker/Redis."""

    bootstrap: str
    redis_url: str
    run_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    partitions: int = 4
    extra_env: dict = field(default_factory=dict)

    @property
    def events(self) -> str:
        return f"{self.run_id}-events"

    @property
    def flags(self) -> str:
        return f"{self.run_id}-flags"

    @property
    def dlq(self) -> str:
        return f"{self.run_id}-dlq"

    @property
    def models(self) -> str:
        """The model registry's control topic (created by the worker or the CLI)."""
        return f"{self.run_id}-models"

    @property
    def shadow_flags(self) -> str:
        return f"{self.run_id}-flags-shadow"

    @property
    def account_flags(self) -> str:
        return f"{self.run_id}-account-flags"

    @property
    def verdicts(self) -> str:
        return f"{self.run_id}-verdicts"

    @property
    def review(self) -> str:
        return f"{self.run_id}-flags-review"

    def env(self, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            REDIS_URL=self.redis_url,
            DETECTOR_EVENTS_TOPIC=self.events,
            DETECTOR_FLAGS_TOPIC=self.flags,
            DETECTOR_DLQ_TOPIC=self.dlq,
            DETECTOR_CONTROL_TOPIC=self.models,
            DETECTOR_SHADOW_FLAGS_TOPIC=self.shadow_flags,
            DETECTOR_ACCOUNT_FLAGS_TOPIC=self.account_flags,
            DETECTOR_VERDICTS_TOPIC=self.verdicts,
            DETECTOR_REVIEW_TOPIC=self.review,
            DETECTOR_CONSUMER_GROUP=f"{self.run_id}-group",
            DETECTOR_KEY_PREFIX=self.run_id,
            DETECTOR_WEB_PORT=str(port),
            DETECTOR_SCORE_INTERVAL_SECONDS="0.3",
            DETECTOR_IDLE_CLOSE_SECONDS=str(IDLE_CLOSE_S),
            DETECTOR_TOPIC_PARTITIONS=str(self.partitions),
        )
        env.update(self.extra_env)
        return env

    def create_topics(self) -> None:
        asyncio.run(ensure_topics(self.bootstrap, {self.events: self.partitions, self.flags: self.partitions,
                                                   self.dlq: self.partitions, self.shadow_flags: self.partitions,
                                                   self.account_flags: self.partitions,
                                                   self.review: self.partitions, self.verdicts: 1}))

    def produce(self, items, rate: float = 0.0) -> int:
        return asyncio.run(produce(self.bootstrap, self.events, items, rate=rate))

    def read_topic(self, topic: str, *, expect: int | None = None, idle_s: float = 2.0, timeout_s: float = 60.0):
        return asyncio.run(read_topic(self.bootstrap, topic, expect=expect, idle_s=idle_s, timeout_s=timeout_s))


class WorkerProcess:
    """`stream-detector worker` as a child process, with its HTTP views."""

    def __init__(self, deployment: Deployment, log_dir: Path) -> None:
        self.deployment = deployment
        self.port = free_port()
        self.log_path = log_dir / f"worker-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "worker"],
            env=deployment.env(self.port),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> tuple[int, dict]:
        status, body = self.get(path)
        return status, json.loads(body)

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout_s}s:\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """Metric samples: 'name{labels}' -> value, plus 'name' -> sum over labels."""
        return read_samples(self.get("/metrics")[1].decode())

    def wait_drained(self, timeout_s: float = 120.0) -> None:
        """Until the group committed every record of the events topic and no video is still
        due for scoring (the durable re-score schedule is empty): all of it is reflected."""
        t0 = time.monotonic()
        idle_waited = False
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            if asyncio.run(committed_all(self.deployment)):
                if not idle_waited:  # the stream stopped: its last event hours close after the idle time
                    time.sleep(IDLE_CLOSE_S + 1.0)
                    idle_waited = True
                    continue
                if asyncio.run(nothing_due(self.deployment)):
                    return
            time.sleep(0.3)
        raise AssertionError(f"worker did not drain in {timeout_s}s: {self.metrics()}\n{self.log_tail()}")

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


async def committed_all(dep: Deployment) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=dep.bootstrap, group_id=f"{dep.run_id}-group", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(dep.events, p) for p in range(dep.partitions)]
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if ends[tp] == 0:
                continue
            done = await consumer.committed(tp)
            if done is None or done < ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


async def nothing_due(dep: Deployment) -> bool:
    import redis.asyncio as aioredis

    from stream_detector.schedule import RescoreSchedule

    r = aioredis.from_url(dep.redis_url)
    try:
        schedule = RescoreSchedule(r, prefix=dep.run_id, topic=dep.events)
        return await schedule.size(list(range(dep.partitions))) == 0
    finally:
        await r.aclose()


async def read_topic(bootstrap: str, topic: str, *, expect: int | None, idle_s: float, timeout_s: float):
    """All records of a topic from the start: stop at `expect` records or after `idle_s` without news."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records = []
    try:
        t0 = last = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
                last = time.monotonic()
            if expect is not None and len(records) >= expect:
                break
            if expect is None and time.monotonic() - last > idle_s:
                break
    finally:
        await consumer.stop()
    return records
