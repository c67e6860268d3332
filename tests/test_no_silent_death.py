"""No silent death: a worker that cannot do its job says so, and one bad video costs only itself.

Real worker processes against the real broker and Redis; faults are injected from outside
(``tests/fault_injection/sitecustomize.py``, on the worker's ``PYTHONPATH``): the functions the
loops call raise real exceptions, nothing of the loops is replaced.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stream_detector.dev.simulate import simulate
from tests.harness import ROOT, Deployment, WorkerProcess
from tests.test_service import _event_items, _expected_hours, _final_scores, _windows

INJECT = Path(__file__).resolve().parent / "fault_injection"
POISON = "poison-"


def _with_fault(dep: Deployment, fault: str, **env: str) -> Deployment:
    return Deployment(dep.bootstrap, dep.redis_url, run_id=dep.run_id, partitions=dep.partitions,
                      extra_env={"PYTHONPATH": f"{INJECT}:{ROOT}", "SD_INJECT_FAULT": fault, **env})


def _assert_windows_exact(redis_url: str, dep: Deployment, data) -> None:
    windows = _windows(redis_url, dep.run_id, data.video_ids)
    expected = _expected_hours(data)
    for vid in data.video_ids:
        got, want = windows[vid], expected[vid]
        first = data.start_hour - got.start_hour
        aligned = np.zeros_like(want)
        for t in range(want.shape[1]):
            if 0 <= first + t < got.hours:
                aligned[:, t] = got.counts[:, first + t]
        assert np.array_equal(aligned, want), f"{vid}: window counts differ from what was produced"


def test_a_video_whose_scoring_raises_is_set_aside_and_every_other_video_is_judged(kafka_bootstrap, redis_url,
                                                                                   tmp_path):
    """Today's zombie, from the outside: one video whose scoring always raises (a poison in the
    data). Before: the lane died, the worker crash-looped or stayed 'healthy' scoring nothing.
    Now: the rest of each batch is judged, the video is tried 3 times, then set aside with its
    reason and traceback (/quarantine, /score, metrics), and the worker never stops."""
    data = simulate(40, seed=7)
    items = list(_event_items(data))
    template = data.video_ids[0]
    poison = [(POISON + "1", value.replace(template.encode(), (POISON + "1").encode()))
              for key, value in items if key == template]
    items = sorted(items + poison, key=lambda kv: json.loads(kv[1])["ts"])
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    worker = WorkerProcess(_with_fault(dep, f"poison:{POISON}", DETECTOR_SCORING_RETRY_SECONDS="0.3"), tmp_path)
    try:
        worker.wait_ready()
        dep.produce(items)
        worker.wait_drained(timeout_s=180)  # the poison's retries end: set aside, nothing left due
        assert worker.proc.poll() is None, worker.log_tail()
        assert worker.get("/healthz")[0] == 200 and worker.get("/readyz")[0] == 200
        status, listing = worker.get_json("/quarantine")
        assert status == 200 and listing["count"] == 1 and listing["set_aside"] == 1, listing
        entry = listing["videos"][0]
        assert entry["video_id"] == POISON + "1" and entry["attempts"] == 3
        assert entry["reason"] == "KeyError: 'decay_violation'"
        assert "Traceback" in entry["traceback"] and "score_windows" in entry["traceback"]
        m = worker.metrics()
        assert m['detector_scoring_failures_total{outcome="retry"}'] == 2
        assert m['detector_scoring_failures_total{outcome="set_aside"}'] == 1
        status, doc = worker.get_json(f"/score/{POISON}1")
        assert status == 200 and doc["quarantine"]["attempts"] == 3
        scores = _final_scores(redis_url, dep.run_id, data.video_ids)
        assert sorted(scores) == sorted(data.video_ids), "every other video was judged"
        flags = {json.loads(r.value)["video_id"] for r in dep.read_topic(dep.flags, idle_s=2.0)}
        fakes = {v for i, v in enumerate(data.video_ids) if data.patterns_of(i)}
        assert len(flags & fakes) >= 0.7 * len(fakes), "detection goes on beside the poison"
        log = worker.log_path.read_text()
        assert f"scoring failed video={POISON}1" in log and "traceback=" in log
    finally:
        assert worker.terminate() == 0


LOOPS = {
    # fault: what the worker says it died of
    "consume:2": "consume: RuntimeError: injected fault",
    "cadence:4": "scoring lane cadence-",
    "immediate:3": "scoring lane immediate: RuntimeError: injected fault",
    "probe:1": "broker probe: RuntimeError: injected fault",
    "verdicts:3": "verdicts: RuntimeError: injected fault",
    "accounts:3": "scoring lane accounts: RuntimeError: injected fault",
    # every video fails: not a poison video but a broken scorer, which must not set the whole
    # population aside
    "poison:v": "BrokenScoring: 8 videos in a row failed to score",
}


@pytest.mark.parametrize("fault", list(LOOPS))
def test_a_loop_that_dies_ends_the_worker_unhealthy_and_a_restart_loses_nothing(kafka_bootstrap, redis_url,
                                                                                tmp_path, fault):
    data = simulate(20, seed=11)
    items = list(_event_items(data))
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    # batches of at most 2,000 events: the fault meets a stream in progress (a second write of
    # the consume loop, say) even when the whole feed is in the topic before the worker is
    # assigned, as on a slow start; one batch of everything would never make a second write
    worker = WorkerProcess(_with_fault(dep, fault, DETECTOR_CONSUME_MAX_RECORDS="2000"), tmp_path)
    # fed while the loop runs, so that the fault meets a stream in progress
    feeder = threading.Thread(target=dep.produce, args=(items,), kwargs={"rate": 2000.0}, daemon=True)
    feeder.start()
    healthy_after_failure = []
    t0 = time.monotonic()
    while worker.proc.poll() is None and time.monotonic() - t0 < 60:
        failed_before = "level=ERROR logger=stream_detector.detector" in worker.log_path.read_text(errors="replace")
        try:
            status = worker.get("/healthz")[0]
            ready = worker.get("/readyz")[0]
        except OSError:
            status = ready = None
        if failed_before and (status == 200 or ready == 200):
            healthy_after_failure.append((round(time.monotonic() - t0, 2), status, ready))
        time.sleep(0.1)
    code = worker.proc.poll()
    log = worker.log_tail(60)
    worker.terminate()
    assert code is not None and code != 0, f"the worker did not end within 60 s of a dead {LOOPS[fault]} loop:\n{log}"
    stopped = [line for line in log.splitlines() if "the worker stopped after a failure: " in line]
    assert stopped and LOOPS[fault] in stopped[0], log
    assert not healthy_after_failure, f"healthy or ready after the loop died: {healthy_after_failure}"
    feeder.join(timeout=60)
    # restarted without the fault: every event is in the windows once, every video judged
    again = WorkerProcess(dep, tmp_path)
    try:
        again.wait_ready()
        again.wait_drained(timeout_s=120)
        _assert_windows_exact(redis_url, dep, data)
        assert sorted(_final_scores(redis_url, dep.run_id, data.video_ids)) == sorted(data.video_ids)
    finally:
        assert again.terminate() == 0


def test_the_one_retry_policy_doubles_up_to_its_cap_and_a_success_resets_it() -> None:
    """Dependency calls, scoring lanes and the registry follower retry with this policy."""
    import asyncio

    from stream_detector.dependencies import Backoff

    backoff = Backoff(first_s=0.001, max_s=0.004)
    delays = []

    async def fail_five_times() -> None:
        for _ in range(5):
            delays.append(backoff.delay)
            await backoff.sleep()

    asyncio.run(fail_five_times())
    assert delays == [0.001, 0.002, 0.004, 0.004, 0.004]
    assert backoff.failures == 5
    backoff.reset()
    assert (backoff.delay, backoff.failures) == (0.001, 0)
