"""The user level's cost: a worker with account events against the same worker without them.

One market week with its accounts (``dev/market.py`` + ``dev/accounts.py``) as contract-1.1
events (reactions and a quarter of views per account, the rest aggregated), produced twice into
two topics of the same embedded broker: once as they are, once with ``user_id`` and
``channel_id`` stripped (the same events, the same counts: what the video-only path reads). One
worker consumes each in turn (the other one stopped); the rate is events from its first to its
last consumption (its ``/metrics``), its CPU per 1k events from /proc; then ``MEMORY USAGE`` of
the account keys (state + recent actions) of sampled accounts and of the per-video account keys.
Alternating the order (``--rounds``) pairs the runs against the machine's drift.

    .venv/bin/python bench/accounts.py                    # 200 videos (~1 M events), 2 rounds
    .venv/bin/python bench/accounts.py --videos 80 --rounds 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from stream_detector import keys  # noqa: E402
from stream_detector.dev.accounts import build_world  # noqa: E402
from stream_detector.dev.embedded import EmbeddedStack  # noqa: E402
from stream_detector.dev.market import simulate_market  # noqa: E402
from stream_detector.dev.replay import produce  # noqa: E402
from stream_detector.metrics import scrape  # noqa: E402
from stream_detector.topics import ensure_topics  # noqa: E402
from tests.harness import free_port  # noqa: E402


def _cpu(pid: int) -> float:
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        return []
    return [int(x) for x in out]


def _redis_cpu(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _redis_top(url: str, n: int = 12) -> list[str]:
    """The Redis commands that took most of its time in the run (scripts count as their own calls)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:n]
    return [f"{k.removeprefix('cmdstat_')} {v['usec'] / 1e6:.1f}s/{v['calls']}" for k, v in top]


def run_worker(stack: EmbeddedStack, topic: str, prefix: str, expect: int, timeout_s: float) -> dict:
    """One worker consumes ``topic`` to its end: events/s, its CPU and Redis's per 1k events."""
    port = free_port()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers, REDIS_URL=stack.redis_url,
               DETECTOR_EVENTS_TOPIC=topic, DETECTOR_CONSUMER_GROUP=f"{prefix}-group", DETECTOR_KEY_PREFIX=prefix,
               DETECTOR_FLAGS_TOPIC=f"{prefix}-flags", DETECTOR_DLQ_TOPIC=f"{prefix}-dlq",
               DETECTOR_ACCOUNT_FLAGS_TOPIC=f"{prefix}-account-flags", DETECTOR_CONTROL_TOPIC=f"{prefix}-models",
               DETECTOR_SHADOW_FLAGS_TOPIC=f"{prefix}-shadow", DETECTOR_WEB_PORT=str(port))
    log = open(f"/tmp/bench-accounts-{prefix}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stream_detector.cli", "worker"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(ROOT))
    try:
        redis.Redis.from_url(stack.redis_url).config_resetstat()
        t0 = time.monotonic()
        first = None
        cpu0 = 0.0
        consumed = 0.0
        while time.monotonic() - t0 < timeout_s:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: see /tmp/bench-accounts-{prefix}.log")
            try:
                m = scrape(port)
            except OSError:
                continue
            consumed = m.get("detector_consume_batch_size_sum", 0.0)
            if first is None and consumed > 0:
                first, cpu0, n0 = time.monotonic(), _cpu(proc.pid), consumed
                rcpu0 = _redis_cpu(stack.redis_url)
            if consumed >= expect:
                seconds = time.monotonic() - first
                cpu = _cpu(proc.pid) - cpu0
                rcpu = _redis_cpu(stack.redis_url) - rcpu0
                n = consumed - n0
                return {"events": int(consumed), "seconds": round(seconds, 2), "events_per_s": round(n / seconds),
                        "cpu_ms_per_1k": round(1000 * cpu / n * 1000, 2) if n else None,
                        "redis_cpu_ms_per_1k": round(1000 * rcpu / n * 1000, 2) if n else None,
                        "account_actions": int(m.get("detector_account_actions_total", 0)),
                        "accounts_judged": int(m.get("detector_accounts_judged_total", 0)),
                        "account_flags": int(m.get("detector_account_flags_total", 0)),
                        "redis_top": _redis_top(stack.redis_url)}
        raise TimeoutError(f"{topic}: consumed {consumed} of {expect} in {timeout_s} s")
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def memory(stack: EmbeddedStack, prefix: str, users: list[str], videos: list[str], sample: int = 300) -> dict:
    r = redis.Redis.from_url(stack.redis_url)
    rng = random.Random(1)
    acc, vid = [], []
    for u in rng.sample(users, min(sample, len(users))):
        parts = [r.memory_usage(keys.account_state(prefix, u)), r.memory_usage(keys.account_ring(prefix, u))]
        if all(parts):
            acc.append(sum(parts))
    for v in rng.sample(videos, min(sample, len(videos))):
        parts = [r.memory_usage(k) for k in (keys.engagers(prefix, v), keys.video_accounts(prefix, v))]
        vid.append(sum(p or 0 for p in parts))
    return {"bytes_per_active_account": round(sum(acc) / max(len(acc), 1)),
            "accounts_sampled": len(acc),
            "bytes_per_video_account_keys": round(sum(vid) / max(len(vid), 1))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.videos < 10 or args.rounds < 1:
        ap.error("--videos >= 10 and --rounds >= 1")
    data = simulate_market(args.videos, seed=args.seed)
    world = build_world(data, seed=args.seed)
    events = list(world.iter_events())
    with_accounts = [(e["video_id"], json.dumps(e, separators=(",", ":")).encode()) for e in events]
    plain = [(e["video_id"], json.dumps({k: v for k, v in e.items() if k not in ("user_id", "channel_id")},
                                        separators=(",", ":")).encode()) for e in events]
    n = len(events)
    print(f"{args.videos} videos, {n:,} events ({sum('user_id' in e for e in events):,} with an account, "
          f"{len({e['user_id'] for e in events if 'user_id' in e}):,} accounts)", flush=True)
    results: dict[str, list[dict]] = {"video-only": [], "with accounts": []}
    with EmbeddedStack(kafka=True, redis=True) as stack:
        topics = {"video-only": "bench-plain", "with accounts": "bench-accounts"}
        asyncio.run(ensure_topics(stack.bootstrap_servers, {t: 4 for t in topics.values()}))
        asyncio.run(produce(stack.bootstrap_servers, topics["video-only"], plain))
        asyncio.run(produce(stack.bootstrap_servers, topics["with accounts"], with_accounts))
        for rnd in range(args.rounds):
            order = list(topics) if rnd % 2 == 0 else list(reversed(topics))
            for name in order:
                prefix = f"b{rnd}-{'acc' if name == 'with accounts' else 'plain'}"
                got = run_worker(stack, topics[name], prefix, n, args.timeout)
                results[name].append(got)
                print(f"round {rnd + 1} {name}: {got}", flush=True)
        mem = memory(stack, f"b{args.rounds - 1}-acc", sorted({e["user_id"] for e in events if "user_id" in e}),
                     data.video_ids)
    best = {k: max(v, key=lambda r: r["events_per_s"]) for k, v in results.items()}
    ratio = best["with accounts"]["events_per_s"] / best["video-only"]["events_per_s"]
    print("\n| measure | video-only | with accounts |\n|---|---|---|")
    print(f"| events/s (best of {args.rounds}) | {best['video-only']['events_per_s']:,} | "
          f"{best['with accounts']['events_per_s']:,} |")
    print(f"| worker CPU per 1k events (incl. scoring children) | {best['video-only']['cpu_ms_per_1k']} ms | "
          f"{best['with accounts']['cpu_ms_per_1k']} ms |")
    print(f"| Redis CPU per 1k events | {best['video-only']['redis_cpu_ms_per_1k']} ms | "
          f"{best['with accounts']['redis_cpu_ms_per_1k']} ms |")
    print(f"| account actions / judgements / account flags | - | {best['with accounts']['account_actions']:,} / "
          f"{best['with accounts']['accounts_judged']:,} / {best['with accounts']['account_flags']:,} |")
    print(f"\nwith accounts / video-only: {ratio:.2f} of the rate; bytes per active account {mem['bytes_per_active_account']:,} "
          f"(state + recent actions, {mem['accounts_sampled']} sampled), per video's account keys "
          f"{mem['bytes_per_video_account_keys']:,}")
    if args.json:
        print(json.dumps({"ratio": round(ratio, 3), "best": best, "rounds": results, **mem}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
