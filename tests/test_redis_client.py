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


def test_hiredis_packing_sends_the_bytes_redis_py_would():
    from redis.asyncio.connection import Connection

    plain, packed = Connection(), rc.connect("redis://127.0.0.1:1").connection_pool.make_connection()
    assert isinstance(packed, rc.HiredisPacking)
    commands = [
        ("EVALSHA", "a" * 40, 2, "sd:w:{v1}", "sd:w:{ü}", 168, -1, 2**40, 1.5, 1e20, b"\x00\xff" * 10),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", b"x"),
        ("ZADD", "k", "GT", 1.25, "m1", 3, "m2"),
        ("SET", "k", memoryview(b"a view")),  # hiredis does not take it: redis-py packs it
    ]
    for cmd in commands:
        assert b"".join(packed.pack_command(*cmd)) == b"".join(plain.pack_command(*cmd)), cmd
    pipeline = [commands[0], commands[3]]
    assert b"".join(packed.pack_commands(pipeline)) == b"".join(plain.pack_commands(pipeline))
    for bad in (("SET", "k", True), ("SET", "k", None)):
        with pytest.raises(Exception) as theirs:
            plain.pack_command(*bad)
        with pytest.raises(type(theirs.value)):
            packed.pack_command(*bad)


@pytest.mark.asyncio
async def test_a_connected_client_talks_to_a_real_server(redis_url):
    client = rc.connect(redis_url)
    try:
        prefix = uuid.uuid4().hex
        pipe = client.pipeline(transaction=False)
        pipe.zadd(f"{prefix}:z", {"a": 1.5, "b": 2})
        pipe.set(f"{prefix}:s", b"\x00bytes\xff", ex=60)
        pipe.zrangebyscore(f"{prefix}:z", 1, 3, withscores=True)
        got = await pipe.execute()
        assert got == [2, True, [(b"a", 1.5), (b"b", 2.0)]]
        assert await client.get(f"{prefix}:s") == b"\x00bytes\xff"
        assert await client.eval("return {KEYS[1], ARGV[1]}", 1, f"{prefix}:k", 7) == [f"{prefix}:k".encode(), b"7"]
        await client.delete(f"{prefix}:z", f"{prefix}:s")
    finally:
        await client.aclose()
