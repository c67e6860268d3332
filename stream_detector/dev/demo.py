"""`stream-detector demo`: the whole product on one machine, in under a minute.

Starts the embedded broker and redis-server, a real worker process (`stream-detector
worker`), replays a simulated week of engagement (known fakes and tricky organic videos)
compressed into ``duration`` seconds, prints flags as they arrive, and ends with a summary
against the truth. Exit code 0 when the pipeline ran; the summary says how well it did.

``--market``: fraud as panels sell it and its organic look-alikes (``dev/market.py``), as
contract-1.1 events with the accounts behind them (``dev/accounts.py``): the video flags
name delivery kinds and look-alikes, and account flags arrive on their own topic.
"""

from __future__ import annotations

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
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_detector.config import Settings
from stream_detector.dev.embedded import EmbeddedStack, free_port
from stream_detector.dev.replay import produce
from stream_detector.metrics import scrape
from stream_detector.schedule import RescoreSchedule
from stream_detector.topics import ensure_topics

TRUTH_MARK = {True: "ok", False: "FALSE"}


def _metrics(port: int) -> dict[str, float]:
    """The worker's metrics, or nothing while it does not answer (the demo goes on)."""
    try:
        return scrape(port, timeout_s=2)
    except OSError:
        return {}


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready after {timeout:.0f}s")


def run_demo(videos: int = 120, duration: float = 40.0, seed: int = 2026, market: bool = False) -> int:
    if videos < 10:
        sys.stderr.write("stream-detector: error: --videos must be >= 10\n")
        return 2
    if duration <= 0:
        sys.stderr.write("stream-detector: error: --duration must be > 0\n")
        return 2
    from stream_detector.dev.simulate import simulate

    try:  # organic curves with real-world texture (real count series shipped with the package)
        from stream_detector.dev.texture import RealTexture

        texture = RealTexture("test")
    except (ImportError, OSError):
        texture = None
    what = "a market week (deliveries as panels sell them, look-alikes, accounts)" if market else "one week"
    print(f"simulating {videos} videos over {what} (seed {seed}; real texture: {texture is not None}) ...",
          flush=True)
    world = None
    if market:
        from stream_detector.dev.accounts import build_world
        from stream_detector.dev.market import simulate_market

        data = simulate_market(videos, seed=seed, texture=texture)
        world = build_world(data, seed=seed)
    else:
        data = simulate(videos, seed=seed, texture=texture)
    settings = Settings.from_env()
    stack = None
    if not settings.kafka_bootstrap_servers or not settings.redis_url:
        stack = EmbeddedStack(kafka=not settings.kafka_bootstrap_servers, redis=not settings.redis_url).start()
        print(f"embedded stack: broker {stack.bootstrap_servers}  redis {stack.redis_url}", flush=True)
    try:
        bootstrap = settings.kafka_bootstrap_servers or stack.bootstrap_servers
        redis_url = settings.redis_url or stack.redis_url
        return asyncio.run(_demo(data, duration, bootstrap, redis_url, settings, world))
    finally:
        if stack is not None:
            stack.stop()


async def _demo(data, duration: float, bootstrap: str, redis_url: str, settings: Settings, world=None) -> int:
    run_id = f"demo-{int(time.time())}"
    topics = {
        "events": f"{run_id}-events",
        "flags": f"{run_id}-flags",
        "dlq": f"{run_id}-dlq",
        "accounts": f"{run_id}-account-flags",
        "verdicts": f"{run_id}-verdicts",
        "review": f"{run_id}-flags-review",
    }
    await ensure_topics(bootstrap, {t: 1 if name == "verdicts" else settings.topic_partitions
                                    for name, t in topics.items()})
    port = free_port()
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        DETECTOR_EVENTS_TOPIC=topics["events"],
        DETECTOR_FLAGS_TOPIC=topics["flags"],
        DETECTOR_DLQ_TOPIC=topics["dlq"],
        DETECTOR_ACCOUNT_FLAGS_TOPIC=topics["accounts"],
        DETECTOR_VERDICTS_TOPIC=topics["verdicts"],
        DETECTOR_REVIEW_TOPIC=topics["review"],
        DETECTOR_CONSUMER_GROUP=f"{run_id}-group",
        DETECTOR_KEY_PREFIX=run_id,
        DETECTOR_WEB_PORT=str(port),
        DETECTOR_SCORE_INTERVAL_SECONDS="0.5",
        DETECTOR_IDLE_CLOSE_SECONDS="2",  # the replay ends: close its last hours quickly
    )
    log_path = Path(tempfile.gettempdir()) / f"{run_id}-worker.log"
    log_file = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_detector.cli", "worker"], env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    try:
        ready_s = _wait_ready(port, proc)
        print(f"worker ready in {ready_s:.1f}s (pid {proc.pid}, http://127.0.0.1:{port}/metrics, log {log_path})", flush=True)
        return await _run(data, duration, bootstrap, redis_url, topics, port, run_id, proc, world)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()


def _kind(data, i: int) -> str:
    """What the video is, for the table: its fake pattern or delivery kind, or organic/<kind>."""
    if hasattr(data, "kind_of"):
        return data.kind_of(i) if data.label[i] else f"organic/{data.kind_of(i)}"
    return data.pattern[i] if data.label[i] else f"organic/{data.organic_kind[i]}"


async def _run(data, duration, bootstrap, redis_url, topics, port, run_id, proc, world=None) -> int:
    truth = {vid: i for i, vid in enumerate(data.video_ids)}
    events = list(world.iter_events() if world is not None else data.iter_events())
    account_flags: dict[str, dict] = {}
    n_events = len(events)
    rate = n_events / duration
    print(
        f"replaying {n_events:,} events of {len(data)} videos ({int(np.sum(data.label))} with fake engagement) "
        f"in ~{duration:.0f}s ({rate:,.0f} events/s; one simulated week = {duration:.0f}s)\n",
        flush=True,
    )
    print(f"{'time':>6}  {'video':<14} {'severity':<8} {'score':>5}  {'hours (UTC)':<24} {'patterns':<28} truth")
    flags_consumer = AIOKafkaConsumer(topics["flags"], topics["accounts"], bootstrap_servers=bootstrap,
                                      auto_offset_reset="earliest", group_id=None)
    roles = {}
    if world is not None:
        from stream_detector.dev.accounts import ROLES

        roles = {u: ROLES[int(r)] for u, r in zip(world.account_ids, world.role, strict=True)}
    await flags_consumer.start()
    t0 = time.monotonic()
    last_flag: dict[str, dict] = {}
    updates = [0]
    withdrawn: list[str] = []

    async def show_flags() -> None:
        while True:
            batch = await flags_consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for rec in records:
                    flag = json.loads(rec.value)
                    if "user_id" in flag:  # an account flag
                        account_flags[flag["user_id"]] = flag
                        role = roles.get(flag["user_id"], "?")
                        if flag["status"] == "new":
                            print(f"{time.monotonic() - t0:6.1f}  ACCOUNT {flag['user_id']:<14} {flag['score']:5.2f}  "
                                  f"{','.join(flag['patterns']):<28} {flag['explanation'][:70]}  "
                                  f"{role} [{TRUTH_MARK[role in ('farm', 'pod')]}]", flush=True)
                        continue
                    last_flag[flag["video_id"]] = flag
                    i = truth.get(flag["video_id"])
                    fake = bool(data.label[i]) if i is not None else False
                    label = _kind(data, i)
                    if flag["status"] == "withdrawn":
                        withdrawn.append(flag["video_id"])
                        print(f"{time.monotonic() - t0:6.1f}  {flag['video_id']:<14} {'WITHDRAWN':<8} {flag['score']:5.2f}  "
                              f"{flag['explanation'][:60]:<53} {label} [{TRUTH_MARK[not fake]}]", flush=True)
                        continue
                    if flag["status"] != "new":
                        updates[0] += 1  # a material change: new window, pattern or severity
                        continue
                    w = max(flag["windows"], key=lambda x: x["score"])
                    span = f"{w['start'][5:16]}Z ({len(flag['windows'])} window{'s' if len(flag['windows']) > 1 else ''})"
                    pats = ",".join(sorted({p for x in flag["windows"] for p in x["patterns"]}))
                    print(
                        f"{time.monotonic() - t0:6.1f}  {flag['video_id']:<14} {flag['severity']:<8} {flag['score']:5.2f}  "
                        f"{span:<24} {pats:<28} {label} [{TRUTH_MARK[fake]}]",
                        flush=True,
                    )

    async def progress(sent_ref: list[int]) -> None:
        while True:
            await asyncio.sleep(5)
            m = _metrics(port)
            print(
                f"  .. {time.monotonic() - t0:5.1f}s sent {sent_ref[0]:,}/{n_events:,}  consumed {m.get('detector_events_consumed_total', 0):,.0f} "
                f"metric-events  flagged videos {len(last_flag)} (+{updates[0]} updates, {len(withdrawn)} withdrawn)",
                flush=True,
            )

    sent = [0]

    def counted():
        for e in events:
            sent[0] += 1
            yield e["video_id"], json.dumps(e, separators=(",", ":")).encode()

    r = aioredis.from_url(redis_url)
    schedule = RescoreSchedule(r, prefix=run_id, topic=topics["events"])
    # the account lane's due accounts (the worker's AccountLoop schedule): the user level's figures
    # are read once it has judged them, not wherever a loaded machine left it
    account_schedule = RescoreSchedule(r, prefix=run_id, topic=f"{topics['events']}#accounts")
    partitions = Settings.from_env().topic_partitions
    shower = asyncio.create_task(show_flags())
    prog = asyncio.create_task(progress(sent))
    try:
        await produce(bootstrap, topics["events"], counted(), rate=rate)
        # drain: wait until the worker has consumed and scored everything, and judged the accounts due
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                print(f"worker exited with code {proc.returncode}", file=sys.stderr)
                return 1
            m = _metrics(port)
            closed = m.get('detector_hours_closed_total{reason="idle"}', 0)  # the last hours closed after the replay stopped
            if (m.get("detector_consumer_lag_messages", 1) == 0 and closed >= 1
                    and await schedule.size(list(range(partitions))) == 0
                    and (world is None or await account_schedule.size(list(range(partitions))) == 0)):
                await asyncio.sleep(1.0)
                break
            await asyncio.sleep(0.5)
    finally:
        await r.aclose()
        prog.cancel()
        await asyncio.sleep(1.0)
        shower.cancel()
        await flags_consumer.stop()
    code = await _summary(data, redis_url, run_id, last_flag, time.monotonic() - t0, port, withdrawn, world,
                          account_flags)
    await _moderate_one(data, bootstrap, topics, last_flag)
    return code


async def _summary(data, redis_url: str, run_id: str, last_flag: dict, elapsed: float, port: int,
                   withdrawn: list[str], world=None, account_flags: dict | None = None) -> int:
    r = aioredis.from_url(redis_url)
    keys = [f"{run_id}:s:{{{vid}}}" for vid in data.video_ids]
    docs = await r.mget(keys)
    await r.aclose()
    scored = sum(d is not None for d in docs)
    labels = np.asarray(data.label, dtype=bool)
    flagged = np.array([vid in last_flag for vid in data.video_ids])
    caught = flagged & labels
    false_flags = flagged & ~labels
    missed = labels & ~flagged
    near, total = 0, 0
    for i in np.flatnonzero(caught):
        fake_hours = data.start_hour + np.flatnonzero(data.hour_fake[i])
        hot: set[int] = set()
        for w in last_flag[data.video_ids[i]]["windows"]:
            s = _hour(w["start"])
            e = _hour(w["end"])
            hot.update(range(s - 1, e + 1))
        total += len(fake_hours)
        near += sum(int(h) in hot for h in fake_hours)
    m = _metrics(port)
    print("\n=== summary ===")
    print(f"videos {len(data)}  scored {scored}  fake {labels.sum()}  organic {(~labels).sum()}  time {elapsed:.0f}s")
    print(f"caught {caught.sum()}/{labels.sum()} fake videos (recall {caught.sum() / max(labels.sum(), 1):.2f})")
    print(f"false flags {false_flags.sum()}/{(~labels).sum()} organic videos (FPR {false_flags.sum() / max((~labels).sum(), 1):.3f})")
    print(f"precision {caught.sum() / max(flagged.sum(), 1):.2f}  (a video counts as flagged if it ever was)")
    standing = [v for v in withdrawn if last_flag.get(v, {}).get("status") == "withdrawn"]
    wrong = sum(1 for v in standing if data.label[data.video_ids.index(v)] == 0)
    print(f"withdrawn flags {len(standing)} ({wrong} of them on organic videos): the evidence no longer held")
    print(f"fake hours within ±1 h of a flagged window (caught videos): {near}/{total} ({near / max(total, 1):.2f})")
    kinds = np.array([_kind(data, i) for i in range(len(data))])
    for k in sorted(set(kinds)):
        sel = kinds == k
        if labels[sel].any() or k.split("/")[-1] in getattr(data, "lookalike", []):
            verb = "caught" if labels[sel].any() else "flagged (look-alike, organic)"
            print(f"  {k:<24} {verb} {int((flagged & sel).sum())}/{int(sel.sum())}")
    if missed.any():
        print("missed: " + ", ".join(f"{data.video_ids[i]}({kinds[i]})" for i in np.flatnonzero(missed)[:10]))
    if false_flags.any():
        print("false flags: " + ", ".join(f"{data.video_ids[i]}({kinds[i]})" for i in np.flatnonzero(false_flags)[:10]))
    if world is not None:
        from stream_detector.dev.accounts import ROLES

        standing = {u for u, f in (account_flags or {}).items() if f["status"] != "withdrawn"}
        role = {u: ROLES[int(r)] for u, r in zip(world.account_ids, world.role, strict=True)}
        fake = {u for u, f in zip(world.account_ids, world.fake_accounts, strict=True) if f}
        active = world.active(3)
        active_fake = sum(1 for u, a in zip(world.account_ids, active, strict=True) if a and u in fake)
        hit = standing & fake
        print(f"accounts: {len(standing)} flagged, {len(hit)} of them a farm's or a pod's "
              f"(precision {len(hit) / max(len(standing), 1):.2f}); {active_fake} such accounts acted 3+ times "
              f"(recall {len(hit) / max(active_fake, 1):.2f}); wrongly flagged: "
              + (", ".join(f"{u}({role[u]})" for u in sorted(standing - fake)[:5]) or "none"))
    print(
        f"worker: {m.get('detector_events_consumed_total', 0):,.0f} metric-events consumed, "
        f"{m.get('detector_events_invalid_total', 0):.0f} invalid, {m.get('detector_flags_total', 0):.0f} flags published"
    )
    return 0


async def _moderate_one(data, bootstrap: str, topics: dict[str, str], last_flag: dict[str, dict]) -> None:
    """The moderation loop in one step: a moderator clears a standing flag (a false positive by
    the simulator's truth when there is one); the worker withdraws it and says why."""
    standing = {v: f for v, f in last_flag.items() if f["status"] != "withdrawn"}
    if not standing:
        print("\n=== moderation ===\nno standing flag to judge")
        return
    organic = [v for v in sorted(standing) if not data.label[data.video_ids.index(v)]]
    vid = (organic or sorted(standing))[0]
    flag = standing[vid]
    verdict = {"flag_id": flag["flag_id"], "video_id": vid, "verdict": "false_positive", "scope": "episode",
               "reviewer": "demo-moderator", "reason": "organic by the simulator's truth" if organic else "a test",
               "ts": time.time()}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(topics["flags"], p) for p in sorted(consumer.partitions_for_topic(topics["flags"]) or ())]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        print("\n=== moderation ===")
        print(f"verdict -> {topics['verdicts']}: {json.dumps(verdict)}")
        t0 = time.monotonic()
        await producer.send_and_wait(topics["verdicts"], json.dumps(verdict).encode(), key=vid.encode())
        while time.monotonic() - t0 < 15:
            batch = await consumer.getmany(timeout_ms=200)
            for rec in (r for recs in batch.values() for r in recs):
                doc = json.loads(rec.value)
                if doc["video_id"] == vid:
                    print(f"{time.monotonic() - t0:.2f} s later on {topics['flags']}: status {doc['status']}, "
                          f"moderation {json.dumps(doc.get('moderation'))}\n  explanation: {doc['explanation']}")
                    print("the episode stays closed unless its evidence grows; /verdicts on the worker lists it")
                    return
        print("no withdrawal within 15 s (see the worker log)")
    finally:
        await producer.stop()
        await consumer.stop()


def _hour(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() // 3600)

