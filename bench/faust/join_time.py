"""First consumer-group join on Tansu vs session/rebalance timeouts (raw aiokafka).

    python bench/faust/join_time.py
Each case: fresh group, one member, time from consumer.start() to first assignment.
"""

from __future__ import annotations

import asyncio
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiokafka import AIOKafkaConsumer  # noqa: E402
from common import create_topic, tansu  # noqa: E402

CASES = [  # (session_timeout_ms, rebalance_timeout_ms, heartbeat_interval_ms)
    (60000, 60000, 3000),  # faust defaults (broker_session/rebalance_timeout=60 s)
    (60000, 2000, 3000),
    (10000, 60000, 3000),  # aiokafka default session 10 s
    (10000, 30000, 3000),  # aiokafka defaults
    (6000, 6000, 1000),
    (4000, 4000, 1000),
    (2000, 2000, 500),
]


async def one(bs: str, group: str, s: int, r: int, h: int) -> float:
    c = AIOKafkaConsumer(
        "events",
        bootstrap_servers=bs,
        group_id=group,
        session_timeout_ms=s,
        rebalance_timeout_ms=r,
        heartbeat_interval_ms=h,
        request_timeout_ms=max(40000, s + 5000),
    )
    t = time.monotonic()
    await c.start()
    try:
        while not c.assignment() and time.monotonic() - t < 90:
            await asyncio.sleep(0.01)
        return time.monotonic() - t
    finally:
        await c.stop()


async def main() -> None:
    with tansu() as bs:
        await create_topic(bs, "events", 4)
        print("| session_timeout | rebalance_timeout | heartbeat | first assignment |")
        print("|---|---|---|---|")
        for i, (s, r, h) in enumerate(CASES):
            dt = await one(bs, f"join-{i}", s, r, h)
            print(f"| {s / 1000:g} s | {r / 1000:g} s | {h / 1000:g} s | {dt:.2f} s |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
