"""One way to reach Redis: standalone or Redis Cluster, chosen by the URL.

``redis://`` / ``rediss://`` is a standalone server (or a proxy); ``redis+cluster://host:port``
(any node of the cluster) is a Redis Cluster. Every key the worker writes is hash-tagged
(``keys.py``), so per-video and per-partition operations stay in one slot; reads and writes
that span videos go through :func:`mget` / :func:`mset`, which split by slot on a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

CLUSTER_SCHEME = "redis+cluster://"


def connect(url: str, *, socket_timeout: float = 5.0) -> aioredis.Redis | RedisCluster:
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME):], socket_timeout=socket_timeout,
                                     socket_connect_timeout=socket_timeout)
    return aioredis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


async def mget(client, keys: Sequence[str]) -> list:
    if not keys:
        return []
    if is_cluster(client):
        return await client.mget_nonatomic(list(keys))
    return await client.mget(list(keys))


async def mset(client, mapping: Mapping[str, str]) -> None:
    if not mapping:
        return
    if is_cluster(client):
        await client.mset_nonatomic(dict(mapping))
    else:
        await client.mset(dict(mapping))
