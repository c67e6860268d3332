"""Scoring in a child process: the consume loop keeps its interpreter to itself.

Scoring is numpy and onnxruntime on (N, 4, 168) windows: many array operations of a few
tens of microseconds each, every one taking the GIL back. In a thread of the worker process
it slows the consume loop down and is slowed down by it (bench/sustained.py: the scoring
thread's wall time per video was 3.5x its cost alone). A child process scores on its own core
instead. A batch travels there as a ``WindowBatch`` (its closed windows in one array of the
stored uint32 counts, 2.7 KB a video) and comes back as a ``ScoredBatch`` (each per-hour field stacked into one array):
a dozen buffers instead of thousands of small objects to pickle and unpickle, which in the
worker holds the consume loop's GIL. The hour detail (~30 KB a video) comes back only for the
videos whose decision can read it (``StreamDecision.uses_detail``, or an hour at or above its
``detail_floor``); the others come back with ``detail=None``.

The child is started with ``spawn`` (never ``fork``: the worker has threads) on the first
batch, loads each model once from the artifact's bytes (cached by sha256, the last three),
and scores with the same ``Scorer`` as everything else. If it dies, the batch is scored in a
thread of the worker instead, the death is counted (``detector_internal_errors_total{stage=
"scoring_process"}``) and a new child is started for the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from collections import OrderedDict
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass, fields

import numpy as np

from stream_detector import malloc_policy
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact
from stream_detector.scoring import FlaggedWindow, HourDetail, Scorer, VideoScore
from stream_detector.series import HourlySeries

log = logging.getLogger("stream_detector.score_process")

_CACHE_SIZE = 3
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_scorers: OrderedDict[tuple[str, float], Scorer] = OrderedDict()  # in the child only


_DETAIL_ARRAYS = tuple(f.name for f in fields(HourDetail) if f.name != "start_hour")


@dataclass
class ScoredBatch:
    """A batch's ``VideoScore`` objects as stacked arrays plus per-video scalars (see above)."""

    video_ids: list[str]
    scores: list[float]
    flagged: list[bool]
    thresholds: list[float]
    end_hours: list[int]
    windows: list[list[FlaggedWindow]]
    explanations: list[str]
    hour_probability: np.ndarray  # (N, W)
    detail_rows: list[int]  # per video: its row in ``details``, -1 when its detail stayed behind
    detail_starts: list[int]
    details: dict[str, np.ndarray | None]  # HourDetail field -> (kept, ...) stacked; None: not computed

    @classmethod
    def pack(cls, scores: list[VideoScore], keep: list[bool] | None = None) -> ScoredBatch:
        """``Scorer.score``'s output (one window length, every video with its detail); the
        detail travels for the videos ``keep`` marks (default: all)."""
        keep = [True] * len(scores) if keep is None else keep
        kept = [vs.detail for vs, k in zip(scores, keep, strict=True) if k]
        if any(d is None for d in kept):
            raise ValueError("a kept video has no hour detail to send")
        stacked: dict[str, np.ndarray | None] = {}
        for name in _DETAIL_ARRAYS:
            parts = [getattr(d, name) for d in kept]
            stacked[name] = None if not parts or any(x is None for x in parts) else np.stack(parts)
        rows, n = [], 0
        for k in keep:
            rows.append(n if k else -1)
            n += bool(k)
        return cls([v.video_id for v in scores], [v.score for v in scores], [v.flagged for v in scores],
                   [v.threshold for v in scores], [v.end_hour for v in scores], [v.windows for v in scores],
                   [v.explanation for v in scores],
                   np.stack([v.hour_probability for v in scores]) if scores else np.zeros((0, 0)),
                   rows, [d.start_hour for d in kept], stacked)

    def unpack(self) -> list[VideoScore]:
        out = []
        for i, vid in enumerate(self.video_ids):
            row = self.detail_rows[i]
            detail = None if row < 0 else HourDetail(
                self.detail_starts[row], **{k: (a[row] if a is not None else None) for k, a in self.details.items()})
            out.append(VideoScore(vid, self.scores[i], self.flagged[i], self.thresholds[i], self.end_hours[i],
                                  self.windows[i], self.explanations[i], self.hour_probability[i], detail))
        return out


@dataclass
class WindowBatch:
    """The closed windows of a batch as one (N, 4, W) array: what scoring reads of each series
    (its trailing window), without each series' own objects to pickle."""

    video_ids: list[str]
    start_hours: list[int]
    published_hours: list[int | None]
    counts: np.ndarray  # (N, 4, W): the stored uint32 counts from the worker (float64 from series)

    @classmethod
    def of(cls, series: list[HourlySeries], window: int) -> WindowBatch:
        last = [s.last(window) for s in series]
        return cls([s.video_id for s in last], [s.start_hour for s in last], [s.published_hour for s in last],
                   np.stack([s.counts for s in last]) if last else np.zeros((0, 4, window)))

    def series(self) -> list[HourlySeries]:
        return [HourlySeries(v, self.start_hours[i], self.counts[i], self.published_hours[i])
                for i, v in enumerate(self.video_ids)]


def _score_in_child(sha: str, data: bytes, threshold: float, windows: WindowBatch,
                    keep_ids: frozenset[str] | None = None, detail_floor: float = 0.0) -> ScoredBatch:
    key = (sha, threshold)
    scorer = _scorers.get(key)
    if scorer is None:
        scorer = _scorers[key] = Scorer(ModelArtifact.from_bytes(data, f"<sha256 {sha[:12]}>"), threshold)
        while len(_scorers) > _CACHE_SIZE:
            _scorers.popitem(last=False)
    _scorers.move_to_end(key)
    scores = scorer.score_windows(windows.video_ids, windows.counts, np.asarray(windows.start_hours, dtype=np.int64),
                                  np.array([-1 if p is None else p for p in windows.published_hours], dtype=np.int64))
    keep = None if keep_ids is None else [vs.video_id in keep_ids or vs.score >= detail_floor for vs in scores]
    return ScoredBatch.pack(scores, keep)


def _child_init(niceness: int, worker_pid: int, heap_keep_mb: int = 0) -> None:
    """Runs first in the child. The child ends with its worker: a worker killed outright
    (SIGKILL, the OOM killer) must not leave scoring processes behind, idle and holding their
    memory (Linux's parent-death signal; the pool starts its child from the worker's main
    thread, whose end is the worker's). A cadence child yields the CPU to the consume loop
    and to the immediate path's child when an hour closure makes thousands of videos due. And
    a batch's temporaries reuse the heap's pages (``malloc_policy``)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the child outlives a killed worker
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker_pid:  # the worker died before the signal was armed
        os._exit(0)
    if niceness > 0:
        os.nice(niceness)
    malloc_policy.apply(heap_keep_mb)


def _ready() -> bool:
    """A first call that makes the pool start its child now (importing this module there
    imports the scoring core), so the first real batch does not wait for it."""
    return True


class ScoringProcess:
    """One child process that scores batches (see the module docstring)."""

    def __init__(self, metrics: Metrics, start_timeout_s: float = 60.0, niceness: int = 0,
                 heap_keep_mb: int = 0) -> None:
        self.metrics = metrics
        self.start_timeout_s = start_timeout_s
        self.niceness = niceness
        self.heap_keep_mb = heap_keep_mb
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    async def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_child_init,
                                       initargs=(self.niceness, os.getpid(), self.heap_keep_mb))
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(pool, _ready), self.start_timeout_s)
            self._pool = pool
            log.info("scoring process started")
        return self._pool

    async def warm(self, scorer: Scorer) -> None:
        """Start the child and load ``scorer``'s model there now, so the first batch (a spike's,
        for the immediate path's child) does not wait ~1-2 s for both."""
        await self.score(scorer, [])

    async def score(self, scorer: Scorer, series: list[HourlySeries] | WindowBatch, *,
                    keep_ids: frozenset[str] | None = None, detail_floor: float = 0.0) -> list[VideoScore]:
        """``scorer.score(series)``, in the child. With ``keep_ids``, the hour detail comes back
        only for those videos and for those with an hour probability >= ``detail_floor``."""
        model = scorer.model
        windows = series if isinstance(series, WindowBatch) else WindowBatch.of(series, scorer.window)
        if not model.data:  # an artifact built in memory without its bytes: score here
            return await asyncio.to_thread(scorer.score, windows.series())
        try:
            pool = await self._ensure()
            batch = await asyncio.get_running_loop().run_in_executor(
                pool, _score_in_child, model.sha256, model.data, scorer.threshold, windows, keep_ids, detail_floor)
            return batch.unpack()
        except (BrokenExecutor, TimeoutError, OSError) as exc:
            self.metrics.internal_errors.labels(stage="scoring_process").inc()
            log.error("scoring process failed (%s: %s); this batch is scored in the worker, a new process "
                      "starts for the next one", type(exc).__name__, exc)
            self._discard()
            self.restarts += 1
            return await asyncio.to_thread(scorer.score, windows.series())

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
