"""The stream decision process: when a video is flagged, when its flag is updated, withdrawn.

Scoring says how fake each hour of a window looks; this module decides what moderators are
told, with memory of what they were told before (``VideoDecisionState``, persisted per video
by the worker). The design, and why:

- **Decide on closed hours.** A worker re-scores a video many times while an hour fills up;
  if every re-scoring could publish, the organic flag rate would grow with the cadence. So the
  hourly path judges only closed hours (the window handed to the scorer ends at the last
  closed hour, see ``closed_window``), and an hour is publishable only once
  ``confirm_hours`` closed hours follow it: a spike and the first hour of an organic surge
  look alike until the next hour shows whether the level stayed. Re-scoring the same closed
  hours gives the same answer, so the number of re-scorings no longer matters.
- **The immediate path** for minute-level bursts (``patterns.BurstDetector``): a single
  minute holding more than a couple of the video's usual hours is published at once,
  without waiting for the hour to close; that evidence is never withdrawn by hourly scores.
- **Hysteresis and withdrawal.** Publishing needs ``publish`` on a confirmed hour; a
  published flag is withdrawn (``status: "withdrawn"``) only when every published hour still
  in the window has had ``withdraw_after_hours`` closed hours of context and none stays above
  ``withdraw`` (below ``publish``), so a flag does not flap.
- **Material changes only.** An update is published when a new pattern is named, the
  flag becomes critical from low or medium, or it doubled (in windows, or in hours by at least 6); growth in
  between is folded into the state and shown with the next record.
- **Severity** is relative to the publish threshold, the one that decides.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from stream_detector.accounts import SUSPECT_P, carried_share
from stream_detector.flags import flag_id, merge_windows_objects, severity
from stream_detector.patterns import Burst
from stream_detector.scoring import FlaggedWindow, VideoScore
from stream_detector.series import HourlySeries

SEVERITY_ORDER = ("low", "medium", "high", "critical")


# The decision parameters a model artifact records beside its operating curve
# (``operating_points.decision``): the shipped model's calibrated values, used for an artifact
# that records none. Training writes these into every artifact it builds.
DEFAULT_DECISION = {"confirm_hours": 1, "withdraw_ratio": 0.35, "burst": 0.5, "withdraw_after_hours": 12}


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the stream decision (the artifact's operating point picks them).

    Built in one place, ``from_artifact``: the worker, the canary, training and the benches
    decide with the same parameters the artifact recorded."""

    publish: float  # hour probability that flags a confirmed hour
    withdraw: float  # below this (on every published hour, with context) a flag is withdrawn
    extent: float  # neighbouring hours at least this high join a flagged window
    burst: float = DEFAULT_DECISION["burst"]  # immediate-path evidence that flags at once
    confirm_hours: int = DEFAULT_DECISION["confirm_hours"]
    withdraw_after_hours: int = DEFAULT_DECISION["withdraw_after_hours"]
    # hour probability from which a confirmed hour is suspicious for the user level
    # (``accounts.suspicion_threshold``: the model's own calibration, never above ``publish``)
    suspect: float = SUSPECT_P

    @classmethod
    def from_artifact(cls, publish: float, decision: Mapping[str, float] | None = None,
                      extent: float | None = None, suspect: float | None = None) -> Thresholds:
        """The thresholds at ``publish`` with an artifact's decision parameters (missing ones
        take ``DEFAULT_DECISION``); ``extent`` is the combiner's calibrated hour threshold
        (default: half the publish threshold), never above ``publish``; so is ``suspect``
        (default: ``accounts.SUSPECT_P``)."""
        d = {**DEFAULT_DECISION, **(decision or {})}
        publish = float(np.clip(publish, 1e-4, 1 - 1e-4))
        return cls(publish=publish, withdraw=float(d["withdraw_ratio"]) * publish,
                   extent=min(publish, extent if extent is not None else 0.5 * publish),
                   burst=float(d["burst"]), confirm_hours=int(d["confirm_hours"]),
                   withdraw_after_hours=int(d["withdraw_after_hours"]),
                   suspect=min(publish, suspect if suspect is not None else SUSPECT_P))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Published:
    """One flag record the process published (or, offline, would publish)."""

    status: str  # "new" | "updated" | "withdrawn"
    flag_id: str
    windows: tuple[FlaggedWindow, ...]
    score: float
    severity: str = "low"
    cause: str = "hourly"  # "hourly" (confirmed closed hours) or "burst" (the immediate path fired now)
    minute: int = -1  # event minute of the replay (evaluation only)

    def at(self, minute: int) -> Published:
        return replace(self, minute=minute)


@dataclass
class VideoDecisionState:
    """What the process remembers per video between scorings."""

    windows: list[FlaggedWindow] = field(default_factory=list)  # cumulative, incl. unpublished growth
    flag_id: str | None = None  # the last published record's id
    status: str | None = None  # its status
    generation: int = 0  # flags withdrawn so far (a later flag gets a fresh id)
    burst_hours: list[int] = field(default_factory=list)  # hours flagged by the immediate path
    burst_minutes: list[int] = field(default_factory=list)  # the minutes of the last bursts (epoch minutes)
    published_hours: int = 0
    published_patterns: tuple[str, ...] = ()
    published_severity: str = "low"
    published_windows: int = 0
    score: float = 0.0
    # the moderation loop's (moderation.py): this episode's published flag ids, a cleared
    # episode, the allowlist under which a flag went to review, when the episode was first flagged (wall clock)
    episode_ids: tuple[str, ...] = ()
    cleared: dict | None = None
    reviewed: str | None = None
    flagged_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ("new", "updated")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = [w.to_dict() for w in self.windows]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VideoDecisionState:
        from stream_detector.flags import window_from_dict

        d = dict(d)
        d["windows"] = [window_from_dict(w) for w in d.get("windows", [])]
        d["published_patterns"] = tuple(d.get("published_patterns", ()))
        d["episode_ids"] = tuple(d.get("episode_ids", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@functools.lru_cache(maxsize=16)
def _confirmed_mask(hours: int, confirm_hours: int) -> np.ndarray:
    mask = np.arange(hours) <= hours - 1 - confirm_hours
    mask.flags.writeable = False  # shared by every caller
    return mask


def closed_window(series: HourlySeries, now_hour: int, confirm_hours: int = 1) -> HourlySeries:
    """The part of a Redis window the hourly path may judge: hours before ``now_hour`` (the
    partition's current event hour). A video that went quiet gets up to ``confirm_hours``
    closed empty hours appended, so its last active hour can be confirmed too."""
    last_closed = now_hour - 1
    if series.end_hour > last_closed:
        keep = series.hours - (series.end_hour - last_closed)
        counts = series.counts[:, : max(keep, 0)]
        return HourlySeries(series.video_id, series.start_hour, counts, series.published_hour, series.meta)
    pad = min(last_closed - series.end_hour, confirm_hours)
    if pad <= 0:
        return series
    counts = np.concatenate([series.counts, np.zeros((series.counts.shape[0], pad))], axis=1)
    return HourlySeries(series.video_id, series.start_hour, counts, series.published_hour, series.meta)


def closed_windows(counts: np.ndarray, end_hours: np.ndarray, now_hour: int, confirm_hours: int,
                   window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`closed_window` then ``last(window)`` for a batch of stored windows at once:
    ``counts`` (V, 4, T) each ending at ``end_hours`` -> (rows with a closed hour (V,) bool,
    their trailing ``window`` closed hours (V, 4, window), the first hour of each). The
    closed window ends at min(now_hour - 1, end + confirm_hours): hours still filling are cut,
    a video that went quiet gets up to ``confirm_hours`` closed empty hours. The windows keep
    the dtype of ``counts``."""
    v, m, t = counts.shape
    end = np.asarray(end_hours, dtype=np.int64)
    new_end = np.minimum(now_hour - 1, end + confirm_hours)
    keep = new_end >= end - (t - 1)
    first = new_end - (window - 1)
    shift = first - (end - (t - 1))  # closed hour j is stored hour j + shift
    out = np.zeros((v, m, window), dtype=counts.dtype)
    for k in np.unique(shift).tolist():  # a few distinct shifts per batch: one slice copy each
        rows = np.flatnonzero(shift == k)
        lo, hi = max(0, -k), min(window, t - k)  # output hours that exist in the stored window
        if lo < hi:
            out[rows, :, lo:hi] = counts[rows, :, lo + k : hi + k]
    return keep, out, first


def _hours(windows: list[FlaggedWindow]) -> int:
    """The flagged hours of a set of windows (the state's and the records' measure of growth)."""
    return sum(w.end_hour - w.start_hour for w in windows)


def _material(state: VideoDecisionState, windows: list[FlaggedWindow], sev: str) -> bool:
    """Worth telling moderators again: a new pattern named, a flag that became critical from low
    or medium, or a flag that doubled (in windows, or in hours by at least 6). Growth in
    between is kept in the state and shown with the next record, so updates grow
    logarithmically, not hour by hour."""
    hours = _hours(windows)
    patterns = {p for w in windows for p in w.patterns}
    was = SEVERITY_ORDER.index(state.published_severity)
    return (
        not set(patterns) <= set(state.published_patterns)
        or len(windows) >= 2 * max(state.published_windows, 1)
        or (sev == "critical" and was < SEVERITY_ORDER.index("high"))
        or hours >= max(2 * state.published_hours, state.published_hours + 6)
    )


# an ended episode is shown with its extent when its flagged hours grew by a quarter since the
# last record (a doubling is an update at once, see _material), and by at least 3 hours
EPISODE_END_GROWTH = 1.25
EPISODE_END_MIN_HOURS = 3  # (a record's +-1 h already shows an hour more on either side)
RECURRING_DAYS = 3  # short windows at one hour of day on this many days are a schedule


def _recurring(vs: VideoScore, windows: list[FlaggedWindow]) -> list[FlaggedWindow]:
    """Short flagged windows that recur at the same hour of day (±1) on different days, at
    hours the video's audience is usually quiet (or on ``RECURRING_DAYS`` days at any hour),
    are one off-peak campaign: name them so (each alone looked like a spike)."""
    short = [w for w in windows if w.end_hour - w.start_hour <= 3]
    if len(short) < 2 or vs.detail is None or vs.detail.quiet is None:
        return windows
    quiet = vs.detail.quiet
    start = vs.start_hour

    def is_quiet(w: FlaggedWindow) -> bool:
        t = w.start_hour - start
        return 0 <= t < len(quiet) and quiet[t] >= 1.0

    hod = {w: w.start_hour % 24 for w in short}
    recurring = set()
    for a in short:
        days = [b for b in short if b is not a and abs(a.start_hour - b.start_hour) >= 20
                and min((hod[a] - hod[b]) % 24, (hod[b] - hod[a]) % 24) <= 1]
        # at a quiet hour twice, or at one hour of day on three days whatever the audience:
        # a crowd does not come back at the clock's say
        if (days and is_quiet(a)) or len(days) >= RECURRING_DAYS - 1:
            recurring.add(a)
    if not recurring:
        return windows
    return [FlaggedWindow(w.start_hour, w.end_hour, w.score, w.metrics, ("offpeak_burst",)) if w in recurring else w
            for w in windows]


BURST_MINUTES_KEPT = 16
# what the hour detectors see of a scheduled delivery: its bursts (spike, offpeak_burst) and
# the same hourly sum hour after hour (lockstep)
_SCHEDULE_SIDE_NAMES = {"spike", "offpeak_burst", "lockstep"}


def scheduled(minutes: list[int]) -> bool:
    """Immediate-path bursts on a schedule (a panel's scheduled delivery, every 15 min to 6 h):
    at least three, at the same minute of the hour (+-1), or at one interval of at least 15
    minutes (+-2). A real audience's bursts come when something happens, not by the clock."""
    if len(minutes) < 3:
        return False
    m = sorted(minutes)[-6:]
    gaps = np.diff(m)
    regular = gaps.min() >= 15 and (gaps.max() - gaps.min()) <= 4
    of_hour = np.array([x % 60 for x in m])
    same_minute = (np.abs(((of_hour - of_hour[-1]) + 30) % 60 - 30) <= 1).sum() >= 3
    return bool(regular or same_minute)


def _keep_coordinated(old: FlaggedWindow, new: FlaggedWindow) -> FlaggedWindow:
    """A window named again from the hour detectors keeps ``coordinated_accounts`` (accounts,
    not counts, are its evidence)."""
    if "coordinated_accounts" in old.patterns and "coordinated_accounts" not in new.patterns:
        return replace(new, patterns=(*new.patterns, "coordinated_accounts"))
    return new


def _grow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``seed`` hours extended over consecutive ``allowed`` neighbours (both directions)."""
    span = seed.copy()
    for t in range(1, len(span)):
        span[t] |= span[t - 1] & allowed[t]
    for t in range(len(span) - 2, -1, -1):
        span[t] |= span[t + 1] & allowed[t]
    return span


class StreamDecision:
    """decide(state, score of the closed window, now) -> (new state, record to publish or None)."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds

    def confirmed(self, vs: VideoScore) -> np.ndarray:
        """(W,) hours of the scored (closed) window with enough closed context after them."""
        return _confirmed_mask(len(vs.hour_probability), self.thresholds.confirm_hours)

    def publishable(self, vs: VideoScore) -> np.ndarray:
        """(W,) confirmed hours at or above the publish threshold."""
        return self.confirmed(vs) & (vs.hour_probability >= self.thresholds.publish)

    def statistic(self, vs: VideoScore) -> float:
        """The highest confirmed hour probability: the video would be flagged at any publish
        threshold at or below it (what calibration and the operating points are built on)."""
        confirmed = vs.hour_probability[: max(len(vs.hour_probability) - self.thresholds.confirm_hours, 0)]
        return float(confirmed.max()) if confirmed.size else 0.0

    def uses_detail(self, state: VideoDecisionState | None, burst: Burst | None,
                    accounts: dict[int, tuple[int, int]] | None = None) -> bool:
        """Whether deciding may read the scoring's hour detail (``VideoScore.detail``) whatever
        the hour probabilities: a burst that fires (its window is merged and relabelled) or an
        active flag (an episode that ends is published with its explanation). Otherwise only
        hours at or above ``detail_floor`` make it flag and read the detail."""
        carried = bool(accounts) and any(carried_share(t, f) for t, f in accounts.values())
        return (state is not None and state.active) or self.fires(burst) or carried

    def fires(self, burst: Burst | None) -> bool:
        """Whether the immediate path's evidence flags the video at once."""
        return burst is not None and burst.evidence >= self.thresholds.burst

    @property
    def detail_floor(self) -> float:
        return self.thresholds.publish

    def decide(self, state: VideoDecisionState | None, vs: VideoScore, *, now_hour: int,
               burst: Burst | None = None, accounts: dict[int, tuple[int, int]] | None = None,
               ) -> tuple[VideoDecisionState, Published | None]:
        """``accounts``: hour -> (account actions, actions of flagged accounts) of the video, when
        its events carry user_id (event 1.1): hours carried by flagged accounts are evidence."""
        th = self.thresholds
        state = state or VideoDecisionState()
        p = vs.hour_probability
        hot = self.publishable(vs)
        windows: list[FlaggedWindow] = []
        if hot.any():
            # a flagged window spans the publishable hours and their neighbours above ``extent``
            # (every confirmed run above ``extent`` would localise ~3 % more fake hours, but
            # name more side patterns and flag more organic hours: measured, not taken)
            windows = vs.windows_where(_grow(hot, p >= th.extent))
        if accounts:
            windows += self._carried(vs, accounts)
        burst_hours = list(state.burst_hours)
        burst_minutes = list(state.burst_minutes)
        fired = self.fires(burst)
        if fired:
            hour = burst.minute // 60
            windows.append(FlaggedWindow(hour, hour + 1, burst.evidence, burst.metrics, ("spike",)))
            if hour not in burst_hours:
                burst_hours.append(hour)
            if burst.minute not in burst_minutes:
                burst_minutes = sorted([*burst_minutes, burst.minute])[-BURST_MINUTES_KEPT:]
        if windows:
            merged = merge_windows_objects(state.windows if state.active else [], windows)
            # what is known now about earlier flagged hours replaces what was known then
            merged = _recurring(vs, [w if w.start_hour in burst_hours else _keep_coordinated(w, vs.relabel(w))
                                     for w in merged])
            if scheduled(burst_minutes):
                merged = [replace(w, patterns=("scheduled_bursts",))
                          if w.start_hour in burst_hours or set(w.patterns) <= _SCHEDULE_SIDE_NAMES else w
                          for w in merged]
            score = max(max(w.score for w in windows), state.score if state.active else 0.0)
            sev = severity(score, th.publish)
            cause = "burst" if fired else "hourly"
            state = replace(state, burst_minutes=burst_minutes)
            if not state.active:
                return self._publish(state, merged, score, sev, "new", vs.video_id, burst_hours, cause)
            if _material(state, merged, sev):
                return self._publish(state, merged, score, sev, "updated", vs.video_id, burst_hours, cause)
            state = replace(state, windows=merged, burst_hours=burst_hours, score=score)
        if state.active and self._episode_over(state, vs):
            # the flagged episode ended with growth not yet shown (its hours may still flag in
            # the window): one record with its full extent
            return self._publish(state, state.windows, state.score, severity(state.score, th.publish), "updated",
                                 vs.video_id, state.burst_hours, "hourly")
        if windows:
            return state, None
        if state.active and self._evidence_gone(state, vs):
            fid = flag_id(vs.video_id, state.windows, salt=f"withdrawn:{state.generation}")
            new = replace(state, flag_id=fid, status="withdrawn", generation=state.generation + 1)
            return new, Published("withdrawn", fid, tuple(state.windows), float(p.max()) if p.size else 0.0,
                                  severity(float(p.max()) if p.size else 0.0, th.publish))
        return state, None

    def _carried(self, vs: VideoScore, accounts: dict[int, tuple[int, int]]) -> list[FlaggedWindow]:
        """Confirmed hours carried by flagged accounts (``accounts.carried_share``). Their score
        rises with that share above the publish threshold (an hour wholly carried by flagged
        accounts is critical)."""
        th = self.thresholds
        confirmed = self.confirmed(vs)
        out = []
        for h, (total, flagged) in sorted(accounts.items()):
            t = h - vs.start_hour
            share = carried_share(total, flagged)
            if not (0 <= t < len(confirmed) and confirmed[t]) or not share:
                continue
            score = max(float(vs.hour_probability[t]), th.publish + (1.0 - th.publish) * share)
            counts = vs.detail.counts[:, t] if vs.detail is not None else np.ones(4)
            metrics = tuple(m for m, c in zip(("views", "likes", "comments", "shares"), counts, strict=True) if c > 0)
            out.append(FlaggedWindow(h, h + 1, min(score, 1.0), metrics or ("views",), ("coordinated_accounts",)))
        return out

    def _publish(self, state, windows, score, sev, status, video_id, burst_hours, cause):
        salt = f"g{state.generation}" if state.generation else ""
        fid = flag_id(video_id, windows, salt=salt)
        if fid == state.flag_id:
            return replace(state, windows=windows, burst_hours=burst_hours, score=score), None
        hours = _hours(windows)
        new = replace(state, windows=windows, flag_id=fid, status=status, burst_hours=burst_hours,
                      published_hours=hours,
                      published_patterns=tuple(sorted(set(state.published_patterns if state.active else ())
                                                      | {p for w in windows for p in w.patterns})),
                      published_severity=sev, published_windows=len(windows), score=score)
        return new, Published(status, fid, tuple(windows), score, sev, cause)

    def _episode_over(self, state: VideoDecisionState, vs: VideoScore) -> bool:
        """Unpublished growth, and nothing flagged for ``withdraw_after_hours`` since."""
        grown_to = max(state.published_hours + EPISODE_END_MIN_HOURS, EPISODE_END_GROWTH * state.published_hours)
        if not state.windows or _hours(state.windows) < grown_to:
            return False
        return vs.end_hour - max(w.end_hour for w in state.windows) >= self.thresholds.withdraw_after_hours

    def _evidence_gone(self, state: VideoDecisionState, vs: VideoScore) -> bool:
        """Every published hour still in the window has context and stays below ``withdraw``;
        hours flagged by the immediate path keep their flag."""
        th = self.thresholds
        p = vs.hour_probability
        start, w = vs.start_hour, len(p)
        seen = False
        for fw in state.windows:
            for h in range(fw.start_hour, fw.end_hour):
                if h in state.burst_hours:
                    return False
                t = h - start
                if t < 0:
                    continue  # aged out of the window: no information either way
                if t >= w or (w - 1 - t) < th.withdraw_after_hours:
                    return False  # not enough context yet
                if p[t] >= th.withdraw:
                    return False
                seen = True
        return seen


class LegacyDecision:
    """The process before this module existed: publish whenever a scoring crosses the stream
    threshold and the cumulative hour set grows; never withdraw. Kept to measure against."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def fires(self, burst: Burst | None) -> bool:
        return False  # it had no immediate path

    def decide(self, state: VideoDecisionState | None, vs: VideoScore, *, now_hour: int,
               burst: Burst | None = None) -> tuple[VideoDecisionState | None, Published | None]:
        if not (vs.flagged and vs.score >= self.threshold):
            return state, None
        state = state or VideoDecisionState()
        windows = merge_windows_objects(state.windows, vs.windows)
        fid = flag_id(vs.video_id, windows)
        if fid == state.flag_id:
            return state, None
        status = "updated" if state.flag_id else "new"
        new_state = VideoDecisionState(windows, fid, status)
        return new_state, Published(status, fid, tuple(windows), vs.score)
