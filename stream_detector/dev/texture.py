"""Real-world hourly texture for the simulator's organic side.

Simulated organic engagement is smooth: Poisson-ish noise around a clean curve. Real
audiences are not: hour-to-hour swings far beyond counting noise, outages, holidays, bursts
that move everything together. This module cuts that texture out of real count series
(``real_series/`` beside this module, the Numenta Anomaly Benchmark, MIT) as hourly log-multipliers the
simulator applies to an organic rate.

The files are split into two disjoint pools so the held-out evaluation never sees the
texture training learned from: ``train`` (validation and calibration too) and ``test``. The
long taxi series is cut in time (first 60 % train, last 40 % test).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "real_series"

# file -> pool; "split" files are cut in time between the two pools
POOLS: dict[str, str] = {
    "nyc_taxi.csv": "split",
    "elb_request_count_8c0756.csv": "train",
    "ec2_network_in_257a54.csv": "train",
    "ec2_disk_write_bytes_1ef3de.csv": "train",
    "ec2_network_in_5abac7.csv": "test",
    "iio_us-east-1_i-a2eb1cd9_NetworkIn.csv": "test",
}
SPLIT_AT = 0.6
MAX_LOG_SWING = float(np.log(50.0))  # compress the wildest server series to audience scale


def _hourly(path: Path) -> np.ndarray:
    """Sum a (timestamp, value) series into whole hours, dropping the partial first/last."""
    ts, vals = [], []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            ts.append(datetime.fromisoformat(row["timestamp"]).timestamp())
            vals.append(float(row["value"]))
    t = np.asarray(ts)
    hours = ((t - t[0]) // 3600).astype(np.int64)
    return np.bincount(hours, weights=np.asarray(vals))[1:-1]


@lru_cache(maxsize=4)
def load_pool(pool: str) -> tuple[tuple[str, np.ndarray], ...]:
    """(name, hourly series) of one pool: ``train`` or ``test``."""
    if pool not in ("train", "test"):
        raise ValueError("pool must be 'train' or 'test'")
    out = []
    for name, where in POOLS.items():
        series = _hourly(DATA_DIR / name)
        if where == "split":
            cut = int(len(series) * SPLIT_AT)
            series = series[:cut] if pool == "train" else series[cut:]
        elif where != pool:
            continue
        out.append((name, series))
    return tuple(out)


def log_texture(segment: np.ndarray) -> np.ndarray:
    """Hourly counts -> centred log-multipliers, floored so a silent hour is a deep dip rather
    than minus infinity, and compressed to at most ``MAX_LOG_SWING`` either way."""
    x = np.asarray(segment, dtype=np.float64)
    floor = 0.02 * max(float(x.mean()), 1e-12) + 1e-12
    y = np.log(x + floor)
    y -= np.median(y)
    return np.clip(y, -MAX_LOG_SWING, MAX_LOG_SWING)


@dataclass
class RealTexture:
    """Samples texture rows of a given length from one pool of real series."""

    pool: str = "train"

    def __post_init__(self) -> None:
        self.series = load_pool(self.pool)
        lengths = np.array([len(s) for _, s in self.series], dtype=np.float64)
        self._p = lengths / lengths.sum()

    def sample(self, rng: np.random.Generator, n: int, hours: int) -> tuple[np.ndarray, list[str]]:
        """(n, hours) log-multipliers and the source name of each row. A series shorter than
        ``hours`` is extended by reflection, so it stays continuous."""
        rows = np.empty((n, hours))
        names = []
        for i in range(n):
            k = int(rng.choice(len(self.series), p=self._p))
            name, s = self.series[k]
            if len(s) < hours:
                reps = -(-hours // len(s)) + 1
                s = np.concatenate([s if j % 2 == 0 else s[::-1] for j in range(reps)])
            start = int(rng.integers(0, len(s) - hours + 1))
            rows[i] = log_texture(s[start : start + hours])
            names.append(name)
        return rows, names
