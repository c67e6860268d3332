"""The event clock of each owned partition: how far its event time has got, and which event
hours are closed. One owner for what the worker knows of event time; the checkpoint persists
its watermarks, the ingest moves it, the scoring lanes read it.

Per partition:
- a robust **high mark**: the ``WATERMARK_QUANTILE`` of the last ``WATERMARK_EVENTS`` event
  times, so one event from a fast clock cannot move it, never below a resumed watermark;
- the **watermark**: high − allowed lateness (older events are late);
- the **open hour**: the event hour being filled; hours before it are closed and may be
  judged. It is *unknown* (``None``) until an event is consumed, a persisted watermark is
  resumed or a rebuild replays the partition: scoring then defers, it never judges with hour 0;
- **idle closure**: a partition with no events for a while closes its open hour once, so
  the last hours of a stream that stopped are judged too.
"""

from __future__ import annotations

import time

import numpy as np

WATERMARK_EVENTS = 2048  # recent event times per partition behind its watermark
WATERMARK_QUANTILE = 0.99  # one in a hundred of them may run ahead without moving it


class RecentTimes:
    """The last ``size`` event times of a partition (a ring) and their quantile, computed once
    per change: the consume loop asks for it twice per slice of every batch."""

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, dtype=np.float64)
        self.count = 0  # values held (<= size)
        self.pos = 0  # where the next one goes
        self._quantile: tuple[float, float] | None = None  # (q, value) of the ring as it is

    def extend(self, ts: np.ndarray) -> None:
        size = len(self.values)
        if len(ts) >= size:
            self.values[:] = ts[-size:]
            self.pos, self.count = 0, size
        else:
            end = self.pos + len(ts)
            if end <= size:
                self.values[self.pos:end] = ts
            else:
                split = size - self.pos
                self.values[self.pos:] = ts[:split]
                self.values[: end - size] = ts[split:]
            self.pos = end % size
            self.count = min(size, self.count + len(ts))
        self._quantile = None

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        if self._quantile is None or self._quantile[0] != q:
            self._quantile = (q, float(np.quantile(self.values[: self.count], q)))
        return self._quantile[1]


class EventClock:
    def __init__(self, allowed_lateness_s: float) -> None:
        self.lateness = allowed_lateness_s
        self.watermark: dict[int, float] = {}
        self.high: dict[int, float] = {}
        self._open: dict[int, int] = {}
        self._recent: dict[int, RecentTimes] = {}
        self._last_event: dict[int, float] = {}  # monotonic time of a partition's last valid event
        self._idle_closed: set[int] = set()

    # -- event time ------------------------------------------------------------------------
    def robust_high(self, partition: int, batch_ts: np.ndarray | None = None) -> float:
        """The partition's high mark after adding ``batch_ts``, never below the watermark +
        lateness."""
        ring = self._recent.get(partition)
        if ring is None:
            ring = self._recent[partition] = RecentTimes(WATERMARK_EVENTS)
        if batch_ts is not None and len(batch_ts):
            ring.extend(np.asarray(batch_ts, dtype=np.float64))
            self._last_event[partition] = time.monotonic()
        floor = self.watermark.get(partition, 0.0) + self.lateness
        q = ring.quantile(WATERMARK_QUANTILE)
        return floor if q is None else max(floor, q)

    def advance(self, partition: int, high: float) -> None:
        """Event time has reached ``high`` in the partition (what is written, never ahead)."""
        self.watermark[partition] = max(self.watermark.get(partition, 0.0), high - self.lateness)
        self.high[partition] = max(self.high.get(partition, 0.0), high)

    def resume(self, partition: int, watermark: float) -> None:
        """A persisted watermark: event time (and the open hour, if unknown) as it was left."""
        self.watermark[partition] = max(self.watermark.get(partition, 0.0), watermark)
        high = self.watermark[partition] + self.lateness
        self.high[partition] = max(self.high.get(partition, 0.0), high)
        self._open.setdefault(partition, int(high // 3600))

    # -- closed hours ------------------------------------------------------------------------
    def open_hour(self, partition: int) -> int | None:
        """The event hour being filled (hours before it are closed); None while unknown."""
        return self._open.get(partition)

    def hours_to_close(self, partition: int) -> tuple[int, int]:
        """(open hour now, open hour once the high mark is taken): equal when nothing closes.
        An unknown clock starts at the high mark (nothing closes by becoming known)."""
        new = int(self.high.get(partition, 0.0) // 3600)
        old = self._open.get(partition)
        if old is None:
            old = new
        return old, max(old, new)

    def set_open(self, opened: dict[int, int]) -> dict[int, int | None]:
        """Move partitions' open hours (events came: an idle closure no longer holds); returns
        what they were, for ``restore`` if the write that goes with the move fails."""
        before = {p: self._open.get(p) for p in opened}
        self._open.update(opened)
        self._idle_closed.difference_update(opened)
        return before

    def restore(self, before: dict[int, int | None]) -> None:
        for p, hour in before.items():
            if hour is None:
                self._open.pop(p, None)
            else:
                self._open[p] = hour

    def start_from_high(self, partition: int) -> None:
        """A partition found lost at assignment, its events replayed: its clock opens at their
        high mark, as if they had just been consumed (a stream that stays quiet then closes it)."""
        self.advance(partition, self.robust_high(partition))
        self._open[partition] = int(self.high[partition] // 3600)
        self._last_event[partition] = time.monotonic()

    def idle_for(self, partition: int, now: float) -> float | None:
        """Seconds since the partition's last event, or None when it has no open hour to close
        (unknown clock, never an event, or closed for idleness already)."""
        last = self._last_event.get(partition)
        if last is None or partition in self._idle_closed or partition not in self._open:
            return None
        return now - last

    def close_idle(self, partition: int, confirm_hours: int) -> tuple[int, int]:
        """Close the open hour and the ``confirm_hours`` after it, once; returns (old, new)."""
        old = self._open[partition]
        new = old + 1 + confirm_hours
        self._open[partition] = new
        self._idle_closed.add(partition)
        return old, new

    def forget(self, partition: int) -> None:
        """A partition this worker no longer owns."""
        for d in (self.watermark, self.high, self._open, self._recent, self._last_event):
            d.pop(partition, None)
        self._idle_closed.discard(partition)
