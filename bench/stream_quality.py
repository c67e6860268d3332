"""Detection quality as deployed: a held-out realistic week replayed through a real worker.

Organic curves carry real-world texture from the held-out pool of real count series
(``stream_detector/dev/texture.py``, test pool; the shipped model never trained on it), 40 % of the
videos get fake engagement. Every non-empty video-minute becomes one event (minute-level
events, keyed by video), produced into a real broker and consumed by a real
``stream-detector worker`` process with its real Redis; the flags topic is then read back
and scored against the truth: videos ever flagged (precision, recall, FPR, by organic kind),
flags per flagged video, withdrawals, pattern naming, hour localisation.

Run at two production speeds (``--speeds``: events per second of replay; the worker's
re-scoring cadence is wall-clock, so a slower replay means many more re-scorings per event
hour) to show that the flags do not depend on it.

    .venv/bin/python bench/stream_quality.py                 # 240 videos, speeds 40000 and 8000
    .venv/bin/python bench/stream_quality.py --videos 120 --speeds 20000 --json

Prints a Markdown table; with ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream_detector.decision import Published  # noqa: E402
from stream_detector.dev.embedded import EmbeddedStack, ensure_topics  # noqa: E402
from stream_detector.dev.replay import produce  # noqa: E402
from stream_detector.dev.simulate import simulate  # noqa: E402
from stream_detector.dev.texture import RealTexture  # noqa: E402
from stream_detector.flags import window_from_dict  # noqa: E402
from training.stream_eval import StreamRun, stream_metrics  # noqa: E402

BASE_HOUR = 1767571200 // 3600 + 9 * 168  # a week no training or test week uses
SEED = 777_001


def minute_events(data) -> list[tuple[str, bytes]]:
    """One event per non-empty video-minute, in global time order."""
    per_minute = data.minute_counts()  # (N, 4, T, 60)
    n, _, hours, _ = per_minute.shape
    flat = per_minute.reshape(n, 4, hours * 60)
    active = flat.any(axis=1)
    vids, mins = np.nonzero(active)
    order = np.lexsort((vids, mins))
    pubs = [data.published_at(i) for i in range(n)]
    out = []
    for k in order.tolist():
        i, m = int(vids[k]), int(mins[k])
        ev = {"video_id": data.video_ids[i], "ts": (int(data.start_hour) * 60 + m) * 60, "published_at": pubs[i]}
        for name, c in zip(("views", "likes", "comments", "shares"), flat[i, :, m].tolist(), strict=True):
            if c:
                ev[name] = int(c)
        out.append((data.video_ids[i], json.dumps(ev, separators=(",", ":")).encode()))
    return out


def _metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
                name = key.split("{", 1)[0]
                if "{" in key:
                    out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _read_flags(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out, last = [], time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                for r in recs:
                    out.append(json.loads(r.value))
                    last = time.monotonic()
    finally:
        await consumer.stop()
    return out


def run_once(data, events, stack, speed: float, lateness: int) -> tuple[dict, dict]:
    run_id = f"q{int(time.time() * 1000) % 10**9}"
    topics = {"events": f"{run_id}-events", "flags": f"{run_id}-flags", "dlq": f"{run_id}-dlq"}
    asyncio.run(ensure_topics(stack.bootstrap_servers, {t: 4 for t in topics.values()}))
    port = _free_port()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers, REDIS_URL=stack.redis_url,
               DETECTOR_EVENTS_TOPIC=topics["events"], DETECTOR_FLAGS_TOPIC=topics["flags"],
               DETECTOR_DLQ_TOPIC=topics["dlq"], DETECTOR_CONSUMER_GROUP=f"{run_id}-g", DETECTOR_KEY_PREFIX=run_id,
               DETECTOR_WEB_PORT=str(port), DETECTOR_IDLE_CLOSE_SECONDS="3",
               DETECTOR_CONTROL_TOPIC=f"{run_id}-models", DETECTOR_SHADOW_FLAGS_TOPIC=f"{run_id}-shadow")
    log = open(Path(tempfile.gettempdir()) / f"{run_id}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stream_detector.cli", "worker"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(ROOT))
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        t_start = time.monotonic()
        asyncio.run(produce(stack.bootstrap_servers, topics["events"], events, rate=speed))
        produced_s = time.monotonic() - t_start
        deadline = time.monotonic() + 600
        idle_seen = 0.0
        while time.monotonic() < deadline:  # drained: consumed, every partition idle-closed, nothing due
            m = _metrics(port)
            if (m.get("detector_consumer_lag_messages", 1) == 0
                    and m.get('detector_hours_closed_total{reason="idle"}', 0) > idle_seen
                    and m.get("detector_videos_scored_total", 0) > 0):
                idle_seen = m['detector_hours_closed_total{reason="idle"}']
                time.sleep(5)
                if _metrics(port).get("detector_videos_scored_total") == m.get("detector_videos_scored_total"):
                    break
            time.sleep(1)
        m = _metrics(port)
        flags = asyncio.run(_read_flags(stack.bootstrap_servers, topics["flags"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    index = {v: i for i, v in enumerate(data.video_ids)}
    published: list[list[Published]] = [[] for _ in range(len(data))]
    for f in flags:
        i = index[f["video_id"]]
        wm = datetime_epoch(f["watermark"]) + lateness  # the event time the worker had reached
        minute = int(wm // 60) - int(data.start_hour) * 60
        windows = tuple(window_from_dict(w) for w in f["windows"])
        published[i].append(Published(f["status"], f["flag_id"], windows, f["score"], f["severity"], "", minute))
    run = StreamRun(published, int(m.get("detector_videos_scored_total", 0)), produced_s, 0)
    res = stream_metrics(run, data)
    res["speed_events_per_s"] = speed
    res["replay_seconds"] = round(produced_s, 1)
    res["rescorings_per_event_hour"] = round(res["scorings"] / (len(data) * data.hours), 3)
    res["immediate_scorings"] = int(m.get('detector_videos_scored_total{path="immediate"}', 0))
    return res, m


def datetime_epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--speeds", default="40000,8000", help="replay speeds, events/s, comma separated")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    speeds = [float(x) for x in args.speeds.split(",") if x]
    data = simulate(args.videos, seed=args.seed, texture=RealTexture("test"), fake_fraction=0.4, start_hour=BASE_HOUR)
    events = minute_events(data)
    print(f"held-out week: {len(data)} videos ({int(data.label.sum())} fake), {len(events):,} minute-level events", flush=True)
    results = []
    with EmbeddedStack() as stack:
        for speed in speeds:
            res, _ = run_once(data, events, stack, speed, lateness=3600)
            results.append(res)
            print(f"  speed {speed:,.0f} ev/s: replay {res['replay_seconds']} s, FPR {res['fpr']:.3f}, "
                  f"recall {res['recall']:.3f}, {res['scorings']:,} scorings", flush=True)
    rows = [("videos ever flagged: precision", "precision"), ("recall", "recall"), ("FPR (organic ever flagged)", "fpr"),
            ("FPR at the end (withdrawn removed)", "fpr_standing"), ("flags per flagged video", "flags_per_flagged_video"),
            ("withdrawn: organic / fake", None), ("fake hours within ±1 h of a flagged window", "hours_localised"),
            ("pattern named exactly (single-pattern fakes)", "named_exact"), ("named in any window", "named_any"),
            ("median event hours to first flag: all / spike", None), ("scorings (re-scorings per video-hour)", None)]
    print("\n| measure | " + " | ".join(f"{r['speed_events_per_s']:,.0f} ev/s" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for label, key in rows:
        cells = []
        for r in results:
            if key is not None:
                v = r[key]
                cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
            elif label.startswith("withdrawn"):
                cells.append(f"{r['withdrawn_false']} / {r['withdrawn_true']}")
            elif label.startswith("median"):
                sp = r["hours_to_first_flag_median"].get("spike")
                cells.append(f"{r['hours_to_first_flag_median_all']:.2f} / {sp:.2f}" if sp is not None else "n/a")
            else:
                cells.append(f"{r['scorings']:,} ({r['rescorings_per_event_hour']})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    kinds = results[0]["fpr_by_kind"]
    print("\n| FPR by organic kind | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for r in results:
        print(f"| {r['speed_events_per_s']:,.0f} ev/s | " + " | ".join(f"{r['fpr_by_kind'].get(k, float('nan')):.3f}" for k in kinds) + " |")
    if args.json:
        print(json.dumps({"videos": len(data), "events": len(events), "runs": results}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
