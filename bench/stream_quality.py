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

``--market``: a held-out week of fraud as panels sell it and its organic look-alikes
(``dev/market.py``), reported per delivery kind, amplitude band and look-alike. ``--accounts``
(with ``--market``): the same week as contract-1.1 events with the accounts behind them
(``dev/accounts.py``); the account flags topic is read back too and scored by role, and the
video flags show what the user level adds (coordinated_accounts).

    .venv/bin/python bench/stream_quality.py                 # 240 videos, speeds 40000 and 8000
    .venv/bin/python bench/stream_quality.py --videos 120 --speeds 20000 --json
    .venv/bin/python bench/stream_quality.py --market --accounts --videos 300 --speeds 20000

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
from stream_detector.dev.embedded import EmbeddedStack, free_port  # noqa: E402
from stream_detector.dev.replay import produce  # noqa: E402
from stream_detector.dev.simulate import simulate  # noqa: E402
from stream_detector.dev.texture import RealTexture  # noqa: E402
from stream_detector.flags import window_from_dict  # noqa: E402
from stream_detector.metrics import scrape  # noqa: E402
from stream_detector.topics import ensure_topics  # noqa: E402
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
        return scrape(port, timeout_s=2)
    except OSError:
        return {}


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


def run_once(data, events, stack, speed: float, lateness: int, world=None) -> tuple[dict, dict]:
    run_id = f"q{int(time.time() * 1000) % 10**9}"
    topics = {"events": f"{run_id}-events", "flags": f"{run_id}-flags", "dlq": f"{run_id}-dlq",
              "accounts": f"{run_id}-account-flags"}
    asyncio.run(ensure_topics(stack.bootstrap_servers, {t: 4 for t in topics.values()}))
    port = free_port()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers, REDIS_URL=stack.redis_url,
               DETECTOR_EVENTS_TOPIC=topics["events"], DETECTOR_FLAGS_TOPIC=topics["flags"],
               DETECTOR_DLQ_TOPIC=topics["dlq"], DETECTOR_CONSUMER_GROUP=f"{run_id}-g", DETECTOR_KEY_PREFIX=run_id,
               DETECTOR_WEB_PORT=str(port), DETECTOR_IDLE_CLOSE_SECONDS="3",
               DETECTOR_CONTROL_TOPIC=f"{run_id}-models", DETECTOR_SHADOW_FLAGS_TOPIC=f"{run_id}-shadow",
               DETECTOR_ACCOUNT_FLAGS_TOPIC=topics["accounts"])
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
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited {proc.returncode}: see {log.name}")
        t_start = time.monotonic()
        asyncio.run(produce(stack.bootstrap_servers, topics["events"], events, rate=speed))
        produced_s = time.monotonic() - t_start
        deadline = time.monotonic() + 600
        idle_seen = 0.0
        while time.monotonic() < deadline:  # drained: consumed, every partition idle-closed, nothing due
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: see {log.name}")
            m = _metrics(port)
            if (m.get("detector_consumer_lag_messages", 1) == 0
                    and m.get('detector_hours_closed_total{reason="idle"}', 0) > idle_seen
                    and m.get("detector_videos_scored_total", 0) > 0):
                # quiet for 5 s: nothing scored (an account flag can make videos due again) and no
                # account judged (the account lane drains its due accounts: flags it owes count)
                time.sleep(5)
                after = _metrics(port)
                if all(after.get(k) == m.get(k) for k in ("detector_videos_scored_total",
                                                          "detector_accounts_judged_total")):
                    break
            time.sleep(1)
        m = _metrics(port)
        flags = asyncio.run(_read_flags(stack.bootstrap_servers, topics["flags"]))
        account_flags = asyncio.run(_read_flags(stack.bootstrap_servers, topics["accounts"])) if world else []
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
    if hasattr(data, "kind_of"):
        labels = np.asarray(data.label, dtype=bool)
        ever = np.array([bool(p) for p in published])
        look = ~labels & np.array([bool(x) for x in data.lookalike])
        kinds = np.array([data.kind_of(i) for i in range(len(data))])
        res["kind_counts"] = {k: int((kinds == k).sum()) for k in sorted(set(kinds.tolist()))}
        res["fpr_lookalikes"] = float(ever[look].mean()) if look.any() else None
        res["fpr_plain"] = float(ever[~labels & ~look].mean()) if (~labels & ~look).any() else None
        coordinated = np.array([any("coordinated_accounts" in w.patterns for p in pubs for w in p.windows)
                                for pubs in published])
        res["flagged_by_accounts_only"] = int((coordinated & ever).sum())
    if world is not None:
        res["accounts"] = _account_quality(world, account_flags, lateness, published)
    return res, m


def _first_flag_split(world, published, first_flag: np.ndarray) -> dict:
    """Where a farm's time to its first account flag goes: until the video level flags one of
    its customers, and from there to the account flag (the account level's own delay)."""
    from stream_detector.dev.accounts import FAKE_ROLES
    from training.account_eval import _first_fake_minute

    index = {v: i for i, v in enumerate(world.data.video_ids)}
    start = _first_fake_minute(world)
    to_video, video_to_account = [], []
    for g in world.groups:
        if g["kind"] not in FAKE_ROLES or int(g["id"]) not in start:
            continue
        members = np.flatnonzero(world.group == g["id"])
        caught = first_flag[members][first_flag[members] >= 0]
        seen = [p.minute for c in g["customers"] for p in published[index[c]] if p.status != "withdrawn"]
        if not seen or not caught.size:
            continue
        first_video = min(seen)
        to_video.append(max(0, first_video - start[int(g["id"])]) / 60.0)
        video_to_account.append((int(caught.min()) - first_video) / 60.0)
    return {"hours_to_first_customer_flag_median": float(np.median(to_video)) if to_video else None,
            "hours_customer_flag_to_account_flag_median": (float(np.median(video_to_account))
                                                           if video_to_account else None)}


def _account_quality(world, account_flags: list[dict], lateness: int, published) -> dict:
    """The account flags read back, scored like the evaluator scores its replay, and where a
    farm's time to its first account flag goes (``published``: the video flags per video)."""
    from training.account_eval import AccountRun, account_metrics

    index = {u: k for k, u in enumerate(world.account_ids)}
    n = len(world.account_ids)
    first = np.full(n, -1, dtype=np.int64)
    group: list[str | None] = [None] * n
    pats: list[set[str]] = [set() for _ in range(n)]
    for f in account_flags:
        k = index.get(f["user_id"])
        if k is None or f["status"] == "withdrawn":
            continue
        minute = int((datetime_epoch(f["watermark"]) + lateness) // 60) - int(world.data.start_hour) * 60
        if first[k] < 0 or minute < first[k]:
            first[k] = max(minute, 0)
            group[k] = (f.get("group") or {}).get("group_id")
        pats[k] |= set(f["patterns"])
    return (account_metrics(AccountRun(first, np.zeros(n), pats, group, 0, 0.0), world)
            | _first_flag_split(world, published, first))


def datetime_epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--speeds", default="40000,8000", help="replay speeds, events/s, comma separated")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--market", action="store_true", help="fraud as panels sell it and its look-alikes")
    ap.add_argument("--accounts", action="store_true", help="with --market: events with the accounts behind them")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.accounts and not args.market:
        ap.error("--accounts needs --market")
    speeds = [float(x) for x in args.speeds.split(",") if x]
    world = None
    if args.market:
        from stream_detector.dev.accounts import build_world
        from stream_detector.dev.market import simulate_market

        data = simulate_market(args.videos, seed=args.seed, texture=RealTexture("test"), start_hour=BASE_HOUR)
        if args.accounts:
            world = build_world(data, seed=args.seed)
            events = [(e["video_id"], json.dumps(e, separators=(",", ":")).encode()) for e in world.iter_events()]
        else:
            events = minute_events(data)
    else:
        data = simulate(args.videos, seed=args.seed, texture=RealTexture("test"), fake_fraction=0.4, start_hour=BASE_HOUR)
        events = minute_events(data)
    print(f"held-out week: {len(data)} videos ({int(data.label.sum())} fake), {len(events):,} minute-level events", flush=True)
    results = []
    with EmbeddedStack() as stack:
        for speed in speeds:
            res, _ = run_once(data, events, stack, speed, lateness=3600, world=world)
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
    if args.market:
        from training.market_eval import markdown

        for r in results:
            print(f"\n### {r['speed_events_per_s']:,.0f} ev/s: per delivery kind, band and look-alike\n")
            print(markdown(r))
            if "accounts" in r:
                a = r["accounts"]
                print(f"\nvideos flagged with coordinated_accounts windows: {r['flagged_by_accounts_only']}")
                print("\n| accounts | value |\n|---|---|")
                for key in ("accounts_judged", "fake_accounts", "precision", "recall", "fpr", "groups_found",
                            "group_member_recall", "group_purity", "hours_to_first_account_flag_median",
                            "hours_to_first_customer_flag_median", "hours_customer_flag_to_account_flag_median"):
                    v = a.get(key)
                    print(f"| {key} | {v:.4f} |" if isinstance(v, float) else f"| {key} | {v} |")
                print("| flagged by role | " + ", ".join(f"{k} {v:.4f}" for k, v in a["flagged_by_role"].items()) + " |")
                print("| recall by farm kind | " + ", ".join(f"{k} {v:.3f}" for k, v in a["recall_by_stealth"].items()) + " |")
    if args.json:
        print(json.dumps({"videos": len(data), "events": len(events), "runs": results}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
