"""The moderation loop end to end on a real broker and Redis: verdicts on the verdicts topic
reach a real worker, which withdraws, suppresses, reviews and dead-letters as the README says.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
import redis
from aiokafka import AIOKafkaProducer

from stream_detector import keys
from stream_detector.dev.simulate import simulate
from tests.harness import Deployment, WorkerProcess, read_topic

VIDEOS = 60
SEED = 4242
CHANNEL = "channel-allowlisted"
WITHDRAW_WITHIN_S = 2.0


def _items(data, channel_of: dict[str, str]):
    for e in data.iter_events():
        if e["video_id"] in channel_of:
            e = {**e, "channel_id": channel_of[e["video_id"]]}
        yield e["video_id"], json.dumps(e, separators=(",", ":")).encode()


async def _send(bootstrap: str, topic: str, docs: list[dict | bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for doc in docs:
            raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            key = None if isinstance(doc, bytes) else (doc.get("video_id") or doc.get("user_id") or "").encode()
            await producer.send_and_wait(topic, raw, key=key)
    finally:
        await producer.stop()


def _verdict(flag: dict, verdict: str = "false_positive", scope: str = "episode", **kw) -> dict:
    return {"flag_id": flag["flag_id"], "video_id": flag["video_id"], "verdict": verdict, "scope": scope,
            "ts": time.time(), "reviewer": "test-moderator", "reason": "a premiere", **kw}


def _standing(flags: list[dict]) -> dict[str, dict]:
    """The last record per video, for videos whose last record is not a withdrawal."""
    last: dict[str, dict] = {}
    for rec in flags:
        last[rec["video_id"]] = rec
    return {v: r for v, r in last.items() if r["status"] != "withdrawn"}


def _docs(dep: Deployment, topic: str, idle_s: float = 0.5) -> list[dict]:
    return [json.loads(r.value) for r in dep.read_topic(topic, idle_s=idle_s)]


def _wait_for(dep: Deployment, topic: str, seen, pred, timeout_s: float) -> tuple[dict | None, float]:
    """The first record of ``topic`` not among ``seen`` (records read before, as returned by
    ``_docs``: a topic read from its start comes back in no fixed order across partitions)
    that satisfies ``pred``."""
    known = {json.dumps(r, sort_keys=True) for r in seen}
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        recs = asyncio.run(read_topic(dep.bootstrap, topic, expect=None, idle_s=1.0, timeout_s=timeout_s))
        for rec in (json.loads(r.value) for r in recs):
            if json.dumps(rec, sort_keys=True) not in known and pred(rec):
                return rec, time.monotonic() - t0
        time.sleep(0.1)
    return None, time.monotonic() - t0


@pytest.fixture(scope="module")
def moderated(kafka_bootstrap, redis_url, tmp_path_factory):
    data = simulate(VIDEOS, seed=SEED)
    fakes = [data.video_ids[i] for i in range(len(data)) if data.label[i]]
    channel_of = {v: CHANNEL for v in fakes[-2:]}  # two fakes of one channel
    logs = tmp_path_factory.mktemp("moderation")
    dep = Deployment(kafka_bootstrap, redis_url, extra_env={"DETECTOR_VERDICT_PENDING_SECONDS": "2"})
    dep.create_topics()
    worker = WorkerProcess(dep, logs)
    try:
        worker.wait_ready()
        dep.produce(_items(data, channel_of))
        worker.wait_drained()
        flags = _docs(dep, dep.flags, idle_s=1.0)
        yield {"dep": dep, "worker": worker, "flags": flags, "data": data, "logs": logs, "channel_of": channel_of}
    finally:
        worker.terminate()


def test_a_false_positive_withdraws_the_flag_at_once_and_nothing_follows_while_evidence_stays(moderated):
    dep, worker, flags = moderated["dep"], moderated["worker"], moderated["flags"]
    standing = _standing(flags)
    candidates = [r for v, r in standing.items() if v not in moderated["channel_of"]]
    assert len(candidates) >= 3, "the simulated week must leave standing flags"
    target = candidates[0]
    first_of_episode = next(r for r in flags if r["video_id"] == target["video_id"])
    seen = flags
    # a verdict naming the episode's FIRST flag id (an older id of the standing episode)
    asyncio.run(_send(dep.bootstrap, dep.verdicts, [_verdict(first_of_episode)]))
    rec, took = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == target["video_id"], 15.0)
    assert rec is not None, worker.log_tail()
    assert rec["status"] == "withdrawn" and rec["moderation"]["verdict"] == "false_positive"
    assert rec["moderation"]["scope"] == "episode" and rec["moderation"]["reviewer"] == "test-moderator"
    assert "cleared by moderation" in rec["explanation"]
    assert took <= WITHDRAW_WITHIN_S + 1.0, f"withdrawn after {took:.1f} s (target {WITHDRAW_WITHIN_S} s)"
    # re-judged again (an 'unsure' marks it due) with the same evidence: no record follows
    seen = _docs(dep, dep.flags)
    asyncio.run(_send(dep.bootstrap, dep.verdicts, [_verdict(target, verdict="unsure")]))
    rec, _ = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == target["video_id"], 4.0)
    assert rec is None, f"a cleared episode was flagged again without new evidence: {rec}"
    # a moderator confirms another flag: a label; the flag stands, judged precision is 1 of 2
    confirmed = candidates[1]
    seen = _docs(dep, dep.flags)
    asyncio.run(_send(dep.bootstrap, dep.verdicts, [_verdict(confirmed, verdict="confirmed")]))
    rec, _ = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == confirmed["video_id"], 3.0)
    assert rec is None, f"a confirmed flag changed: {rec}"
    m = worker.metrics()
    assert m["detector_judged_precision"] == 0.5 and m["detector_judged_verdicts"] == 2
    assert m['detector_moderation_withdrawn_total{scope="episode"}'] >= 1
    assert m['detector_verdicts_total{scope="episode",verdict="false_positive"}'] >= 1
    status, view = worker.get_json("/verdicts")
    assert status == 200 and view["counts"]["false_positive/episode"] >= 1


def test_bad_verdicts_and_unknown_flags_are_dead_lettered_with_their_reason(moderated):
    dep, worker = moderated["dep"], moderated["worker"]
    before = {(r.partition, r.offset) for r in dep.read_topic(dep.dlq, idle_s=0.5)}
    unknown = {"flag_id": "f" * 32, "video_id": "never-seen", "verdict": "false_positive", "scope": "episode",
               "ts": time.time()}
    asyncio.run(_send(dep.bootstrap, dep.verdicts, [b"{not json", {"verdict": "maybe", "scope": "video",
                                                                    "video_id": "v", "ts": 1.8e9}, unknown]))
    t0 = time.monotonic()
    reasons: list[str] = []
    while time.monotonic() - t0 < 20 and len(reasons) < 3:
        recs = dep.read_topic(dep.dlq, idle_s=0.5)
        reasons = [dict(r.headers)["dlq.reason"].decode() for r in recs if (r.partition, r.offset) not in before]
    assert sorted(reasons) == ["bad_verdict", "not_json", "unknown_flag"], (reasons, worker.log_tail())
    assert worker.metrics()['detector_verdicts_invalid_total{reason="unknown_flag"}'] == 1


def test_an_allowlist_holds_across_a_sigkill_and_a_critical_flag_goes_to_review(moderated):
    dep, data = moderated["dep"], moderated["data"]
    worker = moderated["worker"]
    standing = _standing(_docs(dep, dep.flags))
    target = next(r for v, r in standing.items() if v not in moderated["channel_of"])
    seen = _docs(dep, dep.flags)
    asyncio.run(_send(dep.bootstrap, dep.verdicts, [_verdict(target, scope="video")]))
    rec, _ = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == target["video_id"], 15.0)
    assert rec is not None and rec["status"] == "withdrawn" and rec["moderation"]["scope"] == "video"
    reviews_before = _docs(dep, dep.review)
    # the worker dies; another one starts and replays the verdicts before deciding anything
    worker.terminate(signal.SIGKILL)
    worker = moderated["worker"] = WorkerProcess(dep, moderated["logs"])
    worker.wait_ready()
    seen = _docs(dep, dep.flags)
    # the allowlisted video gets a burst no organic video has: 50,000 likes in one minute
    last_ts = float((data.start_hour + data.counts.shape[-1]) * 3600)
    burst = [{"video_id": target["video_id"], "ts": last_ts + 60 + k, "likes": 5000} for k in range(10)]
    dep.produce([(e["video_id"], json.dumps(e).encode()) for e in burst])
    worker.wait_drained()
    # its critical evidence (the burst, or its earlier hours judged again after the restart)
    # goes to review, once while the allowlist holds
    review, _ = _wait_for(dep, dep.review, reviews_before, lambda r: r["video_id"] == target["video_id"], 20.0)
    assert review is not None, worker.log_tail()
    assert review["severity"] == "critical" and review["moderation"]["action"] == "suppressed"
    flagged, _ = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == target["video_id"], 2.0)
    assert flagged is None, f"an allowlisted video was flagged: {flagged}"
    status, score = worker.get_json(f"/score/{target['video_id']}")
    assert status == 200 and score["video_id"] == target["video_id"]  # still scored and visible
    assert len(_docs(dep, dep.review, idle_s=1.0)) == len(reviews_before) + 1  # once per allowlist


def test_a_channel_allowlist_withdraws_the_channels_flags(moderated):
    dep, worker = moderated["dep"], moderated["worker"]
    standing = _standing(_docs(dep, dep.flags))
    mine = [r for v, r in standing.items() if moderated["channel_of"].get(v) == CHANNEL]
    assert mine, "the channel's fakes must be flagged"
    seen = _docs(dep, dep.flags)
    docs = [_verdict(r, scope="channel", channel_id=CHANNEL, until=time.time() + 3600) for r in mine]
    asyncio.run(_send(dep.bootstrap, dep.verdicts, docs))
    for r in mine:
        rec, _ = _wait_for(dep, dep.flags, seen, lambda x, v=r["video_id"]: x["video_id"] == v, 15.0)
        assert rec is not None and rec["status"] == "withdrawn" and rec["moderation"]["scope"] == "channel", \
            worker.log_tail()


def test_the_verdicts_topic_dumps_to_a_file_detector_train_reads(moderated, tmp_path):
    import os
    import subprocess
    import sys

    dep = moderated["dep"]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": dep.bootstrap}
    out = {}
    for name, topic in (("verdicts", dep.verdicts), ("flags", dep.flags)):
        path = tmp_path / f"{name}.jsonl"
        done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "dump", topic, "--output", str(path),
                               "--timeout", "2"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        out[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert out["verdicts"] and all("verdict" in v for v in out["verdicts"])  # the not-JSON one is skipped
    assert len(out["flags"]) >= len(moderated["flags"])
    done = subprocess.run([sys.executable, "-m", "training.cli", "verdicts", "--verdicts",
                           str(tmp_path / "verdicts.jsonl"), "--flags", str(tmp_path / "flags.jsonl")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    judged = int(done.stdout.split(" judged flags")[0])
    assert judged >= 1 and "that are no verdict" in done.stdout and "judged precision" in done.stdout


def test_an_allowlist_holds_when_its_partition_moves_to_another_worker(kafka_bootstrap, redis_url, tmp_path):
    """Two workers; the one that owns an allowlisted video is SIGKILLed; the survivor takes its
    partitions (a rebalance) and still never flags the video."""
    data = simulate(24, seed=SEED + 1)
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    workers = [WorkerProcess(dep, tmp_path), WorkerProcess(dep, tmp_path)]
    try:
        for w in workers:
            w.wait_ready()
        dep.produce(_items(data, {}))
        workers[0].wait_drained()
        standing = _standing(_docs(dep, dep.flags, idle_s=1.0))
        assert standing, "the simulated week must leave a standing flag"
        target = standing[sorted(standing)[0]]
        seen = _docs(dep, dep.flags)
        asyncio.run(_send(dep.bootstrap, dep.verdicts, [_verdict(target, scope="video")]))
        rec, _ = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == target["video_id"], 15.0)
        assert rec is not None and rec["status"] == "withdrawn"
        # the owner of the video's partition dies; the other worker is assigned everything
        r = redis.Redis.from_url(redis_url)
        cell = r.getrange(keys.window(dep.run_id, target["video_id"]), 16, 19)  # windows.lua cell 4
        r.close()
        label = f'partition="{int.from_bytes(cell, "big")}"'
        owners = [i for i, w in enumerate(workers)
                  if any(m.startswith("detector_consumer_lag_messages{") and label in m for m in w.metrics())]
        assert len(owners) == 1, owners
        owner = owners[0]
        survivor = workers[1 - owner]
        workers[owner].terminate(signal.SIGKILL)
        seen = _docs(dep, dep.flags)
        last_ts = float((data.start_hour + data.counts.shape[-1]) * 3600)
        burst = [{"video_id": target["video_id"], "ts": last_ts + 60 + k, "likes": 5000} for k in range(10)]
        dep.produce([(e["video_id"], json.dumps(e).encode()) for e in burst])
        survivor.wait_drained(timeout_s=120)
        flagged, _ = _wait_for(dep, dep.flags, seen, lambda r: r["video_id"] == target["video_id"], 3.0)
        assert flagged is None, f"an allowlisted video was flagged after the rebalance: {flagged}"
        assert survivor.metrics()["detector_moderation_suppressed_total"] >= 1, survivor.log_tail()
    finally:
        for w in workers:
            w.terminate()
