"""The hot-path consumer's Kafka client: aiokafka (what the worker uses) vs confluent-kafka.

Same embedded broker, same topic, same run: each client reads the whole topic from offset 0
and ``json.loads`` every value (the least a consumer of this topic does), in turns, twice.
Reported: events/s and CPU ms per 1k events of this process (librdkafka's threads included).
The decision this informs is written in the README's performance section: the client's share
of the worker's CPU bounds what a switch can gain.

    .venv/bin/python bench/kafka_clients.py [--events 2000000] [--json]

confluent-kafka is not a dependency of the product; ``make bench`` installs it into the
virtualenv for this benchmark only (``pip install confluent-kafka``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import throughput as tb  # noqa: E402  (the workload and its producer)

from stream_detector.dev.embedded import EmbeddedStack  # noqa: E402
from stream_detector.topics import ensure_topics  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def aiokafka_run(bootstrap: str, topic: str, partitions: int, expect: int) -> dict:
    c0 = cpu_s()
    r = asyncio.run(tb.measure_ceiling(bootstrap, topic, partitions, expect, 300))
    return {"events_per_s": r["events_per_s"], "cpu_ms_per_1k": 1e6 * (cpu_s() - c0) / expect}


def confluent_run(bootstrap: str, topic: str, partitions: int, expect: int) -> dict:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"kc-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # librdkafka's default (100,000) caps consumption near 118k events/s here (issue's figures)
        "queued.min.messages": 1_000_000, "fetch.max.bytes": 16 * 1024 * 1024,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
    })
    c0 = cpu_s()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        loads = json.loads
        meter = tb.RateMeter()
        deadline = time.monotonic() + 300
        while meter.n < expect and time.monotonic() < deadline:
            got = 0
            for m in consumer.consume(num_messages=5000, timeout=0.2):
                if m.error() is None:
                    loads(m.value())
                    got += 1
            meter.add(got)
        if meter.n < expect:
            raise RuntimeError(f"confluent-kafka read {meter.n}/{expect} events in 300 s")
        return {"events_per_s": meter.events_per_s, "cpu_ms_per_1k": 1e6 * (cpu_s() - c0) / expect}
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--videos", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.events <= 0 or a.rounds <= 0:
        p.error("--events and --rounds must be positive")
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("confluent-kafka is not installed: pip install confluent-kafka (bench only)", file=sys.stderr)
        return 2
    stack = EmbeddedStack()
    topic = f"kc{uuid.uuid4().hex[:8]}-events"
    try:
        stack.start()
        asyncio.run(ensure_topics(stack.bootstrap_servers, {topic: a.partitions}))
        wl = tb.Workload(a.videos, a.partitions, 1, 0.1, 0.25, 0.15)
        t0 = time.time() - 7200
        wl.setup(t0)
        values, vids, _ = wl.generate(a.events, t0, 3600 / a.events, np.zeros(0, dtype=np.int64), 1)
        tb.log(f"producing {a.events:,} events")
        asyncio.run(tb.produce_prefill(stack.bootstrap_servers, topic, wl, values, vids))
        runs: dict[str, list[dict]] = {"aiokafka": [], "confluent-kafka": []}
        for k in range(a.rounds):
            for name, fn in (("aiokafka", aiokafka_run), ("confluent-kafka", confluent_run)):
                r = fn(stack.bootstrap_servers, topic, a.partitions, a.events)
                runs[name].append(r)
                tb.log(f"round {k + 1} {name}: {r['events_per_s']:,.0f} ev/s, {r['cpu_ms_per_1k']:.2f} ms CPU per 1k")
    finally:
        stack.stop()
    best = {name: max(rs, key=lambda r: r["events_per_s"]) for name, rs in runs.items()}
    base = best["aiokafka"]
    print(f"\n{a.events:,} events, {a.partitions} partitions, embedded Tansu; best of {a.rounds} rounds each\n")
    print("| client (+ json.loads) | events/s | vs aiokafka | CPU ms per 1k events |")
    print("|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r['events_per_s']:,.0f} | {r['events_per_s'] / base['events_per_s']:.2f} | "
              f"{r['cpu_ms_per_1k']:.2f} |")
    if a.json:
        print(json.dumps({name: {k: round(v, 3) for k, v in r.items()} for name, r in best.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
