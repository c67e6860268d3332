"""Scoring in a child process gives the same answers as in the worker, and a child that dies
(SIGKILL, for real) costs one batch's speed, not its answers."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
from test_malloc_policy import PAGES_PER_BATCH, faults_per_batch

from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.dev.simulate import simulate
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact
from stream_detector.scoring import Scorer
from stream_detector.worker.score_process import ScoringProcess


def _same(a, b) -> None:
    assert [v.video_id for v in a] == [v.video_id for v in b]
    for x, y in zip(a, b, strict=True):
        assert x.score == y.score and x.flagged == y.flagged and x.explanation == y.explanation
        assert [w.to_dict() for w in x.windows] == [w.to_dict() for w in y.windows]
        np.testing.assert_array_equal(x.hour_probability, y.hour_probability)
        assert x.end_hour == y.end_hour and x.detail.start_hour == y.detail.start_hour
        for name in ("counts", "evidence", "contribution", "model_contribution", "metrics", "baseline",
                     "history", "age", "quiet"):  # what the decision explains and relabels from
            np.testing.assert_array_equal(getattr(x.detail, name), getattr(y.detail, name), err_msg=name)


@pytest.mark.asyncio
async def test_child_process_scores_exactly_like_the_worker_and_survives_a_kill():
    scorer = Scorer(ModelArtifact.load(DEFAULT_MODEL_PATH))
    series = list(simulate(24, seed=4, hours=168).iter_series())
    metrics = Metrics()
    proc = ScoringProcess(metrics)
    try:
        here = scorer.score(series)
        _same(await proc.score(scorer, series), here)
        assert any(v.flagged for v in here) and not all(v.flagged for v in here)
        # another threshold is another scorer in the child, not the cached one
        strict = Scorer(scorer.model, threshold=0.99)
        _same(await proc.score(strict, series), strict.score(series))
        # the hour detail comes back only where asked for, or where an hour reaches the floor
        floor = float(np.median([v.score for v in here]))
        asked = frozenset({here[0].video_id})
        slim = await proc.score(scorer, series, keep_ids=asked, detail_floor=floor)
        kept = [v.video_id in asked or v.hour_probability.max() >= floor for v in here]
        assert [v.detail is not None for v in slim] == kept and 0 < sum(kept) < len(kept)
        _same([v for v, k in zip(slim, kept, strict=True) if k], [v for v, k in zip(here, kept, strict=True) if k])
        for v, ref in zip(slim, here, strict=True):
            assert v.score == ref.score and v.explanation == ref.explanation
            np.testing.assert_array_equal(v.hour_probability, ref.hour_probability)

        (child,) = proc._pool._processes.values()  # noqa: SLF001 - the real child, to kill it
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        _same(await proc.score(scorer, series), here)  # scored in the worker instead
        assert metrics.internal_errors.labels(stage="scoring_process")._value.get() == 1
        assert proc.restarts == 1
        _same(await proc.score(scorer, series), here)  # and a new child takes over
        assert proc._pool is not None and all(p.pid != child.pid for p in proc._pool._processes.values())
    finally:
        await proc.stop()


@pytest.mark.asyncio
async def test_a_cadence_child_runs_at_a_lower_cpu_priority():
    scorer = Scorer(ModelArtifact.load(DEFAULT_MODEL_PATH))
    low, normal = ScoringProcess(Metrics(), niceness=3), ScoringProcess(Metrics())
    try:
        await low.warm(scorer)
        await normal.warm(scorer)
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        (child,) = low._pool._processes.values()  # noqa: SLF001 - the real child
        (other,) = normal._pool._processes.values()  # noqa: SLF001
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(mine + 3, 19)
        assert os.getpriority(os.PRIO_PROCESS, other.pid) == mine
    finally:
        await low.stop()
        await normal.stop()


@pytest.mark.asyncio
async def test_a_scoring_child_keeps_its_heap_so_batches_do_not_page_fault_afresh():
    kept, default = ScoringProcess(Metrics(), heap_keep_mb=256), ScoringProcess(Metrics())
    try:
        loop = asyncio.get_running_loop()
        with_policy = await loop.run_in_executor(await kept._ensure(), faults_per_batch)  # noqa: SLF001
        without = await loop.run_in_executor(await default._ensure(), faults_per_batch)  # noqa: SLF001
        assert with_policy < PAGES_PER_BATCH / 20 < PAGES_PER_BATCH / 2 < without
    finally:
        await kept.stop()
        await default.stop()


_PARENT = """
import asyncio, os, sys, time
from stream_detector.metrics import Metrics
from stream_detector.worker.score_process import ScoringProcess, _ready

async def main():
    proc = ScoringProcess(Metrics())
    pool = await proc._ensure()
    pid = await asyncio.get_running_loop().run_in_executor(pool, os.getpid)
    print(pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_a_scoring_child_ends_with_its_worker_killed_outright():
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)  # no cleanup runs in the worker
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the scoring child outlived its killed worker"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
