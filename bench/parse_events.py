"""Parse + validate per event: the compiled parser against the Python one and bare json.loads.

    .venv/bin/python bench/parse_events.py        # ~20 s; a table, best of 5 rounds

The event mix is bench/throughput.py's: ~150 B, the contract's fields plus ``event_id`` and
``source``, mostly single-metric raw events, 15 % pre-aggregated, 10 % ISO timestamps, 25 %
with ``published_at``, 1,000 records per call as the consume loop parses them.
"""

from __future__ import annotations

import json
import random
import time

from stream_detector import events
from stream_detector.events import parse_event, parse_records

N = 100_000
SLICE = 1_000  # records per call (stream_detector.worker.detector.PREPARE_SLICE)
LIMITS = {"max_bytes": 4096, "max_count": 10_000_000, "max_future_s": 3600}


class Record:  # the fields of aiokafka's ConsumerRecord the parser reads
    __slots__ = ("offset", "key", "value", "timestamp")

    def __init__(self, offset: int, key: bytes, value: bytes, timestamp: int) -> None:
        self.offset, self.key, self.value, self.timestamp = offset, key, value, timestamp


def workload(now: float) -> list[Record]:
    rng = random.Random(1)
    records = []
    for i in range(N):
        vid = f"v-{int(rng.lognormvariate(0, 1.5) * 100) % 5000:05d}"
        t = now - rng.random() * 168 * 3600
        d: dict = {"video_id": vid, "event_id": f"e{i:09d}", "source": rng.choice(["app", "web"])}
        d["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if rng.random() < 0.1 else round(t, 3)
        if rng.random() < 0.15:
            d.update(views=rng.randrange(100), likes=rng.randrange(10), comments=rng.randrange(3))
        else:
            d[rng.choice(["views", "views", "likes", "comments", "shares"])] = 1
        if rng.random() < 0.25:
            d["published_at"] = round(now - 200 * 3600, 3)
        records.append(Record(i, vid.encode(), json.dumps(d).encode(), int(t * 1000)))
    return records


def best_us(fn, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / N * 1e6


def main() -> None:
    now = time.time()
    records = workload(now)
    slices = [records[k : k + SLICE] for k in range(0, N, SLICE)]
    values = [r.value for r in records]
    compiled = events._fastparse

    def python_records():
        saved, events._fastparse = events._fastparse, None
        try:
            for s in slices:
                parse_records(s, now=now, **LIMITS)
        finally:
            events._fastparse = saved

    rows = [
        ("json.loads alone (no checks)", best_us(lambda: [json.loads(v) for v in values])),
        ("parse_event per record (msgspec typed decode + checks)",
         best_us(lambda: [parse_event(v, now=now, **LIMITS) for v in values])),
        ("parse_records, Python parser", best_us(python_records)),
    ]
    if compiled is not None:
        rows.append(("parse_records, compiled parser", best_us(lambda: [parse_records(s, now=now, **LIMITS)
                                                                        for s in slices])))
        left = sum(len(parse_records(s, now=now, **LIMITS).rows) for s in slices)
        assert left == N  # every record of the mix is valid
    print(f"{N:,} events, avg {sum(map(len, values)) / N:.0f} B, {SLICE} per call; best of 5\n")
    print("| parser | µs per event |")
    print("|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")
    if compiled is None:
        print("\n(the compiled parser is not built: see setup.py)")


if __name__ == "__main__":
    main()
