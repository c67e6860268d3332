"""The pause a model swap causes: one worker draining a backlog, with and without pushes.

On the embedded stack (Tansu + redis-server), a topic is pre-filled with ``--events`` events
(the workload of ``bench/throughput.py``). Two runs consume the same backlog, one after the
other, each with a fresh worker process, consumer group and Redis prefix:

* ``steady``  no model change;
* ``swaps``   ``--pushes`` new model versions pushed to the control topic every
              ``--interval`` seconds while the worker drains (each one is validated by the
              worker, in a thread, and swapped in between two scoring batches).

The consumed count (``detector_consume_batch_size_sum``) is sampled every 50 ms. Reported:
events/s of both runs, the events "missing" in the 3 s after each push against the run's
rate outside the push windows (expressed as a pause in ms), the longest stretch without
consumption inside and outside push windows, and the worker's validation time. Then an
in-process check: how late a 1 ms asyncio ticker runs while a validation runs in a thread
(the event loop's stall; the detector shares the loop with that ticker in the worker).

    .venv/bin/python bench/model_swap.py                # 300k events, 4 pushes
    .venv/bin/python bench/model_swap.py --events 150000 --pushes 3 --json
    SD_ROOT=/work/main /work/main/.venv/bin/python /work/shared/bench_model_swap.py   # outside the repo

Needs the ``onnx`` package (train extra) to make the model versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

# In the repository this file is bench/model_swap.py; elsewhere point SD_ROOT at the repository.
ROOT = Path(os.environ.get("SD_ROOT") or Path(__file__).resolve().parent.parent)
for p in (str(ROOT), str(ROOT / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from throughput import WINDOW_HOURS, Worker, Workload, produce_prefill  # noqa: E402

from stream_detector.canary import validate_bytes  # noqa: E402
from stream_detector.config import DEFAULT_MODEL_PATH  # noqa: E402
from stream_detector.dev.embedded import EmbeddedStack  # noqa: E402
from stream_detector.registry import ModelRef, Registry  # noqa: E402
from stream_detector.topics import ensure_topics  # noqa: E402

POLL_S = 0.05
WINDOW_S = 3.0  # after each push: validation + swap + settle


def log(msg: str) -> None:
    print(f"[model-swap] {msg}", file=sys.stderr, flush=True)


def model_versions(n: int) -> list[tuple[bytes, ModelRef]]:
    """``n`` new versions of the shipped model (metadata version ``<v>+swapN``), checked."""
    import onnx

    out = []
    for i in range(n):
        m = onnx.load(str(DEFAULT_MODEL_PATH))
        for p in m.metadata_props:
            if p.key == "version":
                p.value = f"{p.value}+swap{i + 1}"
        data = m.SerializeToString()
        model, _ = validate_bytes(data, window_hours=WINDOW_HOURS)  # up front, not during the run
        out.append((data, ModelRef(model.version, model.sha256, model.name)))
    return out


def sample_run(worker: Worker, expect: float, pushes: list[tuple[bytes, ModelRef]], interval: float, registry: Registry | None,
               timeout_s: float) -> dict:
    """Poll /metrics until ``expect`` events are consumed; push models on schedule."""
    timeline: list[tuple[float, float]] = []
    push_at: list[float] = []
    deadline = time.monotonic() + timeout_s
    t_first = None
    while time.monotonic() < deadline:
        worker.alive()
        m = worker.try_metrics()
        t = time.monotonic()
        if m is not None:
            consumed = m.get("detector_consume_batch_size_sum", 0.0)
            timeline.append((t, consumed))
            if t_first is None and consumed > 0:
                t_first = t
            if consumed >= expect:
                break
            if registry is not None and t_first is not None and len(push_at) < len(pushes) \
                    and t - t_first >= 2.0 + len(push_at) * interval:
                data, ref = pushes[len(push_at)]
                push_at.append(time.monotonic())
                asyncio.run(registry.publish(data, ref))
        time.sleep(POLL_S)
    else:
        raise RuntimeError(f"worker did not consume {expect:.0f} events in {timeout_s:.0f}s:\n{worker.log_tail()}")
    end = worker.metrics()
    return {"timeline": timeline, "push_at": push_at, "metrics": end}


def analyse(run: dict) -> dict:
    tl = [(t, c) for t, c in run["timeline"] if c > 0]
    t0, c0 = tl[0]
    t1, c1 = tl[-1]
    rate = (c1 - c0) / max(t1 - t0, 1e-9)
    pushes = run["push_at"]

    def in_push(t: float) -> bool:
        return any(p <= t < p + WINDOW_S for p in pushes)

    # rate outside push windows (first and last second excluded: start-up and tail)
    seg = [(a, b) for a, b in zip(tl, tl[1:], strict=False) if not in_push(a[0]) and a[0] > t0 + 1 and b[0] < t1 - 1]
    base_rate = sum(b[1] - a[1] for a, b in seg) / max(sum(b[0] - a[0] for a, b in seg), 1e-9) if seg else rate
    per_push = []
    for p in pushes:
        pts = [(t, c) for t, c in tl if p <= t <= p + WINDOW_S]
        if len(pts) < 2 or pts[-1][0] >= t1 - 0.5:
            continue  # the window reached the end of the backlog
        got = pts[-1][1] - pts[0][1]
        dt = pts[-1][0] - pts[0][0]
        per_push.append(1000.0 * max(0.0, base_rate * dt - got) / base_rate)

    def longest_gap(pred) -> float:
        best = 0.0
        start = None
        for (ta, ca), (tb, cb) in zip(tl, tl[1:], strict=False):
            if cb == ca and pred(ta):
                start = ta if start is None else start
                best = max(best, tb - start)
            else:
                start = None
        return best

    inner = lambda t: t0 + 1 < t < t1 - 1  # noqa: E731
    return {
        "events_per_s": rate,
        "events_per_s_outside_pushes": base_rate,
        "seconds": t1 - t0,
        "pause_ms_per_push": per_push,
        "longest_stall_in_push_windows_ms": 1000 * longest_gap(lambda t: inner(t) and in_push(t)),
        "longest_stall_elsewhere_ms": 1000 * longest_gap(lambda t: inner(t) and not in_push(t)),
    }


async def loop_stall(data: bytes, reps: int) -> dict:
    """Lateness of a 1 ms asyncio ticker: idle, and while validate_bytes runs in a thread."""

    async def ticker(stop: asyncio.Event, late: list[float]) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)

    async def measure(work) -> list[float]:
        stop, late = asyncio.Event(), []
        task = asyncio.create_task(ticker(stop, late))
        await work()
        stop.set()
        await task
        return late

    idle = await measure(lambda: asyncio.sleep(1.0))
    busy, seconds = [], []
    for _ in range(reps):
        async def work():
            t = time.perf_counter()
            await asyncio.to_thread(validate_bytes, data, window_hours=WINDOW_HOURS)
            seconds.append(time.perf_counter() - t)
        busy += await measure(work)
    q = lambda xs, p: 1000 * float(np.quantile(xs, p))  # noqa: E731
    return {
        "validation_s_median": statistics.median(seconds),
        "tick_late_ms_idle_p99": q(idle, 0.99), "tick_late_ms_idle_max": 1000 * max(idle),
        "tick_late_ms_validating_p99": q(busy, 0.99), "tick_late_ms_validating_max": 1000 * max(busy),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--videos", type=int, default=5000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--pushes", type=int, default=4)
    ap.add_argument("--interval", type=float, default=4.0, help="seconds between pushes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="steady/swaps pairs (alternating: the machine is noisy)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    versions = model_versions(a.pushes * a.rounds)
    now = time.time()
    sec_per_event = WINDOW_HOURS * 3600 / a.events
    t_origin = now - 3600 - WINDOW_HOURS * 3600
    wl = Workload(a.videos, a.partitions, a.seed, 0.2, 0.25, 0.2)
    wl.setup(t_origin)
    log(f"generating {a.events:,} events over {a.videos:,} videos")
    values, vids, _ = wl.generate(a.events, t_origin, sec_per_event, exclude=np.zeros(0, dtype=np.int64), stream=1)
    log_dir = Path(tempfile.mkdtemp(prefix="sd-swap-"))
    run = f"swap{uuid.uuid4().hex[:8]}"
    result: dict = {"events": a.events, "videos": a.videos, "pushes": a.pushes, "interval_s": a.interval}
    with EmbeddedStack(log_dir=str(log_dir)) as stack:
        topic = f"{run}-events"
        asyncio.run(ensure_topics(stack.bootstrap_servers, {topic: a.partitions}))
        asyncio.run(produce_prefill(stack.bootstrap_servers, topic, wl, values, vids))
        del values
        for k, mode in enumerate(["steady", "swaps"] * a.rounds):
            tag = f"{mode}{k}"
            names = {"events": topic, "flags": f"{run}-{tag}-flags", "dlq": f"{run}-{tag}-dlq",
                     "group": f"{run}-{tag}", "prefix": f"{run}-{tag}"}
            control = f"{run}-{tag}-models"
            (log_dir / tag).mkdir()
            worker = Worker(stack.bootstrap_servers, stack.redis_url, names, a.partitions, log_dir / tag,
                            {"DETECTOR_CONTROL_TOPIC": control, "DETECTOR_SHADOW_FLAGS_TOPIC": f"{run}-{tag}-shadow"})
            try:
                reg = Registry(stack.bootstrap_servers, control, who="bench@model-swap") if mode == "swaps" else None
                mine = versions[(k // 2) * a.pushes : (k // 2 + 1) * a.pushes]
                raw = sample_run(worker, a.events, mine, a.interval, reg, timeout_s=max(180.0, a.events / 1000))
                res = analyse(raw)
                m = raw["metrics"]
                res["pushes_done"] = len(raw["push_at"])
                res["models_loaded"] = m.get('detector_model_reloads_total{result="loaded"}', 0.0)
                n_val = m.get("detector_model_validation_seconds_count", 0.0)
                res["worker_validation_s_mean"] = m.get("detector_model_validation_seconds_sum", 0.0) / max(n_val, 1.0)
                result.setdefault(mode, []).append(res)
                log(f"{mode}: {res['events_per_s']:,.0f} events/s; pauses per push (ms): "
                    f"{[round(x) for x in res['pause_ms_per_push']]}")
            finally:
                worker.stop()
    shutil.rmtree(log_dir, ignore_errors=True)
    result["loop"] = asyncio.run(loop_stall(versions[0][0], reps=5))
    lp = result["loop"]
    steady, swaps = result["steady"], result["swaps"]
    pauses = [x for w in swaps for x in w["pause_ms_per_push"]]
    join = lambda runs, key, f: " / ".join(format(r[key], f) for r in runs)  # noqa: E731
    print("| per run (alternating) | steady | with swaps |\n|---|---|---|")
    print(f"| events/s (whole drain) | {join(steady, 'events_per_s', ',.0f')} | {join(swaps, 'events_per_s', ',.0f')} |")
    print(f"| events/s outside push windows | {join(steady, 'events_per_s_outside_pushes', ',.0f')} | "
          f"{join(swaps, 'events_per_s_outside_pushes', ',.0f')} |")
    print(f"| longest consumption stall, ms | {join(steady, 'longest_stall_elsewhere_ms', '.0f')} | "
          f"{join(swaps, 'longest_stall_in_push_windows_ms', '.0f')} in push windows, "
          f"{join(swaps, 'longest_stall_elsewhere_ms', '.0f')} elsewhere |")
    print(f"| pause per push, ms (events missing in the {WINDOW_S:.0f} s after it / rate) | - | "
          f"{', '.join(f'{x:.0f}' for x in pauses)} (median {statistics.median(pauses) if pauses else float('nan'):.0f}) |")
    extra = [1000 * (w["seconds"] - st["seconds"]) / max(w["pushes_done"], 1) for st, w in zip(steady, swaps, strict=True)]
    print(f"| drain time vs the steady run before it, ms per push | - | {', '.join(f'{x:+.0f}' for x in extra)} |")
    print(f"| models loaded / pushed | - | {join(swaps, 'models_loaded', '.0f')} / {join(swaps, 'pushes_done', 'd')} |")
    print(f"| worker validation (load + canary), mean s | {join(steady, 'worker_validation_s_mean', '.2f')} (built-in) | "
          f"{join(swaps, 'worker_validation_s_mean', '.2f')} |")
    print(f"\nevent loop (1 ms ticker, in-process): p99 late {lp['tick_late_ms_idle_p99']:.2f} ms idle vs "
          f"{lp['tick_late_ms_validating_p99']:.2f} ms while validating in a thread (max {lp['tick_late_ms_validating_max']:.1f} ms); "
          f"validation {lp['validation_s_median']:.2f} s")
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
