"""Ceiling: raw aiokafka getmany (+ optional json.loads) in consumer group 'raw'.
Usage: python raw_aiokafka.py [--no-decode] [--n 200000]"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiokafka import AIOKafkaConsumer  # noqa: E402
from common import create_topic, load_avg, produce, tansu  # noqa: E402


async def consume(bs: str, topic: str, n: int, decode: bool, group: str = "raw") -> dict:
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bs,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    t_start = time.monotonic()
    await c.start()
    got = 0
    t_first = t0 = None
    deadline = time.monotonic() + 120
    try:
        while got < n and time.monotonic() < deadline:
            batches = await c.getmany(timeout_ms=200, max_records=5000)
            for msgs in batches.values():
                if t0 is None:
                    t0 = time.monotonic()
                    t_first = t0 - t_start
                if decode:
                    for m in msgs:
                        json.loads(m.value)
                got += len(msgs)
        t1 = time.monotonic()
        await c.commit()
    finally:
        await c.stop()
    return {"events": got, "eps": got / (t1 - t0), "first_msg_s": t_first}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--no-decode", action="store_true")
    a = ap.parse_args()
    with tansu() as bs:
        await create_topic(bs, "events", 4)
        await produce(bs, "events", a.n)
        r = await consume(bs, "events", a.n, not a.no_decode)
        print(
            f"raw aiokafka decode={not a.no_decode}: {r['events']} events "
            f"{r['eps']:,.0f} ev/s, first message after {r['first_msg_s']:.2f}s, "
            f"load {load_avg()}"
        )


if __name__ == "__main__":
    asyncio.run(main())
