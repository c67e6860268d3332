"""The accounts behind engagement: who views, likes, comments and shares, minute by minute.

A ``MarketDataset`` (``dev/market.py``) says how much engagement each video gets and which of
it was bought; this module says *who* did it, so the account level has something to find and
something it must leave alone:

- **organic users**: heavy-tailed activity (log-normal, a tail of very active real users),
  a home time zone and a daily rhythm with sleep (the hour-of-day shape and the burstiness of
  real accounts: ``../shared/real-accounts``, 2021 German election posts, where heavy posters
  are quiet 6 hours a day in the median and their intervals have a CV above 0.85), following
  many creators;
- **fan communities**: each channel's fans, who pile onto its new uploads in the first hours
  and stay with that creator;
- **shared networks** (a campus, a carrier NAT): many accounts, one sharp rhythm, overlapping
  interests, otherwise organic;
- **embed viewers**: casual accounts that arrive with a video embedded on a big site and are
  seen once;
- **farms** of varied size, speed and stealth, each serving several customers' videos with the
  delivery kinds of ``market.py``: ``naive`` (never sleep, rotate their accounts at machine
  pace, a burst from one minute's worth of accounts), ``shift`` (work shifts in their own zone),
  ``stealthy`` (sleep in their zone, random accounts and delays, likes on popular organic
  videos as cover); and **pods**: small groups of real creators engaging each other's new
  uploads in their first hours.

A share of views is attributed to logged-in accounts (the same share for bought and organic
views: who is logged in is no signal by itself), the rest stays aggregated per video and
minute without a ``user_id``; every reaction has its account. An account likes a video at most
once. Truth: each account's role and group, and per video which events were bought.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream_detector.dev.market import MarketDataset
from stream_detector.dev.simulate import DIURNAL_24, HOME_ZONE_P, HOME_ZONES
from stream_detector.series import METRICS, SECONDS_PER_HOUR

REAL_ACCOUNTS = Path(__file__).resolve().parent / "real_accounts" / "german_elections_posts.csv.gz"
VIEW_ACCOUNT_SHARE = 0.25  # views by logged-in accounts (the rest: aggregated counters)
# a video's actions with an account per hour and metric at most (its peak hour): above it the
# same lower share of its organic and bought actions is attributed, the rest is aggregated
MAX_ACCOUNT_ACTIONS_PER_HOUR = 600
ROLES = ("organic", "heavy", "fan", "network", "embed_viewer", "farm", "pod")
FAKE_ROLES = ("farm", "pod")
STEALTH = ("naive", "shift", "stealthy")


@dataclass
class AccountWorld:
    """Account-level events of a market week, and the truth about every account."""

    data: MarketDataset
    # one row per (video, minute, account, metric) action group: columns video, minute (since the
    # window's start), metric, account, count, fake (0/1)
    actions: np.ndarray
    # actions without an account (aggregated counters): (video, minute, metric, count)
    anonymous: np.ndarray
    account_ids: list[str]
    role: np.ndarray  # (A,) index into ROLES
    group: np.ndarray  # (A,) farm / pod / network id, -1 none
    groups: list[dict] = field(default_factory=list)  # id, kind, stealth, size, customers

    @property
    def fake_accounts(self) -> np.ndarray:
        """(A,) bool: the account acts for a farm or a pod."""
        return np.isin(self.role, [ROLES.index(r) for r in FAKE_ROLES])

    def active(self, min_actions: int = 1) -> np.ndarray:
        """(A,) bool: accounts with at least ``min_actions`` actions in the week."""
        n = np.bincount(self.actions[:, 3], weights=self.actions[:, 4], minlength=len(self.account_ids))
        return n >= min_actions

    def iter_events(self) -> Iterator[dict]:
        """Events in time order (contract 1.1): one per (video, minute, account) with that
        account's actions of the minute, and one per (video, minute) with the anonymous views."""
        d = self.data
        a = self.actions
        key = (a[:, 1].astype(np.int64) * len(d) + a[:, 0]) * len(self.account_ids) + a[:, 3]
        order = np.lexsort((a[:, 2], key))
        a = a[order]
        key = key[order]
        anon = self.anonymous[np.lexsort((self.anonymous[:, 2], self.anonymous[:, 0], self.anonymous[:, 1]))]
        j = 0
        pubs = [d.published_at(i) for i in range(len(d))]
        start = int(d.start_hour) * SECONDS_PER_HOUR
        bounds = np.flatnonzero(np.diff(key)) + 1
        groups = np.split(np.arange(a.shape[0]), bounds) if a.size else []
        for g in groups:
            v, minute, acc = int(a[g[0], 0]), int(a[g[0], 1]), int(a[g[0], 3])
            while j < anon.shape[0] and (anon[j, 1], anon[j, 0]) < (minute, v):
                yield self._anonymous_event(anon[j], pubs, start)
                j += 1
            ev = {"video_id": d.video_ids[v], "ts": start + minute * 60, "user_id": self.account_ids[acc],
                  "channel_id": d.channel[v]}
            for r in g.tolist():
                ev[METRICS[int(a[r, 2])]] = ev.get(METRICS[int(a[r, 2])], 0) + int(a[r, 4])
            ev["published_at"] = pubs[v]
            yield ev
        while j < anon.shape[0]:
            yield self._anonymous_event(anon[j], pubs, start)
            j += 1

    def _anonymous_event(self, row: np.ndarray, pubs: list[str], start: int) -> dict:
        v = int(row[0])
        return {"video_id": self.data.video_ids[v], "ts": start + int(row[1]) * 60, METRICS[int(row[2])]: int(row[3]),
                "channel_id": self.data.channel[v], "published_at": pubs[v]}


# ---------------------------------------------------------------------- real texture
def real_rhythms(path: Path = REAL_ACCOUNTS, min_posts: int = 30) -> np.ndarray:
    """(K, 24) hour-of-day activity shares of the real accounts with ``min_posts`` posts or more
    (UTC+2, the German campaign's local time), smoothed."""
    per: dict[str, list[int]] = {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            per.setdefault(row["account_id"], []).append(int(row["ts"]))
    out = []
    for ts in per.values():
        if len(ts) < min_posts:
            continue
        h = np.bincount(((np.asarray(ts) // 3600) + 2) % 24, minlength=24).astype(float)
        h = 0.7 * h + 0.15 * (np.roll(h, 1) + np.roll(h, -1)) + 0.05
        out.append(h / h.sum())
    return np.array(out)


# ---------------------------------------------------------------------- the world
class _Population:
    """Accounts, their roles, zones and hour-of-day activity curves."""

    def __init__(self, rng) -> None:
        self.rng = rng
        self.ids: list[str] = []
        self.role: list[int] = []
        self.group: list[int] = []
        self.zone: list[int] = []
        self.weight: list[float] = []
        self.curve: list[np.ndarray] = []  # (24,) activity share by local hour
        self.sleeps: list[bool] = []  # a person: a sleep block of 6-9 hours every day

    def add(self, n: int, role: str, prefix: str, *, zone=None, weight=None, curve=None, group: int = -1,
            sleeps: bool = True) -> np.ndarray:
        first = len(self.ids)
        rng = self.rng
        zones = rng.choice(HOME_ZONES, size=n, p=HOME_ZONE_P) if zone is None else np.broadcast_to(zone, (n,))
        weights = rng.lognormal(0.0, 1.2, n) if weight is None else np.broadcast_to(weight, (n,))
        for k in range(n):
            self.ids.append(f"{prefix}{first + k:07d}")
            self.role.append(ROLES.index(role))
            self.group.append(group)
            self.zone.append(int(zones[k]))
            self.weight.append(float(weights[k]))
            self.curve.append(curve(k) if callable(curve) else curve)
            self.sleeps.append(sleeps)
        return np.arange(first, first + n)

    def finish(self) -> None:
        self.zone_a = np.array(self.zone)
        self.weight_a = np.array(self.weight)
        self.curves = np.stack(self.curve)  # (A, 24)
        # each person's usual bedtime: the start of the quietest 7 hours of their rhythm; each
        # night it moves by up to +-1.5 h and lasts 6-9 h (an hour-of-day histogram over weeks
        # has activity at every hour; a day of one person does not)
        quiet = np.stack([np.roll(self.curves, -k, axis=1)[:, :7].sum(axis=1) for k in range(24)], axis=1)
        self.bedtime = quiet.argmin(axis=1)
        self.sleeps_a = np.array(self.sleeps)
        self.sleep_hours = self.rng.integers(6, 10, len(self.ids))

    def awake(self, idx: np.ndarray, hour: int) -> np.ndarray:
        """Activity of accounts ``idx`` at absolute UTC hour ``hour`` (their local hour): their
        rhythm there, 0 inside tonight's sleep block."""
        local_abs = hour + self.zone_a[idx]
        local = local_abs % 24
        day = local_abs // 24
        jitter = ((idx * 2654435761 + day * 40503) % 7) - 3  # -3..3 half-hours, deterministic per night
        start = (self.bedtime[idx] + jitter // 2) % 24
        asleep = self.sleeps_a[idx] & (((local - start) % 24) < self.sleep_hours[idx])
        return np.where(asleep, 0.0, self.curves[idx, local] * 24.0)


def _human_curve(rng, rhythms: np.ndarray):
    def make(_: int) -> np.ndarray:
        if rhythms.shape[0] and rng.random() < 0.7:
            c = rhythms[int(rng.integers(0, rhythms.shape[0]))]
            return np.roll(c, int(rng.integers(-2, 3)))
        c = DIURNAL_24 ** rng.uniform(1.0, 3.0)
        c = np.roll(c, int(rng.integers(-2, 3)))
        return c / c.sum()
    return make


def build_world(data: MarketDataset, seed: int, *, users: int | None = None, view_share: float = VIEW_ACCOUNT_SHARE,
                real: bool = True) -> AccountWorld:
    """Accounts for every event of ``data`` (see the module docstring). Seeded."""
    rng = np.random.default_rng([int(seed), 53])
    n, _, hours = data.counts.shape
    labels = np.asarray(data.label, dtype=bool)
    ex = data.minute_extras
    fake_rows = ex[labels[ex[:, 0]]] if ex.size else ex
    minute_all = data.minute_counts()  # (N, 4, T, 60)
    fake_min = np.zeros_like(minute_all)
    if fake_rows.size:
        np.add.at(fake_min, (fake_rows[:, 0], fake_rows[:, 2], fake_rows[:, 1], fake_rows[:, 3]), fake_rows[:, 4])
    organic_min = minute_all - fake_min
    del minute_all
    rhythms = real_rhythms() if real else np.zeros((0, 24))
    pop = _Population(rng)
    total_org = float(organic_min[:, 1:].sum() + view_share * organic_min[:, 0].sum())
    n_users = int(users or max(2000, min(200_000, total_org / 25)))
    human = _human_curve(rng, rhythms)
    organic = pop.add(n_users, "organic", "u", curve=human)
    heavy = pop.add(max(5, n_users // 100), "heavy", "h", weight=rng.lognormal(3.0, 0.5, max(5, n_users // 100)),
                    curve=human)
    # shared networks: one zone, one sharp schedule (awake 9-24 local), overlapping interests
    nets = []
    for k in range(max(2, n_users // 4000)):
        z = int(rng.choice(HOME_ZONES, p=HOME_ZONE_P))
        sched = np.where((np.arange(24) >= 9), 1.0, 0.02)
        sched = sched / sched.sum()
        size = int(rng.integers(50, 300))
        nets.append(pop.add(size, "network", f"n{k}-", zone=z, curve=sched, group=1000 + k))
    channels = sorted(set(data.channel))
    ch_index = {c: j for j, c in enumerate(channels)}
    vid_ch = np.array([ch_index[c] for c in data.channel])
    # fans: per channel, from the organic users (fans of one creator stay with it)
    fans: list[np.ndarray] = []
    role = pop.role
    for _ in channels:
        size = int(min(_logu(rng, 20, 600), organic.size))
        fans.append(rng.choice(organic, size, replace=False))
        for f in fans[-1].tolist():
            role[f] = ROLES.index("fan")
    pop_groups: list[dict] = [{"id": 1000 + k, "kind": "network", "size": int(m.size)} for k, m in enumerate(nets)]
    # farms and pods, each serving several customers of different channels
    fake_videos = [i for i in range(n) if labels[i]]
    pods_v = [i for i in fake_videos if data.delivery[i] == "pod"]
    farm_v = [i for i in fake_videos if data.delivery[i] != "pod"]
    farms: list[dict] = []
    order = rng.permutation(farm_v).tolist()
    k = 0
    while order:
        take = int(rng.integers(2, 7))
        customers, order = order[:take], order[take:]
        stealth = STEALTH[k % len(STEALTH)]
        # a farm has the accounts its biggest like order needs (one like per account), a few
        # times over: a naive one reuses them hard, a stealthy one spreads its work thinner
        need = int(max(fake_min[customers, 1].sum(axis=(1, 2)).max(initial=0), 20))
        size = int(need * (rng.uniform(1.0, 2.0) if stealth != "stealthy" else rng.uniform(2.0, 5.0)))
        zone = int(rng.choice([5, 6, 7, 8, -3, 3, 1]))
        if stealth == "naive":
            curve = np.full(24, 1 / 24)
        elif stealth == "shift":
            b = int(rng.integers(8, 11))
            curve = np.where((np.arange(24) >= b) & (np.arange(24) < b + 9), 1.0, 0.0) + 1e-6
            curve /= curve.sum()
        else:
            curve = human
        members = pop.add(size, "farm", f"f{k}-", zone=zone, weight=1.0, curve=curve, group=k,
                          sleeps=stealth == "stealthy")
        farms.append({"id": k, "kind": "farm", "stealth": stealth, "size": size, "zone": zone,
                      "customers": [data.video_ids[i] for i in customers], "members": members})
        k += 1
    pods: list[dict] = []
    order = rng.permutation(pods_v).tolist()
    while order:
        take = int(rng.integers(2, 5))
        customers, order = order[:take], order[take:]
        need = int(max(fake_min[customers, 0].sum(axis=(1, 2)).max(initial=0), 8))
        members = pop.add(need, "pod", f"p{k}-", curve=human, group=k)
        pods.append({"id": k, "kind": "pod", "size": need, "customers": [data.video_ids[i] for i in customers],
                     "members": members})
        k += 1
    embed_pool_start = len(pop.ids)
    embed = pop.add(max(1000, n_users // 5), "embed_viewer", "e", weight=0.05, curve=human)
    pop.finish()

    rows: list[np.ndarray] = []
    anonymous: list[np.ndarray] = []
    # attribution share per video and metric: the same for organic and bought actions
    peak = data.counts.max(axis=2)  # (N, 4)
    share = np.minimum(np.array([view_share, 1.0, 1.0, 1.0])[None, :],
                       MAX_ACCOUNT_ACTIONS_PER_HOUR / np.maximum(peak, 1.0))
    general = np.concatenate([organic, heavy, *nets])
    ages = np.arange(hours)[None, :] - (np.asarray(data.published_hour) - data.start_hour)[:, None]
    median_views = np.median(np.maximum(data.organic_counts[:, 0], 0), axis=1)
    for t in range(hours):
        abs_hour = int(data.start_hour) + t
        w_general = pop.weight_a[general] * pop.awake(general, abs_hour)
        # organic actions of this hour with an account: (video, metric, minute, count)
        org = rng.binomial(organic_min[:, :, t, :], share[:, :, None])
        fk = rng.binomial(fake_min[:, :, t, :], share[:, :, None])
        anon = organic_min[:, :, t, :] - org + fake_min[:, :, t, :] - fk
        vv, mm, mi = np.nonzero(anon)
        if vv.size:
            anonymous.append(np.stack([vv, t * 60 + mi, mm, anon[vv, mm, mi]], axis=1))
        v_idx, m_idx, mi = np.nonzero(org)
        cnt = org[v_idx, m_idx, mi]
        if v_idx.size:
            rep = np.repeat(np.arange(v_idx.size), cnt)
            av, am, ami = v_idx[rep], m_idx[rep], mi[rep]
            age = ages[av, t]
            fan_share = np.where((age >= 0) & (age < 6), 0.6, 0.15)
            is_fan = rng.random(av.size) < fan_share
            who = np.empty(av.size, dtype=np.int64)
            # embed surges: the part of the views above twice the usual level is embed viewers
            surge = np.array([data.lookalike[v] == "embed" for v in av]) & (am == 0)
            if surge.any():
                over = 1.0 - 2.0 * median_views[av[surge]] / np.maximum(data.counts[av[surge], 0, t], 1.0)
                pick = rng.random(surge.sum()) < np.clip(over, 0.0, 1.0)
                idx = np.flatnonzero(surge)[pick]
                who[idx] = rng.integers(embed_pool_start, embed_pool_start + embed.size, idx.size)
                is_fan[idx] = False
                surge[:] = False
                surge[idx] = True
            for ch in np.unique(vid_ch[av[is_fan & ~surge]]).tolist():
                sel = np.flatnonzero(is_fan & ~surge & (vid_ch[av] == ch))
                f = fans[ch]
                p = pop.awake(f, abs_hour) * pop.weight_a[f]
                who[sel] = rng.choice(f, sel.size, p=p / p.sum())
            rest = np.flatnonzero(~is_fan & ~surge)
            if rest.size:
                w = w_general.copy()
                p = w / w.sum()
                who[rest] = general[rng.choice(general.size, rest.size, p=p)]
            rows.append(np.stack([av, t * 60 + ami, am, who, np.ones(av.size, dtype=np.int64),
                                  np.zeros(av.size, dtype=np.int64)], axis=1))
        # bought actions: the serving farm's (or pod's) accounts
        fv, fm, fmi = np.nonzero(fk)
        if fv.size:
            cnt = fk[fv, fm, fmi]
            rep = np.repeat(np.arange(fv.size), cnt)
            bv, bm, bmi = fv[rep], fm[rep], fmi[rep]
            who = np.empty(bv.size, dtype=np.int64)
            for g in farms + pods:
                cust = [data.video_ids.index(c) for c in g["customers"]]
                sel = np.flatnonzero(np.isin(bv, cust))
                if sel.size:
                    who[sel] = _farm_pick(rng, pop, g, bv[sel], bm[sel], t * 60 + bmi[sel], abs_hour)
            rows.append(np.stack([bv, t * 60 + bmi, bm, who, np.ones(bv.size, dtype=np.int64),
                                  np.ones(bv.size, dtype=np.int64)], axis=1))
    # stealthy farms like popular organic videos as cover: a quarter of their paid actions again,
    # in their accounts' awake hours
    popular = np.argsort(-data.organic_counts[:, 1].sum(axis=1))[: max(5, n // 10)]
    paid = np.bincount(np.concatenate([r[:, 3] for r in rows if r.size and r[0, 5] == 1] or [np.zeros(0, int)]),
                       minlength=len(pop.ids))
    for g in farms:
        if g["stealth"] != "stealthy":
            continue
        members = g["members"]
        k_cover = int(paid[members].sum() // 4)
        who = rng.choice(members, k_cover)
        vids = rng.choice(popular, k_cover)
        first = (data.published_hour[vids] - data.start_hour) * 60 + (
            data.published_minute[vids] if data.published_minute is not None else 0)  # not before it exists
        first = np.clip(first, 0, hours * 60 - 1).astype(np.int64)
        minute = first + (rng.random(k_cover) * (hours * 60 - first)).astype(np.int64)
        awake = pop.awake(who, int(data.start_hour) + minute // 60) / 24.0 > rng.random(k_cover) * pop.curves[who].max(axis=1)
        rows.append(np.stack([vids[awake], minute[awake], np.full(awake.sum(), 1), who[awake],
                              np.ones(awake.sum(), dtype=np.int64), np.ones(awake.sum(), dtype=np.int64)], axis=1))
    actions = np.concatenate(rows) if rows else np.zeros((0, 6), dtype=np.int64)
    actions = _dedupe_likes(rng, actions, general, {int(g["id"]): g["members"] for g in farms + pods},
                            np.array(pop.group))
    groups = pop_groups + [{k2: v for k2, v in g.items() if k2 not in ("members", "liked", "cursor", "used")}
                           for g in farms + pods]
    return AccountWorld(data, actions, np.concatenate(anonymous) if anonymous else np.zeros((0, 4), dtype=np.int64),
                        pop.ids, np.array(pop.role), np.array(pop.group), groups)


def _farm_pick(rng, pop: _Population, g: dict, videos: np.ndarray, metrics: np.ndarray, minutes: np.ndarray,
               abs_hour: int) -> np.ndarray:
    """Accounts of farm (or pod) ``g`` for its actions of one hour: likes by distinct accounts per
    video; ``naive`` farms rotate their accounts in order (machine pace), the others pick awake
    accounts at random."""
    members = g["members"]
    out = np.empty(videos.size, dtype=np.int64)
    if g["kind"] == "pod":  # reciprocity: the same members engage every pod video, each once per metric
        for v in np.unique(videos).tolist():
            for m in np.unique(metrics[videos == v]).tolist():
                sel = np.flatnonzero((videos == v) & (metrics == m))
                used = g.setdefault("used", {}).setdefault((v, m), 0)
                out[sel] = members[(used + np.arange(sel.size)) % members.size]
                g["used"][(v, m)] = used + sel.size
        return out
    if g.get("stealth") == "naive":
        cursor = g.setdefault("cursor", 0)
        out[:] = members[(cursor + np.arange(videos.size)) % members.size]
        g["cursor"] = (cursor + videos.size) % members.size
        return out
    awake = pop.awake(members, abs_hour) + 1e-9
    liked = g.setdefault("liked", {})
    for v in np.unique(videos).tolist():
        sel = np.flatnonzero(videos == v)
        likes = sel[metrics[sel] == 1]
        other = sel[metrics[sel] != 1]
        if other.size:
            out[other] = rng.choice(members, other.size, p=awake / awake.sum())
        if likes.size:  # one like per account and video: the members that have not liked it yet
            free = ~liked.setdefault(v, np.zeros(members.size, dtype=bool))
            if free.sum() < likes.size:
                free[:] = True
            q = np.where(free, awake, 0.0)
            pick = rng.choice(members.size, likes.size, replace=False, p=q / q.sum()) if (q > 0).sum() >= likes.size \
                else rng.choice(np.flatnonzero(free), likes.size, replace=False)
            liked[v][pick] = True
            out[likes] = members[pick]
    del minutes
    return out


def _dedupe_likes(rng, actions: np.ndarray, general: np.ndarray, members: dict[int, np.ndarray],
                  group: np.ndarray) -> np.ndarray:
    """An account likes a video at most once: a like drawn twice for the same (video, account)
    goes to another account of the same kind (a general user, or a member of the same group),
    so the events still add up to the dataset's counts."""
    actions = actions.copy()
    like = np.flatnonzero(actions[:, 2] == 1)
    width = int(actions[:, 3].max(initial=0)) + 1
    for _ in range(5):
        key = actions[like, 0] * width + actions[like, 3]
        _, first = np.unique(key, return_index=True)
        dup = np.setdiff1d(np.arange(like.size), first)
        if not dup.size:
            break
        rows = like[dup]
        for r in rows.tolist():
            g = int(group[actions[r, 3]]) if actions[r, 5] else -1
            pool = members.get(g, general) if g >= 0 else general
            actions[r, 3] = pool[int(rng.integers(0, pool.size))]
    return actions


def _logu(rng, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
