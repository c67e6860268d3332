from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer

from stream_detector.config import Settings
from stream_detector.dev import embedded
from stream_detector.dev.embedded import (
    EmbeddedError,
    EmbeddedStack,
    resolve_endpoints,
)
from stream_detector.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


@pytest.mark.asyncio
async def test_topics_created_with_partition_counts(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {f"events-{suffix}": 4, f"flags-{suffix}": 2, f"dlq-{suffix}": 1}
    await ensure_topics(kafka_bootstrap, topics, timeout_s=30)
    await ensure_topics(kafka_bootstrap, topics, timeout_s=30)  # idempotent
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        all_topics = await consumer.topics()
        for name, n in topics.items():
            assert name in all_topics
            assert consumer.partitions_for_topic(name) == set(range(n))
    finally:
        await consumer.stop()


def test_start_stop_leaves_no_child(tmp_path: Path) -> None:
    stack = EmbeddedStack(log_dir=str(tmp_path)).start()
    try:
        pids = stack.pids
        assert len(pids) == 2
        assert stack.bootstrap_servers.startswith("127.0.0.1:")
        assert stack.redis_url.startswith("redis://127.0.0.1:")
        assert set(stack.ready_seconds) == {"kafka", "redis"}
        for pid in pids:  # each child leads its own process group
            assert os.getpgid(pid) == pid
        client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
        assert client.ping()
        client.close()
    finally:
        stack.stop()
    assert _wait_dead(pids, timeout=1.0) == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert (tmp_path / "kafka.log").exists() and (tmp_path / "redis.log").exists()
    stack.stop()  # idempotent


def test_context_manager_stops_on_error() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), EmbeddedStack(kafka=False) as stack:
        pids = stack.pids
        raise RuntimeError("boom")
    assert pids and _wait_dead(pids, timeout=1.0) == []


def test_failed_start_reports_log_tail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot start, disk on fire' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "redis_server_bin", lambda: str(fake))
    with pytest.raises(EmbeddedError) as info:
        EmbeddedStack(kafka=False, log_dir=str(tmp_path)).start()
    message = str(info.value)
    assert "disk on fire" in message and "exited" in message


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL of the parent (no atexit, no __exit__) still ends the children."""
    script = textwrap.dedent(
        """
        import sys, time
        from stream_detector.dev.embedded import EmbeddedStack
        stack = EmbeddedStack(kafka=False, log_dir=sys.argv[1]).start()
        print(" ".join(map(str, stack.pids)), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert pids and all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert _wait_dead(pids, timeout=10.0) == []


def test_resolve_endpoints() -> None:
    configured = Settings(kafka_bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:2")
    stack, settings = resolve_endpoints(configured)
    assert stack is None and settings == configured

    stack, settings = resolve_endpoints(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
    assert stack is not None
    try:
        assert settings.kafka_bootstrap_servers == "127.0.0.1:1"
        assert settings.redis_url == stack.redis_url
        assert stack.bootstrap_servers == ""  # no broker started
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        assert client.ping()
        client.close()
    finally:
        stack.stop()
