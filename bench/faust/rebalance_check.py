"""Check the prototype's rebalance/stop path: two workers in group `rb`, then one stops.

    python bench/faust/rebalance_check.py [--kill]
Worker A starts, worker B joins (partitions split), B is stopped with SIGTERM (or
SIGKILL with --kill) mid-stream, A finishes the topic.  Each worker logs every
processed (partition, offset); the check reports lost and duplicated events.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
N = 40_000


def worker(bootstrap: str, port: int, log_path: str) -> None:
    from batch_consumer_in_faust import create_app, run_worker

    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the worker's lifetime

    async def slow_handler(batch):
        lines = []
        for tp, recs in batch.items():
            lines.extend(f"{tp.partition} {r.offset}\n" for r in recs)
        await asyncio.sleep(0.05)  # ~20 batches/s of <= 500 records: the run takes a while
        out.write("".join(lines))

    app, _ = create_app(
        bootstrap=bootstrap,
        topic="rb",
        group="rb",
        web_port=port,
        handler=slow_handler,
        max_records=500,
        app_id=f"rb-host-{port}",
    )
    run_worker(app, "WARNING")


def count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return json.load(r)
    except Exception as exc:  # 503 while starting / not assigned
        return {"error": str(exc)}


def wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(what)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kill", action="store_true", help="SIGKILL worker B instead of SIGTERM")
    ap.add_argument("--worker", nargs=3)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), a.worker[2])
        return
    from common import create_topic, free_port, produce, tansu

    tmp = tempfile.mkdtemp()
    logs = {k: os.path.join(tmp, f"{k}.log") for k in "AB"}
    ports = {k: free_port() for k in "AB"}
    procs = {}
    with tansu() as bs:
        asyncio.run(create_topic(bs, "rb", 4))
        asyncio.run(produce(bs, "rb", N))

        def spawn(k):
            procs[k] = subprocess.Popen(
                [sys.executable, __file__, "--worker", bs, str(ports[k]), logs[k]],
                stdout=subprocess.DEVNULL,
                stderr=open(logs[k] + ".err", "w"),  # noqa: SIM115
            )

        try:
            spawn("A")
            t = wait_for(lambda: health(ports["A"]).get("status") == "ok", 60, "A ready")
            print(f"A ready (all partitions) after {t:.1f}s: {health(ports['A'])['assigned']}")
            time.sleep(1)
            spawn("B")
            t = wait_for(lambda: health(ports["B"]).get("status") == "ok", 60, "B assigned")
            print(
                f"B got partitions after {t:.1f}s: A={health(ports['A']).get('assigned')} "
                f"B={health(ports['B']).get('assigned')}"
            )
            time.sleep(2)
            sig = signal.SIGKILL if a.kill else signal.SIGTERM
            t_sig = time.monotonic()
            procs["B"].send_signal(sig)
            procs["B"].wait(30)
            print(
                f"B stopped by {sig.name} in {time.monotonic() - t_sig:.1f}s, rc={procs['B'].returncode}"
            )
            t = wait_for(
                lambda: len(health(ports["A"]).get("assigned", [])) == 4, 60, "A regains all"
            )
            print(f"A owns all 4 partitions {time.monotonic() - t_sig:.1f}s after the signal")
            wait_for(lambda: sum(count_lines(logs[k]) for k in "AB") >= N, 120, "all consumed")
            time.sleep(1)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
    seen = collections.Counter()
    for k in "AB":
        with open(logs[k]) as f:
            for line in f:
                seen[line] += 1
    dups = sum(c - 1 for c in seen.values() if c > 1)
    print(
        f"processed {sum(seen.values())} records, distinct {len(seen)} of {N}, "
        f"lost {N - len(seen)}, duplicates {dups}"
    )


if __name__ == "__main__":
    main()
