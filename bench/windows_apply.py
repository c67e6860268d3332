import asyncio
import random
import sys
import time

import redis.asyncio as aredis

from stream_detector.dev.embedded import EmbeddedStack
from stream_detector.events import Event
from stream_detector.windows import WindowStore

NV, B, NB = (
    5000,
    5000,
    int(sys.argv[1]) if len(sys.argv) > 1 else 40,
)  # usage: bench_windows_apply.py [batches] [seconds between events]


async def stat(r):
    i = await r.info("commandstats")
    return i.get("cmdstat_evalsha", {"usec": 0, "calls": 0})


async def main(url):
    r = aredis.from_url(url)
    await r.flushdb()
    ws = WindowStore(r, ttl_seconds=8 * 86400)
    rng = random.Random(1)
    t0 = 1_764_000_000.0
    step = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    batches = []
    off = 0
    for b in range(NB):
        evs = []
        for i in range(B):
            c = [0, 0, 0, 0]
            c[rng.randrange(4)] = 1
            if i % 10 == 0:
                c = [rng.randrange(50), rng.randrange(10), rng.randrange(3), rng.randrange(2)]
            evs.append(Event(f"video-{rng.randrange(NV):05d}", t0 + (b * B + i) * step, tuple(c)))
        batches.append((evs, list(range(off, off + B))))
        off += B
    await ws.apply(*batches[0])
    for phase in ("apply", "replay"):
        s0 = await stat(r)
        t = time.perf_counter()
        c0 = time.process_time()
        for evs, offs in batches[1:]:
            await ws.apply(evs, offs)
        dt = time.perf_counter() - t
        cpu = time.process_time() - c0
        s1 = await stat(r)
        nb = NB - 1
        print(
            f"{phase}: {nb * B / dt:,.0f} ev/s, client {dt / nb * 1e3:.1f} ms/batch, server evalsha {(s1['usec'] - s0['usec']) / nb / 1e3:.1f} ms/batch, python cpu {cpu / nb * 1e3:.1f} ms/batch"
        )
    await r.aclose()


with EmbeddedStack(kafka=False) as st:
    asyncio.run(main(st.redis_url))
