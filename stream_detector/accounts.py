"""The user level: accounts behind fake engagement, judged on what they did across videos.

The same method as the video level (each property a person has and a bot breaks, measured
against noise, combined, thresholded, explained), applied to an account's own activity:

- ``sync`` (CopyCatch, Beutel et al. 2013): the account acted on videos of at least
  ``SYNC_CHANNELS`` different channels within ``SYNC_MINUTES`` of the same other accounts, at
  least ``SYNC_PARTNERS`` of them, on videos small enough at that moment for it to mean
  something (a viral video's thousands of viewers co-engage by chance). Fans stay with one
  creator; a farm serves many customers, a pod its members' channels.
- ``no_sleep``: active in ``NO_SLEEP_HOURS`` or more hours of one day, on two days. People
  sleep (real heavy posters are quiet 6 hours a day in the median; ``dev/real_accounts``).
- ``shift_hours``: active in the same block of hours (at most ``SHIFT_SPAN``), worked through
  (``SHIFT_COVER`` of its hours, at least ``SHIFT_MIN_HOURS``) on ``SHIFT_DAYS`` days, the block's
  edges sharp (within ``SHIFT_EDGE`` hour each day) and nothing outside it: a farm working shifts
  in its own time zone. People's active
  hours move from day to day (real accounts: none of the 74 account-weeks with five or more active
  hours on three days keeps such a block; ``bench/account_patterns_real.py``).
- ``regular``: intervals between actions with a coefficient of variation below
  ``REGULAR_CV`` over ``REGULAR_MIN`` actions: machines keep time, people burst (real
  accounts: CV above 0.85).
- ``rate``: more actions in one minute, across videos, than a person makes.
- ``fake_hours``: most of its actions (``FAKE_HOURS_SHARE``, at least ``FAKE_HOURS_MIN``)
  landed in hours the video level found suspicious (hour probability at least the model's
  ``suspicion_threshold``, ``SUSPECT_P`` on this module's scale;
  or next to one, ``SUSPECT_NEAR``: the video level localises fake hours to +-1 h), on
  unrelated channels or in at least two distinct suspicious hours: a farm's accounts work
  where its deliveries are, most of them on only one or two customers (a farm spreads a big
  order over many accounts: in the simulated market week the median farm account touches two
  channels); an organic account lands there by chance, among its other activity. One
  suspicious hour of one video is not enough: a person commenting three times on a post the
  video level got wrong is not a bot. The two levels feed each other: suspicious hours make their
  engagers due for a judgement, and flagged accounts carry evidence to the next video they touch.

State per account is an idempotent summary (``AccountActivity``): the last ``RING`` actions
(a set: an action applied twice is the same action, so replays after a crash add nothing),
the hours of each of the last ``DAYS`` days with an action (bit masks, OR-ed), first and last
minute. Per video, the accounts that engaged it recently and when (``engagers``). Both live
in Redis for the worker (``worker/accounts.py``) and in memory for the evaluator
(``InMemoryAccountStore``); the judgement here is the same code for both.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from stream_detector.operating_points import OperatingCurve, OperatingPointError

RING = 48
DAYS = 8
MIN_ACTIONS = 3  # an account is judged from its 3rd action...
JUDGE_EVERY_MIN = 180  # ... then at most every 3 event hours (a suspicious hour makes it due at once)
SYNC_MINUTES = 30  # co-engagement within +-this many minutes of the same video
SYNC_CHANNELS = 3
SYNC_PARTNERS = 4
LOCKSTEP_MINUTES = 3  # ... and in lockstep: within +-3 minutes, with at least LOCKSTEP_PARTNERS
LOCKSTEP_PARTNERS = 3
SYNC_SMALL = 150  # engagers of a video within the +-window above this say nothing about each other
NO_SLEEP_HOURS = 20
SHIFT_MIN_HOURS = 5  # a day counts towards a shift with at least this many active hours...
SHIFT_DAYS = 3  # ... on this many days (of the last DAYS), all within one block of hours
SHIFT_SPAN = 12  # at most this long (a block may cross midnight UTC: shifts keep their own zone)
# each of those days active in this share of the block's hours: a shift is worked through (in week A of
# the simulated market, over the whole week, 0.6 caught 15 of 147,000 organic, fan and heavy accounts,
# 0.8 four, 0.9 none; judged as the week went on, 0.8 flagged about 18 at some point: precision 0.994 -> 0.990)
SHIFT_COVER = 0.9
SHIFT_EDGE = 1  # and starting and ending within this many hours of the block's edges
REGULAR_CV = 0.3
REGULAR_MIN = 12
RATE_PER_MINUTE = 20
# the suspicion, on the user level's own scale, from which a video hour counts as suspicious for its
# engagers. A model's hour probabilities are put on this scale (``suspicion``) by the model's own
# calibration: its threshold for SUSPECT_ORGANIC_RATE of organic videos on its stream operating curve
# (upper bound) maps to SUSPECT_P. The level was chosen on the shipped model 1.1.0, as its hour
# probability 0.7 (its threshold at that rate: 0.694): at 0.5 a second held-out market week lost
# account precision to 0.946 (fans and embed viewers in hours the video level got wrong), at 0.7 it
# kept 0.98 (README, the user level). A retrained model with another probability scale keeps that
# level instead of silently moving it
SUSPECT_P = 0.7
SUSPECT_ORGANIC_RATE = 0.04
SUSPECT_NEAR = 1  # an action within this many hours of a suspicious hour counts (the video level localises to +-1 h)
FAKE_HOURS_SHARE = 0.8
FAKE_HOURS_MIN = 3
CARRIED_MIN = 5  # flagged accounts' actions in a video's hour, at least...
CARRIED_SHARE = 0.3  # ... and this share of the hour's account actions: the hour is carried by them
ACCOUNT_PATTERNS = ("sync", "no_sleep", "shift_hours", "regular", "rate", "fake_hours")
# sync within +-30 min weighs 0.6 alone (an account watching boosted videos is near the bots
# that boost them); in lockstep (+-3 min) it weighs as much as the others
WEIGHTS = {"sync": 0.95, "no_sleep": 0.9, "shift_hours": 0.85, "regular": 0.85, "rate": 0.8,
           "fake_hours": 0.9}
LOOSE_SYNC_WEIGHT = 0.6
THRESHOLD = 0.8
# an account not flagged is judged again after it has gone quiet, this many event minutes after its
# last action: the video level's suspicion of a farm's hours comes late (on a market week a median 34
# event hours after the account's last action), when no newly suspicious hour reaches it any more
QUIET_AFTER_MIN = (12 * 60, 36 * 60, 84 * 60)


def next_quiet_judgement(last_minute: int, now_minute: int, after: Sequence[int] = QUIET_AFTER_MIN) -> int | None:
    """The event minute at which an account last active at ``last_minute`` and judged at
    ``now_minute`` is judged again if it stays quiet; None once its quiet judgements are done."""
    for d in after:
        if last_minute + d > now_minute:
            return last_minute + d
    return None


def near_hours(hour: int) -> range:
    """The hours whose suspicion speaks for an action in ``hour`` (``SUSPECT_NEAR`` either side),
    and, the other way round, the hours whose engagers a newly suspicious ``hour`` makes due."""
    return range(hour - SUSPECT_NEAR, hour + SUSPECT_NEAR + 1)


def carried_share(total: int, flagged: int) -> float:
    """The share of a video hour's account actions that came from flagged accounts, when they
    carry it (at least ``CARRIED_MIN`` actions and ``CARRIED_SHARE``), else 0. A carried hour
    is fake by who engaged in it, whatever its counts say: the video level flags it
    (``coordinated_accounts``) and the user level takes it as suspicious, so the other accounts
    working in it are judged with that evidence (a farm found on one customer reaches the
    customers the counts missed)."""
    if flagged < CARRIED_MIN:
        return 0.0
    share = flagged / max(total, flagged, 1)
    return share if share >= CARRIED_SHARE else 0.0


def suspicion_threshold(curve: OperatingCurve | None) -> float | None:
    """The hour probability of a model from which its hours are suspicious for the user level:
    the threshold that flags ``SUSPECT_ORGANIC_RATE`` of organic videos on its stream operating
    ``curve``; None for a model without a curve or one that cannot reach the rate
    (``Thresholds.from_artifact`` then takes ``SUSPECT_P`` as it stands, and caps either at the
    publish threshold: an hour the video level flags is suspicious)."""
    if curve is None:
        return None
    try:
        return curve.threshold_for(SUSPECT_ORGANIC_RATE)
    except OperatingPointError:
        return None


def suspicion(p: np.ndarray, threshold: float) -> np.ndarray:
    """Hour probabilities of a model whose suspicion threshold is ``threshold`` on the user
    level's scale: ``threshold`` -> ``SUSPECT_P``, 0 -> 0, 1 -> 1, linear in between (monotone, so
    the order of hours is the model's)."""
    p = np.asarray(p, dtype=np.float64)
    t = float(np.clip(threshold, 1e-6, 1.0 - 1e-6))
    return np.where(p >= t, SUSPECT_P + (1.0 - SUSPECT_P) * (p - t) / (1.0 - t), p * (SUSPECT_P / t))


def carried_suspicion(share: float) -> float:
    """The suspicion a carried hour stands for (at least ``SUSPECT_P``, rising with the share)."""
    return SUSPECT_P + (1.0 - SUSPECT_P) * share


def channel_hash(channel: str | None, video: str) -> int:
    """A channel's 32-bit id (a video without one is its own channel: nothing is unrelated by
    default)."""
    return zlib.crc32((channel if channel else f"video:{video}").encode()) & 0x7FFFFFFF


def shard_of(user_id: str, partitions: int) -> int:
    """The events partition whose owner judges this account (accounts follow the group's
    assignment, so a worker judges the accounts of the partitions it owns)."""
    return zlib.crc32(user_id.encode()) % max(partitions, 1)


class Action(NamedTuple):
    """One account's action(s) on one video in one minute (count per metric). A named tuple:
    the ingest makes one per account event."""

    minute: int  # epoch minutes
    video_id: str
    channel: int  # channel_hash
    counts: tuple[int, int, int, int]
    partition: int = -1  # the video's events partition (its owner re-judges it)

    def key(self) -> str:
        c = self.counts
        return f"{self.minute}|{self.partition}|{self.video_id}|{self.channel}|{c[0]},{c[1]},{c[2]},{c[3]}"

    @classmethod
    def parse(cls, text: str) -> Action:
        """The inverse of ``key`` (a video id may contain ``|``: it is whatever lies between)."""
        minute, partition, rest = text.split("|", 2)
        video, channel, counts = rest.rsplit("|", 2)
        c = tuple(int(x) for x in counts.split(","))
        return cls(int(minute), video, int(channel), c, int(partition))  # type: ignore[arg-type]


@dataclass
class AccountActivity:
    """What the account did lately (see the module docstring): the state a judgement reads."""

    user_id: str
    actions: list[Action] = field(default_factory=list)  # newest last, at most RING
    day_masks: dict[int, int] = field(default_factory=dict)  # epoch day -> 24-bit mask of active hours
    first_minute: int = 0
    last_minute: int = 0

    def add(self, actions: Iterable[Action]) -> None:
        """Apply actions (idempotent: an action already in the ring is not added again)."""
        known = {a.key() for a in self.actions}
        for a in actions:
            k = a.key()
            if k in known:
                continue
            known.add(k)
            self.actions.append(a)
            day, hour = divmod(a.minute // 60, 24)
            self.day_masks[day] = self.day_masks.get(day, 0) | (1 << hour)
            self.first_minute = a.minute if not self.first_minute else min(self.first_minute, a.minute)
            self.last_minute = max(self.last_minute, a.minute)
        self.actions.sort(key=lambda a: a.minute)
        del self.actions[:-RING]
        newest = max(self.day_masks, default=0)
        for d in [d for d in self.day_masks if d <= newest - DAYS]:  # the last DAYS days, as in Redis
            del self.day_masks[d]


@dataclass
class AccountScore:
    user_id: str
    score: float
    evidence: dict[str, float]  # ACCOUNT_PATTERNS -> [0, 1]
    partners: list[str]  # accounts it acted with (sync)
    channels: int  # distinct channels of those co-engagements
    videos: list[dict]  # [{"video_id", "first", "last", "metrics", "events"}]
    explanation: str

    @property
    def patterns(self) -> list[str]:
        return [p for p in ACCOUNT_PATTERNS if self.evidence.get(p, 0.0) >= 0.5]

    @property
    def flagged(self) -> bool:
        return self.score >= THRESHOLD


def group_of(user_id: str, partners: Sequence[str]) -> dict | None:
    """A deterministic group id from the account and its sync partners (the smallest member
    names the group, so the members of one group mostly agree on it)."""
    if not partners:
        return None
    members = sorted({user_id, *partners})
    return {"group_id": hashlib.sha256(members[0].encode()).hexdigest()[:16], "size": len(members)}


class AccountJudge:
    """Judges accounts from their activity and their co-engagers (``engagers(video, lo, hi)``:
    the accounts that acted on a video between two minutes, with the minute)."""

    def judge(self, act: AccountActivity, engagers: dict[tuple[str, int], list[tuple[str, int]]],
              suspicion: dict[tuple[str, int], float] | None = None) -> AccountScore:
        """``engagers[(video, minute)]``: the co-engagers of each of the account's actions within
        +-SYNC_MINUTES (what ``sync_queries`` asked for); ``suspicion[(video, hour)]``: the hour
        probability the video level gave the hours of its actions (``suspicion_queries``)."""
        ev = {p: 0.0 for p in ACCOUNT_PATTERNS}
        partners, channels = self._sync(act, engagers, SYNC_MINUTES)
        tight, tight_channels = self._sync(act, engagers, LOCKSTEP_MINUTES)
        loose = LOOSE_SYNC_WEIGHT / WEIGHTS["sync"] * _ramp(len(partners), SYNC_PARTNERS - 1, SYNC_PARTNERS + 2)
        lockstep = _ramp(len(tight), LOCKSTEP_PARTNERS - 1, LOCKSTEP_PARTNERS + 1)
        ev["sync"] = max(loose, lockstep)
        if lockstep >= loose and tight:
            partners, channels = tight, tight_channels
        ev["no_sleep"] = self._no_sleep(act)
        ev["shift_hours"] = shift_hours(act.day_masks)
        ev["regular"] = self._regular(act)
        ev["rate"] = self._rate(act)
        ev["fake_hours"] = self._fake_hours(act, suspicion or {})
        score = 1.0 - float(np.prod([1.0 - WEIGHTS[p] * e for p, e in ev.items()]))
        videos = _videos(act)
        return AccountScore(act.user_id, score, ev, sorted(partners), channels, videos,
                            _explain(act, ev, partners, channels, videos))

    @staticmethod
    def suspicion_queries(act: AccountActivity) -> list[tuple[str, int]]:
        """(video, hour) of each action and the hours next to it: whose suspicion the judgement reads."""
        return sorted({(a.video_id, h) for a in act.actions for h in near_hours(a.minute // 60)})

    @staticmethod
    def _fake_hours(act: AccountActivity, suspicion: dict[tuple[str, int], float]) -> float:
        if not act.actions:
            return 0.0
        hit = [a for a in act.actions
               if any(suspicion.get((a.video_id, h), 0.0) >= SUSPECT_P for h in near_hours(a.minute // 60))]
        if len(hit) < FAKE_HOURS_MIN:
            return 0.0
        spread = len({a.channel for a in hit}) >= 2 or len({(a.video_id, a.minute // 60) for a in hit}) >= 2
        share = len(hit) / len(act.actions)
        return _ramp(share, FAKE_HOURS_SHARE - 0.2, FAKE_HOURS_SHARE) if spread else 0.0

    @staticmethod
    def sync_queries(act: AccountActivity) -> list[tuple[str, int]]:
        """(video, minute) whose co-engagers the judgement reads: the account's latest action on
        each of its videos (the engagers kept per video are each account's latest minute there,
        so an older action would only meet accounts that never came back); none for an account
        active on fewer than SYNC_CHANNELS channels (it cannot be in sync on that many)."""
        if len({a.channel for a in act.actions}) < SYNC_CHANNELS:
            return []
        latest: dict[str, int] = {}
        for a in act.actions:
            latest[a.video_id] = max(latest.get(a.video_id, a.minute), a.minute)
        return sorted(latest.items())

    def _sync(self, act: AccountActivity, engagers, within: int) -> tuple[set[str], int]:
        by_partner: dict[str, set[int]] = {}
        channel_of = {a.video_id: a.channel for a in act.actions}
        for (video, minute), others in engagers.items():
            ch = channel_of.get(video)
            if ch is None:
                continue
            for user, m in others:
                if user != act.user_id and abs(m - minute) <= within:
                    by_partner.setdefault(user, set()).add(ch)
        partners = {u for u, chs in by_partner.items() if len(chs) >= SYNC_CHANNELS}
        channels = len(set().union(*(by_partner[u] for u in partners))) if partners else 0
        return partners, channels

    @staticmethod
    def _no_sleep(act: AccountActivity) -> float:
        full = sorted((bin(m).count("1") for m in act.day_masks.values()), reverse=True)
        if len(full) < 2:
            return 0.0
        return _ramp(full[1], NO_SLEEP_HOURS - 2, NO_SLEEP_HOURS)

    @staticmethod
    def _regular(act: AccountActivity) -> float:
        minutes = sorted({a.minute for a in act.actions})
        if len(minutes) < REGULAR_MIN:
            return 0.0
        gaps = np.diff(np.asarray(minutes[-32:], dtype=float))
        if gaps.mean() <= 0:
            return 0.0
        cv = gaps.std() / gaps.mean()
        return _ramp(-cv, -REGULAR_CV - 0.15, -REGULAR_CV)

    @staticmethod
    def _rate(act: AccountActivity) -> float:
        per_minute: dict[int, int] = {}
        for a in act.actions:
            per_minute[a.minute] = per_minute.get(a.minute, 0) + sum(a.counts)
        peak = max(per_minute.values(), default=0)
        return _ramp(peak, RATE_PER_MINUTE - 5, RATE_PER_MINUTE)


def shift_hours(day_masks: dict[int, int]) -> float:
    """1.0 when the account kept one block of hours as a shift (see the module docstring), else 0.

    The days are read from every hour of the clock in turn (a day from hour ``s`` to ``s`` the
    next day), so a block across midnight UTC is one block: the block starts at ``s``."""
    if sum(m.bit_count() for m in day_masks.values()) < SHIFT_MIN_HOURS * SHIFT_DAYS:  # most accounts
        return 0.0
    first = min(day_masks)
    timeline = 0
    for day, mask in day_masks.items():
        timeline |= (mask & 0xFFFFFF) << (24 * (day - first))
    span_days = max(day_masks) - first + 1
    for s in range(24):
        busy = []
        for k in range(span_days):
            window = (timeline >> (24 * k + s)) & 0xFFFFFF
            if window.bit_count() >= SHIFT_MIN_HOURS:
                busy.append(window)
        if len(busy) < SHIFT_DAYS:
            continue
        union = 0
        for window in busy:
            union |= window
        length = union.bit_length()
        if not union & 1 or length > SHIFT_SPAN:
            continue
        if all(w.bit_count() >= SHIFT_COVER * length and w & ((1 << (SHIFT_EDGE + 1)) - 1)
               and w >> (length - 1 - SHIFT_EDGE) for w in busy):
            return 1.0
    return 0.0


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / max(hi - lo, 1e-9), 0.0, 1.0))


def _videos(act: AccountActivity) -> list[dict]:
    by: dict[str, dict] = {}
    names = ("views", "likes", "comments", "shares")
    for a in act.actions:
        v = by.setdefault(a.video_id, {"video_id": a.video_id, "first": a.minute, "last": a.minute,
                                        "metrics": set(), "events": 0})
        v["first"], v["last"] = min(v["first"], a.minute), max(v["last"], a.minute)
        v["metrics"] |= {names[k] for k, c in enumerate(a.counts) if c}
        v["events"] += sum(a.counts)
    out = []
    for v in sorted(by.values(), key=lambda x: -x["events"]):
        out.append({**v, "metrics": [m for m in names if m in v["metrics"]]})
    return out


def _explain(act: AccountActivity, ev: dict[str, float], partners: set[str], channels: int,
             videos: list[dict]) -> str:
    parts = []
    if ev["sync"] >= 0.5:
        parts.append(f"co-engaged with {len(partners)} accounts on videos of {channels} unrelated channels "
                     f"within +-{LOCKSTEP_MINUTES if ev['sync'] > LOOSE_SYNC_WEIGHT / WEIGHTS['sync'] else SYNC_MINUTES} min")
    if ev["no_sleep"] >= 0.5:
        busiest = sorted((bin(m).count("1") for m in act.day_masks.values()), reverse=True)[:2]
        parts.append(f"active {busiest[0]} and {busiest[1]} hours of a day (no sleep)")
    if ev["shift_hours"] >= 0.5:
        parts.append(f"kept the same block of hours on {SHIFT_DAYS}+ days, nothing outside it (shift hours)")
    if ev["regular"] >= 0.5:
        parts.append("actions at machine-regular intervals")
    if ev["rate"] >= 0.5:
        parts.append(f"more than {RATE_PER_MINUTE} actions in one minute")
    if ev["fake_hours"] >= 0.5:
        parts.append("most of its actions in hours found fake")
    if not parts:
        return f"organic-looking activity on {len(videos)} video(s)"
    return "; ".join(parts) + f" ({len(videos)} video(s) in its recent activity)"


class InMemoryAccountStore:
    """The account state in memory (the evaluator, tests): the same summaries the worker keeps
    in Redis, with the same idempotence."""

    def __init__(self, engager_minutes: int = 24 * 60, engagers_per_video: int = 2000) -> None:
        self.activity: dict[str, AccountActivity] = {}
        self.engagers: dict[str, list[tuple[int, str]]] = {}  # video -> [(minute, user)], sorted
        self.engager_minutes = engager_minutes
        self.engagers_per_video = engagers_per_video

    def apply(self, actions: dict[str, list[Action]]) -> None:
        """As Redis does: per video, each account once, at the minute of its latest action."""
        touched: dict[str, dict[str, int]] = {}
        for user, acts in actions.items():
            self.activity.setdefault(user, AccountActivity(user)).add(acts)
            for a in acts:
                latest = touched.setdefault(a.video_id, {})
                latest[user] = max(latest.get(user, a.minute), a.minute)
        for v, latest in touched.items():
            merged = {u: m for m, u in self.engagers.get(v, [])}
            for u, m in latest.items():
                merged[u] = max(merged.get(u, m), m)
            lst = sorted((m, u) for u, m in merged.items())
            newest = lst[-1][0]
            self.engagers[v] = [x for x in lst if x[0] >= newest - self.engager_minutes][-self.engagers_per_video:]

    def engaged_in(self, video: str, hour: int, limit: int = 500, hours: int = 1) -> list[str]:
        """The accounts whose latest action on a video lies in ``hours`` hours from ``hour``, at
        most ``limit`` per hour (as the Redis store answers: an account that came back later, or
        acted before the engagers kept, is not among them)."""
        import bisect

        lst = self.engagers.get(video, [])
        lo = bisect.bisect_left(lst, (hour * 60, ""))
        hi = bisect.bisect_left(lst, ((hour + hours) * 60, ""))
        return [u for _, u in lst[lo:min(hi, lo + limit * hours)]]

    def co_engagers(self, queries: Sequence[tuple[str, int]]) -> dict[tuple[str, int], list[tuple[str, int]]]:
        import bisect

        out = {}
        for video, minute in queries:
            lst = self.engagers.get(video, [])
            lo = bisect.bisect_left(lst, (minute - SYNC_MINUTES, ""))
            hi = bisect.bisect_right(lst, (minute + SYNC_MINUTES, "\uffff"))
            if hi - lo <= SYNC_SMALL:  # a crowd is left out, as in the Redis store
                out[(video, minute)] = [(u, m) for m, u in lst[lo:hi]]
        return out


# ---------------------------------------------------------------------- decision and record
ACCOUNT_SCHEMA_VERSION = "1.2"
DETECTOR = {"name": "account-detector", "version": "1.1"}  # 1.1: shift_hours
WITHDRAW = 0.4  # a flagged account whose score falls below this (with new activity) is withdrawn


@dataclass
class AccountFlagState:
    """What the account decision remembers of an account (its last published record)."""

    flag_id: str | None = None
    status: str | None = None
    generation: int = 0
    records: int = 0
    patterns: tuple[str, ...] = ()
    videos: int = 0
    group_size: int = 0
    flagged_at_minute: int = 0
    # the moderation loop's (moderation.py): this episode's flag ids, a cleared episode
    episode_ids: tuple[str, ...] = ()
    cleared: dict | None = None

    @property
    def active(self) -> bool:
        return self.status in ("new", "updated")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["patterns"] = list(self.patterns)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AccountFlagState:
        d = dict(d)
        d["patterns"] = tuple(d.get("patterns", ()))
        d["episode_ids"] = tuple(d.get("episode_ids", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def decide_account(state: AccountFlagState | None, sc: AccountScore, *, last_minute: int
                   ) -> tuple[AccountFlagState, str | None]:
    """(new state, status to publish or None): ``new`` when an account is first flagged (or
    again after a withdrawal), ``updated`` on a material change (a pattern named, the videos or
    the group doubled), ``withdrawn`` when the account, active again, no longer looks fake."""
    from dataclasses import replace

    state = state or AccountFlagState()
    group = group_of(sc.user_id, sc.partners)
    size = group["size"] if group else 0
    if sc.flagged:
        material = (not set(sc.patterns) <= set(state.patterns) or len(sc.videos) >= 2 * max(state.videos, 1)
                    or size >= 2 * max(state.group_size, 1) and size > 0)
        if state.active and not material:
            return state, None
        status = "updated" if state.active else "new"
        new = replace(state, status=status, records=state.records + 1,
                      patterns=tuple(sorted(set(state.patterns if state.active else ()) | set(sc.patterns))),
                      videos=max(len(sc.videos), state.videos if state.active else 0),
                      group_size=max(size, state.group_size if state.active else 0),
                      flagged_at_minute=state.flagged_at_minute if state.active else last_minute)
        new.flag_id = account_flag_id(sc.user_id, new.generation, new.records)
        return new, status
    if state.active and sc.score < WITHDRAW and last_minute > state.flagged_at_minute + 24 * 60:
        new = replace(state, status="withdrawn", records=state.records + 1, generation=state.generation + 1)
        new.flag_id = account_flag_id(sc.user_id, new.generation, new.records)
        return new, "withdrawn"
    return state, None


def account_flag_id(user_id: str, generation: int, records: int) -> str:
    """Deterministic: the same account and the same sequence of records give the same id
    (a replayed or restarted worker re-derives it; consumers de-duplicate on it)."""
    return hashlib.sha256(f"account|{user_id}|g{generation}|r{records}".encode()).hexdigest()[:32]


def account_record(sc: AccountScore, state: AccountFlagState, status: str, *, watermark: float,
                   detected_at: float, organic_rate: float | None = None, moderation: dict | None = None,
                   ) -> dict:
    """The account flag (``account-flag.schema.json`` 1.2: ``moderation`` when a verdict
    withdrew it, 1.1; the ``shift_hours`` pattern, 1.2)."""
    from stream_detector.flags import iso, severity
    from stream_detector.series import minute_iso

    videos = [{"video_id": v["video_id"], "first": minute_iso(v["first"]), "last": minute_iso(v["last"]),
               "metrics": v["metrics"], "events": int(v["events"])} for v in sc.videos[:50]]
    return {
        "schema_version": ACCOUNT_SCHEMA_VERSION,
        "flag_id": state.flag_id,
        "user_id": sc.user_id,
        "status": status,
        "score": round(float(sc.score), 4),
        "threshold": THRESHOLD,
        "severity": severity(sc.score, THRESHOLD) if status != "withdrawn" else "low",
        "organic_rate": organic_rate,
        "group": group_of(sc.user_id, sc.partners),
        "videos": videos,
        "patterns": sc.patterns or list(state.patterns),
        "explanation": sc.explanation[:500],
        "model": dict(DETECTOR),
        "watermark": iso(watermark),
        "detected_at": iso(detected_at),
    } | ({"moderation": moderation} if moderation is not None else {})
