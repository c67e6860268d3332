"""Scoring in a child process: the consume loop keeps its interpreter to itself.

Scoring is numpy and onnxruntime on (N, 4, 168) windows: many array operations of a few
tens of microseconds each, every one taking the GIL back. In a thread of the worker process
it slows the consume loop down and is slowed down by it (bench/sustained.py: the scoring
thread's wall time per video was 3.5x its cost alone). A child process scores on its own core
instead; a batch travels there as its closed windows (~0.7 MB for 128 videos) and comes back
as a ``ScoredBatch``: each per-hour field of every video stacked into one array (a dozen
buffers instead of ~1,300 small arrays to pickle and unpickle, which in the worker costs the
consume loop's GIL), rebuilt into ``VideoScore`` objects viewing those arrays.

The child is started with ``spawn`` (never ``fork``: the worker has threads) on the first
batch, loads each model once from the artifact's bytes (cached by sha256, the last three),
and scores with the same ``Scorer`` as everything else. If it dies, the batch is scored in a
thread of the worker instead, the death is counted (``detector_internal_errors_total{stage=
"scoring_process"}``) and a new child is started for the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections import OrderedDict
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass, fields

import numpy as np

from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact
from stream_detector.scoring import FlaggedWindow, HourDetail, Scorer, VideoScore
from stream_detector.series import HourlySeries

log = logging.getLogger("stream_detector.score_process")

_CACHE_SIZE = 3
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
    detail_starts: list[int]
    details: dict[str, np.ndarray | None]  # HourDetail field -> (N, ...) stacked; None: not computed

    @classmethod
    def pack(cls, scores: list[VideoScore]) -> ScoredBatch:
        """``Scorer.score``'s output (one window length, every video with its detail)."""
        details = [vs.detail for vs in scores]
        if any(d is None for d in details):
            raise ValueError("a scored batch travels with every video's hour detail")
        stacked: dict[str, np.ndarray | None] = {}
        for name in _DETAIL_ARRAYS:
            parts = [getattr(d, name) for d in details]
            stacked[name] = None if not parts or any(x is None for x in parts) else np.stack(parts)
        return cls([v.video_id for v in scores], [v.score for v in scores], [v.flagged for v in scores],
                   [v.threshold for v in scores], [v.end_hour for v in scores], [v.windows for v in scores],
                   [v.explanation for v in scores],
                   np.stack([v.hour_probability for v in scores]) if scores else np.zeros((0, 0)),
                   [d.start_hour for d in details], stacked)

    def unpack(self) -> list[VideoScore]:
        out = []
        for i, vid in enumerate(self.video_ids):
            detail = HourDetail(self.detail_starts[i], **{k: (a[i] if a is not None else None)
                                                          for k, a in self.details.items()})
            out.append(VideoScore(vid, self.scores[i], self.flagged[i], self.thresholds[i], self.end_hours[i],
                                  self.windows[i], self.explanations[i], self.hour_probability[i], detail))
        return out


def _score_in_child(sha: str, data: bytes, threshold: float, series: list[HourlySeries]) -> ScoredBatch:
    key = (sha, threshold)
    scorer = _scorers.get(key)
    if scorer is None:
        scorer = _scorers[key] = Scorer(ModelArtifact.from_bytes(data, f"<sha256 {sha[:12]}>"), threshold)
        while len(_scorers) > _CACHE_SIZE:
            _scorers.popitem(last=False)
    _scorers.move_to_end(key)
    return ScoredBatch.pack(scorer.score(series))


def _ready() -> bool:
    """A first call that makes the pool start its child now (importing this module there
    imports the scoring core), so the first real batch does not wait for it."""
    return True


class ScoringProcess:
    """One child process that scores batches (see the module docstring)."""

    def __init__(self, metrics: Metrics, start_timeout_s: float = 60.0) -> None:
        self.metrics = metrics
        self.start_timeout_s = start_timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    async def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(pool, _ready), self.start_timeout_s)
            self._pool = pool
            log.info("scoring process started")
        return self._pool

    async def score(self, scorer: Scorer, series: list[HourlySeries]) -> list[VideoScore]:
        model = scorer.model
        if not model.data:  # an artifact built in memory without its bytes: score here
            return await asyncio.to_thread(scorer.score, series)
        try:
            pool = await self._ensure()
            batch = await asyncio.get_running_loop().run_in_executor(
                pool, _score_in_child, model.sha256, model.data, scorer.threshold, series)
            return batch.unpack()
        except (BrokenExecutor, TimeoutError, OSError) as exc:
            self.metrics.internal_errors.labels(stage="scoring_process").inc()
            log.error("scoring process failed (%s: %s); this batch is scored in the worker, a new process "
                      "starts for the next one", type(exc).__name__, exc)
            self._discard()
            self.restarts += 1
            return await asyncio.to_thread(scorer.score, series)

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
