"""Evaluate what users get: the stream process as deployed, replayed in event time.

A worker does not score a finished week once. It sees minute-level events, keeps per-video
windows (168 closed-or-filling hours ending at the video's newest hour, plus a minute ring),
re-scores every changed video at its cadence, and publishes, updates or withdraws flags
through its decision process. Each re-scoring is one more chance to publish a false flag,
so quality must be measured on that process, not on one offline scoring.

``replay`` drives the real scoring core (``Scorer``) and the real decision process
(``stream_detector.decision``) over a simulated dataset's minute-level counts, exactly as
the worker would see them at a given cadence (in event minutes). ``stream_metrics`` turns
what was published into the numbers moderators care about: videos ever flagged (precision,
recall, FPR, by organic kind), flags per flagged video, time from the first fake event to
the first flag, pattern naming and hour localisation.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stream_detector.accounts import SUSPECT_P
from stream_detector.decision import Published, VideoDecisionState
from stream_detector.scoring import Scorer, VideoScore
from stream_detector.series import HourlySeries
from stream_detector.windows import MINUTE_SLOTS

MINUTES_PER_HOUR = 60


@dataclass
class StreamRun:
    """Everything the replayed stream published, per video."""

    published: list[list[Published]]
    scorings: int
    seconds: float
    step_minutes: int
    final: list[VideoScore | None] = field(default_factory=list)
    statistic: np.ndarray | None = None  # per video: highest confirmed hour probability seen
    burst: np.ndarray | None = None  # per video: highest immediate-path evidence seen
    hour_p: np.ndarray | None = None  # (N, T) per video hour: the highest probability a scoring gave it once confirmed
    # (N, T) per video hour: the event minute of the first scoring that found it suspicious once
    # confirmed (probability at least ``suspect``, when the worker notes it for the user level), -1 never
    suspect_at: np.ndarray | None = None
    suspect: float = SUSPECT_P  # the decision's Thresholds.suspect: the hour probability suspect_at used


def _windows(data, cum: np.ndarray, idx: np.ndarray, minute: int, window: int,
             last_active_hour: np.ndarray) -> list[HourlySeries]:
    """Windows of videos ``idx`` as the worker's Redis holds them at event minute ``minute``."""
    hour_now = minute // MINUTES_PER_HOUR
    out = []
    for i in idx.tolist():
        head = int(last_active_hour[i])
        lo = max(0, head - window + 1)
        counts = np.zeros((4, window))
        full = data.counts[i, :, lo:head]
        counts[:, window - 1 - full.shape[1] : window - 1] = full
        if head == hour_now:
            counts[:, -1] = cum[i, :, head, minute % MINUTES_PER_HOUR]
        else:
            counts[:, -1] = data.counts[i, :, head]
        # the minute ring: the MINUTE_SLOTS minutes ending at the newest minute with events
        ring = np.zeros((4, MINUTE_SLOTS), dtype=np.int64)
        m_hi = minute if head == hour_now else (head + 1) * MINUTES_PER_HOUR - 1
        per_min = np.diff(cum[i, :, head], axis=-1, prepend=0)
        m_lo = max(head * MINUTES_PER_HOUR, m_hi - MINUTE_SLOTS + 1)
        k = m_hi - m_lo + 1
        ring[:, MINUTE_SLOTS - k :] = per_min[:, m_lo % 60 : m_hi % 60 + 1]
        start = int(data.start_hour) + head - window + 1
        pub = int(data.published_hour[i])
        out.append(HourlySeries(data.video_ids[i], start, counts, pub,
                                {"minute_head": int(data.start_hour) * 60 + m_hi, "minute_counts": ring,
                                 "closed_through": int(data.start_hour) + hour_now - 1}))
    return out


def _closed(counts: np.ndarray, head: int) -> np.ndarray:
    """The video's closed hours before ``head`` within a window (what the burst path judges a
    minute ring against; the worker takes the same from the window it reads)."""
    return counts[:, max(0, head - 168) : head]


def replay(scorer: Scorer, decision, data, *, step_minutes: int = 10, batch: int = 512,
           chunk_minutes: int = 1, progress: Callable[[str], None] | None = None) -> StreamRun:
    """Replay ``data`` minute by minute, as a worker would see it.

    Every ``step_minutes`` (the cadence, in event minutes): videos with new events are checked
    by the immediate path (minute ring); when the event hour advances, every video whose head
    hour (or the hour after it) just closed is scored on its closed window and the decision
    process runs, exactly as in the worker (``decision.closed_window``). ``chunk_minutes``:
    organic counts arrive pre-aggregated in chunks of that many minutes."""
    from stream_detector.decision import closed_window
    from stream_detector.patterns import BurstDetector

    t0 = time.perf_counter()
    n, _, hours = data.counts.shape
    per_minute = data.minute_counts(chunk_minutes)  # (N, 4, T, 60)
    cum = np.cumsum(per_minute, axis=-1, dtype=np.int64)
    active_minute = per_minute.any(axis=1).reshape(n, hours * MINUTES_PER_HOUR)
    hour_active = data.counts.sum(axis=1) > 0
    del per_minute
    states: list[VideoDecisionState | None] = [None] * n
    published: list[list[Published]] = [[] for _ in range(n)]
    final: list[VideoScore | None] = [None] * n
    last_closed: list[VideoScore | None] = [None] * n
    last_active_hour = np.full(n, -1, dtype=np.int64)
    statistic = np.zeros(n)
    burst_max = np.zeros(n)
    hour_p = np.zeros((n, hours))
    suspect_at = np.full((n, hours), -1, dtype=np.int64)
    bursts = BurstDetector()
    thresholds = getattr(decision, "thresholds", None)  # LegacyDecision has none
    confirm = getattr(thresholds, "confirm_hours", 1)
    suspect = getattr(thresholds, "suspect", SUSPECT_P)
    scorings = 0
    total = hours * MINUTES_PER_HOUR
    prev = -1
    prev_hour = 0
    base = int(data.start_hour)

    def run_decisions(idx: np.ndarray, minute: int, now_hour: int, burst_of: dict | None = None) -> None:
        nonlocal scorings
        for b in range(0, idx.size, batch):
            part = idx[b : b + batch]
            raw = _windows(data, cum, part, minute, scorer.window, last_active_hour)
            closed = [closed_window(s, base + now_hour, confirm) for s in raw]
            todo = [k for k, s in enumerate(closed) if s.hours > 0]
            scores = scorer.score([closed[k] for k in todo]) if todo else []
            scorings += len(scores)
            for k, vs in zip(todo, scores, strict=True):
                i = int(part[k])
                burst = burst_of.get(i) if burst_of else None
                if hasattr(decision, "statistic"):
                    statistic[i] = max(statistic[i], decision.statistic(vs))
                if burst is not None:
                    burst_max[i] = max(burst_max[i], burst.evidence)
                # confirmed hours only (the last closed one awaits the next), as the worker notes
                # them for the user level (AccountLoop.note_suspicion)
                lo = vs.start_hour - base
                a, b = max(lo, 0), min(lo + len(vs.hour_probability) - 1, hours)
                if b > a:
                    np.maximum(hour_p[i, a:b], vs.hour_probability[a - lo : b - lo], out=hour_p[i, a:b])
                    newly = (hour_p[i, a:b] >= suspect) & (suspect_at[i, a:b] < 0)
                    suspect_at[i, a:b][newly] = minute
                state, action = decision.decide(states[i], vs, now_hour=base + now_hour, burst=burst)
                states[i] = state
                final[i] = last_closed[i] = vs
                if action is not None:
                    published[i].append(action.at(minute))

    for minute in range(step_minutes - 1, total + step_minutes - 1, step_minutes):
        minute = min(minute, total - 1)
        changed_any = active_minute[:, prev + 1 : minute + 1]
        changed = np.flatnonzero(changed_any.any(axis=1))
        if changed.size:
            last = (minute - prev - 1) - np.argmax(changed_any[changed][:, ::-1], axis=1)
            last_active_hour[changed] = (prev + 1 + last) // MINUTES_PER_HOUR
        prev = minute
        hour_now = minute // MINUTES_PER_HOUR
        if hour_now > prev_hour:  # event time crossed an hour boundary: closures
            lo = max(0, prev_hour - confirm)
            closing = np.flatnonzero(hour_active[:, lo:hour_now].any(axis=1))
            run_decisions(closing, minute, hour_now)
            prev_hour = hour_now
        # the immediate path: minute rings of the videos that just changed
        fired: dict[int, object] = {}
        for i in changed.tolist():
            head = int(last_active_hour[i])
            if head != hour_now:
                continue
            m_in = minute % MINUTES_PER_HOUR
            per = np.diff(cum[i, :, head, : m_in + 1], axis=-1, prepend=0)
            ring = per[:, -MINUTE_SLOTS:]
            burst = bursts.judge(ring, _closed(data.counts[i], head), (base + head) * MINUTES_PER_HOUR + m_in)
            if decision.fires(burst):
                fired[i] = burst
        if fired:
            run_decisions(np.array(sorted(fired)), minute, hour_now, fired)
        if progress and minute % (24 * MINUTES_PER_HOUR) < step_minutes:
            progress(f"stream replay: day {minute // (24 * MINUTES_PER_HOUR) + 1}, {scorings} scorings")
    return StreamRun(published, scorings, time.perf_counter() - t0, step_minutes, final, statistic, burst_max, hour_p,
                     suspect_at, suspect)


def _dilate(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[1:] |= x[:-1]
    out[:-1] |= x[1:]
    return out


def stream_metrics(run: StreamRun, data) -> dict:
    """Ever-flagged quality of a replayed stream, and what moderators see per flagged video."""
    labels = np.asarray(data.label, dtype=bool)
    kinds = np.asarray(data.organic_kind)
    n = len(labels)
    ever = np.array([bool(p) for p in run.published])
    standing = np.array([bool(p) and p[-1].status != "withdrawn" for p in run.published])
    tp, fp = int((ever & labels).sum()), int((ever & ~labels).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(int(labels.sum()), 1)
    out: dict = {
        "videos": n,
        "fakes": int(labels.sum()),
        "scorings": run.scorings,
        "step_minutes": run.step_minutes,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "fpr": fp / max(int((~labels).sum()), 1),
        "fpr_standing": int((standing & ~labels).sum()) / max(int((~labels).sum()), 1),
        "recall_standing": int((standing & labels).sum()) / max(int(labels.sum()), 1),
        "withdrawn_false": int((ever & ~standing & ~labels).sum()),
        "withdrawn_true": int((ever & ~standing & labels).sum()),
    }
    counts = [len(p) for p in run.published if p]
    out["flags_per_flagged_video"] = float(np.mean(counts)) if counts else 0.0
    out["max_flags_per_video"] = int(max(counts)) if counts else 0
    from stream_detector.dev.simulate import ORGANIC_KINDS, PATTERNS

    textured = data.textured
    out["fpr_by_kind"] = {}
    for k in [*ORGANIC_KINDS, *sorted(set(kinds.tolist()) - set(ORGANIC_KINDS))]:  # look-alikes too (dev/market.py)
        sel = (kinds == k) & ~labels
        if sel.any():
            out["fpr_by_kind"][k] = float(ever[sel].mean())
    for name, sel in (("textured", textured & ~labels), ("plain", ~textured & ~labels)):
        if sel.any():
            out["fpr_by_kind"][f"any {name}"] = float(ever[sel].mean())
    # time from the first fake event to the first flag, in event hours (caught fakes)
    delays: dict[str, list[float]] = {p: [] for p in PATTERNS}
    named_any: dict[str, list[bool]] = {p: [] for p in PATTERNS}
    named_exact: dict[str, list[bool]] = {p: [] for p in PATTERNS}
    near = total = 0
    flagged_hours_true = flagged_hours = 0
    minute_fake_start = _first_fake_minute(data)
    for i in np.flatnonzero(ever & labels):
        pubs = run.published[i]
        first = pubs[0]
        primary = data.pattern[i]
        if primary and minute_fake_start[i] >= 0:
            delays.setdefault(primary, []).append(max(0.0, (first.minute - minute_fake_start[i]) / MINUTES_PER_HOUR))
        final_windows = pubs[-1].windows
        names = {p for w in final_windows for p in w.patterns}
        if primary and len(data.patterns_of(i)) == 1:
            named_any.setdefault(primary, []).append(primary in names)
            named_exact.setdefault(primary, []).append(names == {primary})
        hot = np.zeros(data.hours, dtype=bool)
        for w in final_windows:
            a, b = w.start_hour - int(data.start_hour), w.end_hour - int(data.start_hour)
            hot[max(a, 0) : max(b, 0)] = True
        fake = np.asarray(data.hour_fake[i], dtype=bool)
        near += int((fake & _dilate(hot)).sum())
        total += int(fake.sum())
        flagged_hours += int(hot.sum())
        flagged_hours_true += int((hot & _dilate(fake)).sum())
    out["hours_localised"] = near / max(total, 1)
    out["flagged_hour_precision"] = flagged_hours_true / max(flagged_hours, 1)
    out["hours_to_first_flag_median"] = {p: (float(np.median(v)) if v else None) for p, v in delays.items()}
    all_delays = [d for v in delays.values() for d in v]
    out["hours_to_first_flag_median_all"] = float(np.median(all_delays)) if all_delays else None
    out["named_any"] = float(np.mean([x for v in named_any.values() for x in v] or [0.0]))
    out["named_exact"] = float(np.mean([x for v in named_exact.values() for x in v] or [0.0]))
    out["named_exact_by_pattern"] = {p: (float(np.mean(v)) if v else None) for p, v in named_exact.items()}
    out["recall_by_pattern"] = {}
    pattern = np.asarray(data.pattern)
    for p in PATTERNS:
        sel = (pattern == p) & labels
        if sel.any():
            out["recall_by_pattern"][p] = float(ever[sel].mean())
    if hasattr(data, "kind_of"):  # delivery kinds and look-alikes (dev/market.py)
        out.update(_by_kind_and_band(ever, labels, run, data))
    many = [len({p for w in pubs[-1].windows for p in w.patterns}) >= 3 for pubs in run.published if pubs]
    out["flagged_with_3plus_patterns"] = float(np.mean(many)) if many else 0.0
    return out


def _first_fake_minute(data) -> np.ndarray:
    """Event minute of each fake video's first fake hour start (-1 for organic)."""
    out = np.full(len(data), -1, dtype=np.int64)
    for i in range(len(data)):
        hours = np.flatnonzero(data.hour_fake[i])
        if hours.size:
            out[i] = int(hours[0]) * MINUTES_PER_HOUR
    return out


def _by_kind_and_band(ever: np.ndarray, labels: np.ndarray, run: StreamRun, data) -> dict:
    """Recall per delivery kind and amplitude band, naming per kind (dev/market.py datasets)."""
    kinds = [data.kind_of(i) for i in range(len(data))]
    bands = [data.band_of(i) for i in range(len(data))]
    out: dict = {"recall_by_kind": {}, "recall_by_band": {}, "named_exact_by_kind": {}, "recall_by_kind_1x": {},
                 "names_by_kind": {}}
    for k in sorted({k for k, y in zip(kinds, labels, strict=True) if y}):
        sel = np.array([x == k for x in kinds]) & labels
        out["recall_by_kind"][k] = float(ever[sel].mean())
        big = sel & (np.asarray(data.amplitude) >= 1.0)
        if big.any():
            out["recall_by_kind_1x"][k] = float(ever[big].mean())
        caught = np.flatnonzero(sel & ever).tolist()
        given = ["+".join(sorted({p for w in run.published[i][-1].windows for p in w.patterns})) for i in caught]
        exact = [g == data.pattern[i] for g, i in zip(given, caught, strict=True)]
        out["named_exact_by_kind"][k] = float(np.mean(exact)) if exact else None
        # what each kind is named as (the confusion counts cannot resolve), most often first
        out["names_by_kind"][k] = dict(Counter(given).most_common())
    for b in ("<1x", "1-3x", ">3x"):
        sel = np.array([x == b for x in bands]) & labels
        if sel.any():
            out["recall_by_band"][b] = float(ever[sel].mean())
    big = labels & (np.asarray(data.amplitude) >= 1.0)
    out["recall_1x_or_more"] = float(ever[big].mean()) if big.any() else None
    return out
