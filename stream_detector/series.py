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


def minute_iso(minute: int) -> str:
    """ISO-8601 UTC timestamp of the start of an epoch minute, e.g. '2026-11-25T03:07:00Z'."""
    return np.datetime64(int(minute) * 60, "s").astype(str) + "Z"


class InputError(ValueError):
    """An input file or row the offline tools cannot use; the message is one clear line."""


REQUIRED_COLUMNS = ("video_id", "ts", *METRICS)


def parse_time(value: str, *, what: str = "ts") -> float:
    """ISO-8601 (``Z`` or offset; naive means UTC) or epoch seconds -> epoch seconds."""
    from datetime import UTC, datetime

    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise InputError(f"unparsable {what} {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_csv(path: str) -> list[HourlySeries]:
    """Aggregate an engagement CSV (raw events up to hourly rows, any order) into hourly series.

    Columns: ``video_id,ts,views,likes,comments,shares`` and optional ``published_at``.
    Memory is bounded by videos x active hours, not by rows.
    """
    import csv

    per_video: dict[str, dict[int, list[float]]] = {}
    published: dict[str, int] = {}
    ts_cache: dict[str, int] = {}
    try:
        fh = open(path, newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path} is empty (expected a header row)") from None
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text") from None
        cols = [c.strip() for c in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(REQUIRED_COLUMNS)}[,published_at]"
            )
        i_vid, i_ts = cols.index("video_id"), cols.index("ts")
        i_m = [cols.index(m) for m in METRICS]
        i_pub = cols.index("published_at") if "published_at" in cols else -1
        line = 1
        try:
            for line, row in enumerate(reader, start=2):  # noqa: B007
                if not row:
                    continue
                vid = row[i_vid]
                if not vid:
                    raise InputError(f"{path}:{line}: empty video_id")
                ts = row[i_ts]
                hour = ts_cache.get(ts)
                if hour is None:
                    hour = ts_cache[ts] = hour_of(parse_time(ts))
                hours = per_video.get(vid)
                if hours is None:
                    hours = per_video[vid] = {}
                cell = hours.get(hour)
                if cell is None:
                    cell = hours[hour] = [0.0, 0.0, 0.0, 0.0]
                for k, idx in enumerate(i_m):
                    raw = row[idx]
                    if raw:
                        v = float(raw)
                        if v < 0 or v != v:
                            raise InputError(f"{path}:{line}: negative or NaN {METRICS[k]} {raw!r}")
                        cell[k] += v
                if i_pub >= 0 and vid not in published and row[i_pub]:
                    published[vid] = hour_of(parse_time(row[i_pub], what="published_at"))
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(path) else f"{path}:{line}: {msg}") from None
        except (ValueError, IndexError) as exc:
            raise InputError(f"{path}:{line}: bad row ({exc})") from None
        except UnicodeDecodeError:
            raise InputError(f"{path}:{line}: not UTF-8 text") from None
    out = []
    for vid, hours in per_video.items():
        first, last = min(hours), max(hours)
        counts = np.zeros((len(METRICS), last - first + 1))
        for h, cell in hours.items():
            counts[:, h - first] = cell
        out.append(HourlySeries(vid, first, counts, published.get(vid)))
    return out
