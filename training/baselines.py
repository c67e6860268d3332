"""Baselines scored in the same run and table as our models.

- ``RollingZScore``: a robust z-score of each hour against the video's own centred rolling
  median and MAD, max over metrics (no training).
- ``IsolationForestBaseline``: scikit-learn's IsolationForest on the same per-hour feature
  vectors the models see, fitted on training hours.
Both expose ``fit(split)`` and ``hour_scores(split) -> (N, W)`` like our models.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest

from stream_detector.patterns import _rolling


class RollingZScore:
    name = "zscore"

    def __init__(self, window: int = 49) -> None:
        self.window = window

    def fit(self, split) -> RollingZScore:
        return self

    def hour_scores(self, split) -> np.ndarray:
        logc = np.log1p(split.data.counts)
        med = _rolling(logc, self.window, "median")
        mad = _rolling(np.abs(logc - med), self.window, "median")
        z = (logc - med) / (1.4826 * mad + 0.25)
        return (z.max(axis=1) * split.mask).astype(np.float64)


class IsolationForestBaseline:
    name = "isolation_forest"

    def __init__(self, seed: int = 0, max_rows: int = 200_000) -> None:
        self.seed = seed
        self.max_rows = max_rows
        self.forest: IsolationForest | None = None

    @staticmethod
    def _rows(split) -> np.ndarray:
        return split.x.transpose(0, 2, 1).reshape(-1, split.x.shape[1])

    def fit(self, split) -> IsolationForestBaseline:
        rows = self._rows(split)[split.mask.reshape(-1) > 0]
        rng = np.random.default_rng(self.seed)
        if len(rows) > self.max_rows:
            rows = rows[rng.choice(len(rows), self.max_rows, replace=False)]
        self.forest = IsolationForest(n_estimators=100, random_state=self.seed, n_jobs=1).fit(rows)
        return self

    def hour_scores(self, split) -> np.ndarray:
        assert self.forest is not None, "fit() first"
        s = -self.forest.score_samples(self._rows(split))
        return s.reshape(split.x.shape[0], split.x.shape[2]) * split.mask
