"""redis_client helpers on a real standalone server (the cluster side: test_redis_cluster.py)."""

from __future__ import annotations

import uuid

import pytest

from stream_detector import redis_client as rc


@pytest.mark.asyncio
async def test_set_ex_sets_every_key_with_its_expiry_across_script_chunks(redis_client, monkeypatch):
    monkeypatch.setattr(rc, "SET_EX_CHUNK", 7)  # 30 keys: five script calls, the last one short
    prefix = uuid.uuid4().hex
    mapping = {f"{prefix}:{{v{i}}}": f"doc {i};".encode() * (i % 3 + 1) for i in range(30)}
    await rc.set_ex(redis_client, {}, 60)  # nothing to write: no call
    await rc.set_ex(redis_client, mapping, 120)
    keys = list(mapping)
    assert await redis_client.mget(keys) == list(mapping.values())
    ttls = [await redis_client.ttl(k) for k in keys]
    assert all(100 < t <= 120 for t in ttls)
    await rc.set_ex(redis_client, {keys[0]: b"again"}, 30)  # overwritten, with the new expiry
    assert await redis_client.get(keys[0]) == b"again" and await redis_client.ttl(keys[0]) <= 30
    await redis_client.script_flush()  # the script is loaded again when the server lost it
    await rc.set_ex(redis_client, {keys[1]: b"after a flush"}, 60)
    assert await redis_client.get(keys[1]) == b"after a flush"
