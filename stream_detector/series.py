"""Hourly engagement series: the one shape every part of the product speaks.

The simulator produces it, the offline CSV reader aggregates raw rows into it, the Redis
window store decodes into it, and the scoring core consumes it. Keeping one type means
training and serving cannot drift apart on how a window looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METRICS: tuple[str, ...] = ("views", "likes", "comments", "shares")
"""Metric channels, in this fixed order everywhere (arrays, Redis layout, ONNX input)."""

SECONDS_PER_HOUR = 3600


@dataclass
class HourlySeries:
    """Per-hour counts of one video.

    ``counts[m, t]`` is the number of ``METRICS[m]`` events in the UTC hour
    ``start_hour + t`` (hours since the Unix epoch). Hours with no events are 0.
    """

    video_id: str
    start_hour: int
    counts: np.ndarray  # shape (4, T), float64, non-negative
    published_hour: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.float64)
        if self.counts.ndim != 2 or self.counts.shape[0] != len(METRICS):
            raise ValueError(f"counts must have shape (4, T), got {self.counts.shape}")

    @property
    def hours(self) -> int:
        return int(self.counts.shape[1])

    @property
    def end_hour(self) -> int:
        """Last hour covered (inclusive)."""
        return self.start_hour + self.hours - 1

    def last(self, window: int) -> HourlySeries:
        """The trailing ``window`` hours, left-padded with zeros if the series is shorter."""
        t = self.hours
        if t >= window:
            counts = self.counts[:, t - window :]
        else:
            counts = np.zeros((len(METRICS), window))
            counts[:, window - t :] = self.counts
        return HourlySeries(
            self.video_id, self.end_hour - window + 1, counts, self.published_hour, self.meta
        )


def hour_of(epoch_seconds: float) -> int:
    return int(epoch_seconds // SECONDS_PER_HOUR)


def hour_start_iso(hour: int) -> str:
    """ISO-8601 UTC timestamp of the start of an epoch hour, e.g. '2026-11-25T03:00:00Z'."""
    return np.datetime64(int(hour) * SECONDS_PER_HOUR, "s").astype(str) + "Z"
