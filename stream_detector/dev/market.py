"""Fraud as engagement panels sell it, and the organic engagement that looks like it.

``simulate.py`` injects five textbook patterns. Panels do not sell textbook patterns: they
sell *deliveries* (a constant drip, a ramp, a revival, reactions without views, scheduled
bursts, bots holding proportions, farms working shifts, engagement pods), each sized against
what the customer's video already gets. And real audiences produce curves that look like some
of them: a video embedded on a big site (views surge, reactions lag), a premiere, a second
viral wave, fans piling onto a new upload, an audience moving time zone, and real viral posts
whose conversation is front-loaded (comments per like fall about twofold over the first 14 h;
the upvote rate peaks at hours 3-4 and halves by hour 9, measured on real top posts).

Every kind here is first-class: a name, truth per hour and metric, and for deliveries an
**amplitude**: delivered events per active hour of the delivered metric over the video's own
median hourly level of it (0.2-10x), never below a panel's smallest order (100 views, 10
likes, 5 comments). Deliveries are placed minute by minute the way panels deliver (regular
drip increments, one fixed minute for scheduled bursts, exact proportions every minute), so
the stream sees what a worker would see.

The organic base is ``simulate``'s generative model (with real texture when given), so the
plain organic kinds keep their names; look-alikes reshape it before counts are drawn.
``simulate_market`` returns a ``MarketDataset``: a ``SimulatedDataset`` (everything
downstream works on it: ``minute_counts``, ``iter_events``, the stream evaluator) plus the
delivery kind, the look-alike kind, the amplitude and the channel of every video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stream_detector.dev import simulate as sim
from stream_detector.dev.simulate import ORGANIC_KINDS, SimulatedDataset
from stream_detector.series import METRICS

DELIVERY_KINDS: tuple[str, ...] = ("drip_feed", "ramp", "revival", "likes_only", "comments_only",
                                   "scheduled_bursts", "bot_proportions", "shift_farm", "pod")
LOOKALIKE_KINDS: tuple[str, ...] = ("embed", "premiere", "second_wave", "fan_pile", "tz_move", "viral_post")
# the pattern a detector should name for each delivery (the flag vocabulary, schema 1.2)
EXPECTED_PATTERN: dict[str, str] = {
    "drip_feed": "drip_feed",
    "ramp": "ratio_anomaly",  # views-only ramp; the exact-ratio variant is lockstep (see the injection)
    "revival": "decay_violation",
    "likes_only": "ratio_anomaly",
    "comments_only": "ratio_anomaly",
    "scheduled_bursts": "scheduled_bursts",
    "bot_proportions": "lockstep",
    "shift_farm": "shift_hours",
    "pod": "coordinated_accounts",  # counts rarely see a pod; its accounts do
}
MIN_ORDER = np.array([100.0, 10.0, 5.0, 5.0])  # a panel's smallest order per metric
AMPLITUDE_RANGE = (0.2, 10.0)
LOOKALIKE_SHARE = 0.30  # of organic videos
_V, _L, _C, _S = 0, 1, 2, 3


@dataclass
class MarketDataset(SimulatedDataset):
    """A simulated week with delivery kinds and look-alikes (see the module docstring)."""

    delivery: list[str] = field(default_factory=list)  # delivery kind of a fake ("" organic)
    lookalike: list[str] = field(default_factory=list)  # look-alike kind of an organic video ("" none)
    amplitude: np.ndarray = field(default_factory=lambda: np.zeros(0))  # delivered / own median level
    fake_events: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (N, 4) delivered per metric
    channel: list[str] = field(default_factory=list)  # the video's channel (creator)

    def subset(self, idx: np.ndarray) -> MarketDataset:
        base = SimulatedDataset.subset(self, idx)
        idx = np.arange(len(self))[np.asarray(idx)]
        lst = idx.tolist()
        return MarketDataset(**{f: getattr(base, f) for f in SimulatedDataset.__dataclass_fields__},
                             delivery=[self.delivery[i] for i in lst], lookalike=[self.lookalike[i] for i in lst],
                             amplitude=self.amplitude[idx].copy(), fake_events=self.fake_events[idx].copy(),
                             channel=[self.channel[i] for i in lst])

    def kind_of(self, i: int) -> str:
        """The video's kind for evaluation tables: its delivery, its look-alike, or its organic kind."""
        return self.delivery[i] or self.lookalike[i] or self.organic_kind[i]

    def band_of(self, i: int) -> str:
        a = float(self.amplitude[i])
        return "" if not self.delivery[i] else ("<1x" if a < 1.0 else "1-3x" if a <= 3.0 else ">3x")


def _logu(rng, lo, hi, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


# ---------------------------------------------------------------------- organic look-alikes
def _reshape_organic(rng, role: list[str], T: int, start: int):
    """The ``adjust`` hook of ``simulate._organic``: look-alikes and real viral dynamics reshape
    the organic rates (N, 4, T) before counts are drawn. Returns the hook and a dict the
    caller reads afterwards (onsets for minute placement)."""
    notes: dict[str, dict] = {"onset": {}}

    def adjust(lam: np.ndarray, info: dict) -> np.ndarray:
        lam = lam.copy()
        n = lam.shape[0]
        tt = np.arange(T)
        pub = info["pub_idx"]
        age = tt[None, :] - pub[:, None]  # hours since publication (negative before)
        # front-loaded conversation on every upload seen young: comments per like fall ~2x
        # between hours 3-6 and hour 14 (real top posts), likes slightly front-loaded too
        young = (pub >= 0)[:, None] & (age >= 0)
        a = np.maximum(age, 0).astype(float)
        lam[:, _C] *= np.where(young, (0.8 + 2.2 * np.exp(-a / 5.0)) / 1.25, 1.0)
        lam[:, _L] *= np.where(young, (0.9 + 0.5 * np.exp(-a / 8.0)) / 1.05, 1.0)
        for i in range(n):
            r = role[i]
            if r == "viral_post":  # real viral dynamics: early peak at 2-5 h, halved by ~9 h
                tp, k = rng.uniform(2.0, 5.0), rng.uniform(1.0, 1.5)
                u = np.maximum(a[i] + 0.5, 0.05) / tp
                shape = np.where(age[i] >= 0, u**k * np.exp(k * (1.0 - u)) + 0.01, 0.0)
                peak = _logu(rng, 300.0, 20000.0)
                decay = np.maximum(info["decay"][i], 1e-9)
                lam[i] *= (peak * shape / (info["scale"][i] * decay))[None, :] * (age[i] >= 0)[None, :]
                notes["onset"][i] = int(pub[i])
            elif r == "embed":  # views surge, reactions lag (embed viewers rarely react)
                lo = max(int(pub[i]), 0) + 2
                if lo >= T - 12:
                    continue
                t0 = int(rng.integers(lo, T - 12))
                g = sim._surge_shape(tt, np.array([t0]), np.array([_logu(rng, 1.0, 4.0)]),
                                     np.array([_logu(rng, 4.0, 48.0)]))[0]
                f = _logu(rng, 3.0, 50.0)
                rho = rng.uniform(0.02, 0.25)
                lam[i, _V] *= 1.0 + (f - 1.0) * g
                lam[i, 1:] *= 1.0 + (f - 1.0) * rho * g
            elif r == "premiere":  # a scheduled live event hours after its page went up: a
                # waiting room, then everything at once on the hour, live chat
                t0 = min(int(pub[i]) + int(rng.integers(6, 49)), T - 4)
                f = _logu(rng, 5.0, 40.0)
                tau = rng.uniform(1.0, 4.0)
                g = np.where(tt >= t0, np.exp(-(tt - t0) / tau), 0.0)
                rho = np.array([1.0, rng.uniform(1.0, 2.0), rng.uniform(2.0, 6.0), rng.uniform(0.8, 1.5)])
                waiting = np.where((tt >= pub[i]) & (tt < t0), rng.uniform(0.05, 0.3), 1.0)
                lam[i] *= waiting[None, :] * (1.0 + (f - 1.0) * rho[:, None] * g[None, :])
                notes["onset"][i] = t0
            elif r == "second_wave":  # days later, shares lead
                lo = max(int(pub[i]) + 48, 24)
                if lo < T - 12:
                    t0 = int(rng.integers(lo, T - 12))
                    f = _logu(rng, 3.0, 30.0)
                    rise, tau = np.array([_logu(rng, 2.0, 8.0)]), np.array([_logu(rng, 12.0, 48.0)])
                    lead = int(rng.integers(1, 3))
                    g = sim._surge_shape(tt, np.array([t0]), rise, tau)[0]
                    gs = sim._surge_shape(tt, np.array([t0 - lead]), rise, tau)[0]
                    lam[i, :3] *= 1.0 + (f - 1.0) * g
                    lam[i, _S] *= 1.0 + (f - 1.0) * rng.uniform(2.0, 5.0) * gs
            elif r == "fan_pile":  # fans pile onto a new upload: first hours, high reaction rates
                t0 = int(pub[i])
                f = _logu(rng, 3.0, 15.0)
                tau = rng.uniform(0.5, 2.0)
                g = np.where(tt >= t0, np.exp(-(tt - t0) / tau), 0.0)
                rho = np.array([1.0, rng.uniform(1.5, 3.0), rng.uniform(2.0, 4.0), rng.uniform(1.0, 2.0)])
                lam[i] *= 1.0 + (f - 1.0) * rho[:, None] * g[None, :]
            elif r == "tz_move":  # the audience moves time zone: the daily rhythm shifts
                t0 = int(rng.integers(max(int(pub[i]), 0) + 48, T - 24)) if max(int(pub[i]), 0) + 48 < T - 24 else T
                if t0 < T:
                    shift = int(rng.integers(6, 13))
                    d = info["diurnal"][i]
                    moved = np.roll(d, shift)
                    ratio = np.ones(T)
                    ratio[t0:] = moved[t0:] / np.maximum(d[t0:], 1e-6)
                    lam[i] *= ratio[None, :]
        return lam

    return adjust, notes


# ---------------------------------------------------------------------- deliveries
class _Delivery:
    """Places each delivery kind's events minute by minute (rows ``video, t, metric, minute, count``)."""

    def __init__(self, rng, counts: np.ndarray, lam: np.ndarray, pub_idx: np.ndarray, offs: np.ndarray,
                 ratios: np.ndarray, start: int) -> None:
        self.rng = rng
        self.C = counts  # (N, 4, T) modified in place
        self.lam = lam
        self.pub = pub_idx
        self.offs = offs
        self.ratios = ratios
        self.start = start
        n, _, t = counts.shape
        self.T = t
        self.tt = np.arange(t)
        active = self.tt[None, :] >= np.maximum(pub_idx, 0)[:, None]
        masked = np.where(active[:, None, :], counts.astype(float), np.nan)
        self.level = np.nan_to_num(np.nanmedian(masked, axis=2))  # (N, 4) own median hourly level
        self.rows: list[np.ndarray] = []
        self.HM = np.zeros((n, 4, t), dtype=bool)
        self.delivered = np.zeros((n, 4))

    # -- placement helpers ------------------------------------------------------------------
    def _put(self, i: int, m: int, per_minute: np.ndarray, t0: int) -> None:
        """``per_minute`` (H*60,) counts from hour ``t0`` on."""
        per_minute = np.asarray(per_minute, dtype=np.int64)
        k = np.flatnonzero(per_minute > 0)
        if not k.size:
            return
        t = t0 + k // 60
        keep = t < self.T
        k, t = k[keep], t[keep]
        rows = np.stack([np.full(k.size, i), t, np.full(k.size, m), k % 60, per_minute[k]], axis=1)
        self.rows.append(rows)
        np.add.at(self.C[i, m], t, per_minute[k])
        self.HM[i, m, np.unique(t)] = True
        self.delivered[i, m] += per_minute[k].sum()

    def _spread(self, hourly: np.ndarray, step: int = 1, jitter: bool = False) -> np.ndarray:
        """Hourly amounts (H,) -> per minute, in increments every ``step`` minutes (a drip), or
        at random minutes (``jitter``: organic-like placement)."""
        hourly = np.rint(np.asarray(hourly, dtype=float)).astype(np.int64)
        out = np.zeros(hourly.size * 60, dtype=np.int64)
        slots = np.arange(0, 60, step)
        for h, n in enumerate(hourly.tolist()):
            if n <= 0:
                continue
            if jitter:
                out[h * 60 : h * 60 + 60] = self.rng.multinomial(n, np.full(60, 1 / 60))
            else:
                parts = np.full(slots.size, n // slots.size)
                parts[: n % slots.size] += 1
                out[h * 60 + slots] = self.rng.permutation(parts)
        return out

    def _rate(self, i: int, m: int, a: float, hours: int) -> float:
        """Hourly delivery at amplitude ``a`` of the video's own level, never below a panel's
        smallest order over the delivery."""
        return max(a * max(self.level[i, m], 0.5), 1.25 * MIN_ORDER[m] / max(hours, 1))  # 1.25: jitter

    def _after(self, i: int, lo_age: int, length: int) -> int | None:
        lo = max(int(self.pub[i]) + lo_age, 0)
        hi = self.T - length
        return int(self.rng.integers(lo, hi + 1)) if hi >= lo else None

    # -- the kinds ---------------------------------------------------------------------------
    def drip_feed(self, i: int, a: float) -> dict | None:
        d = int(self.rng.integers(12, 97))
        s = self._after(i, 1, d)
        if s is None:
            return None
        ms = [(_V,), (_L,), (_V, _L)][self.rng.choice(3, p=[0.6, 0.25, 0.15])]
        step = int(self.rng.choice([1, 2, 5, 10]))
        for m in ms:
            r = self._rate(i, m, a, d)
            self._put(i, m, self._spread(r * self.rng.uniform(0.95, 1.05, d), step), s)
        return {"hours": [s, s + d], "metrics": list(ms), "step_minutes": step}

    def ramp(self, i: int, a: float) -> dict | None:
        d = int(self.rng.integers(6, 25))
        s = self._after(i, 1, d)
        if s is None:
            return None
        rise = self.rng.uniform(1.5, d / 2)
        k = np.arange(d, dtype=float)
        shape = (1 - np.exp(-(k + 1) / rise)) * np.exp(-k / (d * self.rng.uniform(0.5, 1.5)))
        shape /= shape.mean()
        views = self._rate(i, _V, a, d) * shape
        vm = self._spread(views, jitter=True)
        self._put(i, _V, vm, s)
        exact = self.rng.random() < 0.5
        if exact:  # reactions follow at one exact ratio, minute by minute
            kl = float(np.clip(max(self.ratios[i, 0], 0.02) * self.rng.uniform(1.0, 2.5), 0.02, 0.3))
            self._put(i, _L, np.floor(kl * vm + 0.5), s)
        return {"hours": [s, s + d], "metrics": ["views", "likes"] if exact else ["views"], "variant":
                "exact_ratio" if exact else "views_only", "pattern": "lockstep" if exact else "ratio_anomaly"}

    def revival(self, i: int, a: float) -> dict | None:
        d = int(self.rng.integers(24, 73))
        s = self._after(i, 72, d)
        if s is None:
            return None
        with_likes = self.rng.random() < 0.6
        v = self._rate(i, _V, a, d)
        vm = self._spread(v * self.rng.uniform(0.9, 1.1, d), int(self.rng.choice([1, 5, 10])))
        self._put(i, _V, vm, s)
        ms = ["views"]
        if with_likes:
            kl = max(self.ratios[i, 0], 0.01) * self.rng.uniform(0.5, 1.5)
            self._put(i, _L, self.rng.binomial(vm, min(kl, 0.5)), s)
            ms.append("likes")
        return {"hours": [s, s + d], "metrics": ms}

    def _reactions_only(self, i: int, a: float, m: int) -> dict | None:
        d = int(self.rng.integers(24, 73))
        s = self._after(i, 1, d)
        if s is None:
            return None
        r = self._rate(i, m, a, d)
        per_min = self.rng.poisson(r / 60.0, d * 60)
        if per_min.sum() < MIN_ORDER[m]:
            per_min[self.rng.integers(0, d * 60, int(MIN_ORDER[m]))] += 1
        self._put(i, m, per_min, s)
        return {"hours": [s, s + d], "metrics": [("views", "likes", "comments", "shares")[m]]}

    def likes_only(self, i: int, a: float) -> dict | None:
        return self._reactions_only(i, a, _L)

    def comments_only(self, i: int, a: float) -> dict | None:
        return self._reactions_only(i, a, _C)

    def scheduled_bursts(self, i: int, a: float) -> dict | None:
        d = int(self.rng.integers(12, 73))
        s = self._after(i, 1, d)
        if s is None:
            return None
        period = int(self.rng.choice([15, 30, 60, 120, 180, 360]))
        ms = [(_V,), (_L,), (_V, _L)][self.rng.choice(3, p=[0.4, 0.4, 0.2])]
        first = int(self.rng.integers(0, min(period, 60)))
        times = np.arange(first, d * 60, period)
        sizes = {}
        for m in ms:
            size = max(round(a * max(self.level[i, m], 0.5) * period / 60.0), int(MIN_ORDER[m]))
            per_min = np.zeros(d * 60, dtype=np.int64)
            per_min[times] = size
            self._put(i, m, per_min, s)
            sizes[("views", "likes")[m]] = size
        return {"hours": [s, s + d], "metrics": [("views", "likes")[m] for m in ms], "period_minutes": period,
                "minute": first % 60, "sizes": sizes}

    def bot_proportions(self, i: int, a: float) -> dict | None:
        d = int(self.rng.integers(12, 49))
        s = self._after(i, 1, d)
        if s is None:
            return None
        vm = self.rng.poisson(self._rate(i, _V, a, d) / 60.0, d * 60)
        kl = float(np.clip(max(self.ratios[i, 0], 0.02) * self.rng.uniform(1.0, 2.0), 0.02, 0.3))
        kc = float(self.rng.uniform(0.005, 0.03))
        self._put(i, _V, vm, s)
        self._put(i, _L, np.floor(kl * vm + 0.5), s)
        self._put(i, _C, np.floor(kc * vm + 0.5), s)
        return {"hours": [s, s + d], "metrics": ["views", "likes", "comments"], "k_likes": kl, "k_comments": kc}

    def shift_farm(self, i: int, a: float) -> dict | None:
        days = int(self.rng.integers(3, 7))
        s = self._after(i, 1, days * 24)
        if s is None:
            return None
        zone = int(self.rng.choice([5, 6, 7, 8, -3, 3]))
        begin, length = int(self.rng.integers(8, 11)), int(self.rng.integers(8, 11))
        local = (self.start + s + np.arange(days * 24) + zone) % 24
        on = (local >= begin) & (local < begin + length)
        r = self._rate(i, _V, a, int(on.sum()))
        hourly = np.where(on, r * self.rng.uniform(0.8, 1.2, on.size), 0.0)
        self._put(i, _V, self._spread(hourly, jitter=True), s)
        return {"hours": [s, s + days * 24], "metrics": ["views"], "zone": zone, "shift": [begin, begin + length]}

    def pod(self, i: int, a: float) -> dict | None:
        if self.pub[i] < 0 or self.pub[i] > self.T - 4:
            return None
        s, d = int(self.pub[i]), int(self.rng.integers(1, 4))
        size = int(max(round(a * max(self.level[i, _V], 1.0) * d), 10))  # pod members, each views then reacts
        for m, share in ((_V, 1.0), (_L, self.rng.uniform(0.8, 1.0)), (_C, self.rng.uniform(0.4, 0.8)),
                         (_S, self.rng.uniform(0.0, 0.3))):
            n = int(round(size * share))
            per_min = np.zeros(d * 60, dtype=np.int64)
            if n:
                np.add.at(per_min, self.rng.integers(0, d * 60, n), 1)
            self._put(i, m, per_min, s)
        return {"hours": [s, s + d], "metrics": ["views", "likes", "comments"], "members": size}


def simulate_market(n_videos: int, seed: int, hours: int = 168, fake_fraction: float = 0.36,
                    start_hour: int | None = None, id_prefix: str = "m", texture=None,
                    kinds: tuple[str, ...] = DELIVERY_KINDS, lookalikes: tuple[str, ...] = LOOKALIKE_KINDS,
                    lookalike_share: float = LOOKALIKE_SHARE) -> MarketDataset:
    """``n_videos`` videos over ``hours`` hours: ``fake_fraction`` get one delivery (kinds in
    turn, amplitudes log-uniform over ``AMPLITUDE_RANGE``), ``lookalike_share`` of the organic
    ones one look-alike (in turn), the rest plain organic kinds of ``simulate``. Seeded."""
    n, t = int(n_videos), int(hours)
    start = sim.DEFAULT_START_HOUR if start_hour is None else int(start_hour)
    rng = np.random.default_rng([int(seed), 2021])
    n_fake = int(round(fake_fraction * n))
    order = rng.permutation(n)
    fake_idx = np.sort(order[:n_fake])
    organic_idx = order[n_fake:]
    n_look = int(round(lookalike_share * organic_idx.size)) if lookalikes else 0
    look_idx = np.sort(organic_idx[:n_look])
    delivery = [""] * n
    lookalike = [""] * n
    for j, i in enumerate(fake_idx.tolist()):
        delivery[i] = kinds[j % len(kinds)]
    for j, i in enumerate(look_idx.tolist()):
        lookalike[i] = lookalikes[j % len(lookalikes)]
    role = [delivery[i] or lookalike[i] for i in range(n)]
    young = {"premiere", "fan_pile", "viral_post", "pod"}
    in_window = np.array([1 if r in young else 0 if r in ("revival", "second_wave") else -1 for r in role])

    kind = rng.choice(len(ORGANIC_KINDS), size=n, p=sim.ORGANIC_MIX)
    kind[[i for i in range(n) if role[i]]] = ORGANIC_KINDS.index("regular")  # roles reshape a regular curve
    trng = np.random.default_rng([int(seed), 17])
    if texture is not None:
        regular = kind == ORGANIC_KINDS.index("regular")
        kind[regular & (trng.random(n) < sim.REAL_TEXTURED_SHARE)] = ORGANIC_KINDS.index("real_textured")
    tex = sim._texture(trng, texture, n, t, kind, start)
    room = np.full(n, 24, dtype=np.int64)
    room[[i for i in range(n) if role[i] in young]] = 30
    adjust, notes = _reshape_organic(np.random.default_rng([int(seed), 29]), role, t, start)
    org = sim._organic(rng, n, t, start, kind, room, tex if texture is not None else None, adjust=adjust,
                       in_window=in_window)
    counts = org["counts"]
    organic_counts = counts.astype(np.float64)

    deliver = _Delivery(np.random.default_rng([int(seed), 31]), counts, org["lam"], org["pub_idx"], org["offs"],
                        org["ratios"], start)
    amplitude = np.zeros(n)
    injections: list[list[dict]] = [[] for _ in range(n)]
    pattern = [""] * n
    arng = np.random.default_rng([int(seed), 37])
    for i in fake_idx.tolist():
        k = delivery[i]
        a = float(_logu(arng, *AMPLITUDE_RANGE))
        info = getattr(deliver, k)(i, a)
        if info is None:  # the kind did not fit this video: a drip-feed always does, almost
            k = delivery[i] = "drip_feed"
            info = deliver.drip_feed(i, a)
        if info is None or not deliver.delivered[i].any():  # nothing placed: an organic video after all
            delivery[i] = ""
            continue
        info["metrics"] = [m if isinstance(m, str) else METRICS[m] for m in info["metrics"]]
        main = METRICS.index(info["metrics"][0])  # the amplitude is the first delivered metric's
        lo, hi = info["hours"]
        active_hours = max(int(deliver.HM[i, main].sum()), 1)
        amplitude[i] = deliver.delivered[i, main] / active_hours / max(deliver.level[i, main], 0.5)
        pattern[i] = info.pop("pattern", EXPECTED_PATTERN[k])
        injections[i].append({"pattern": pattern[i], "delivery": k, "amplitude": round(float(amplitude[i]), 3),
                              **{key: v for key, v in info.items() if key != "hours"}, "hours": [lo, hi]})

    hour_fake = deliver.HM.any(axis=1)
    label = hour_fake.any(axis=1).astype(np.int64)
    extras = [r for r in deliver.rows if r.size]
    minute_extras = np.concatenate(extras).astype(np.int64) if extras else np.zeros((0, 5), dtype=np.int64)
    onsets = [org["minute_onsets"]]
    # a premiere's audience waits for it: a share of its first hour arrives in its first minutes
    prem_rows = []
    prng = np.random.default_rng([int(seed), 41])
    for i, t0 in notes["onset"].items():
        if role[i] != "premiere" or not 0 <= t0 < t:
            continue
        m0 = 0  # on the hour
        for m in range(4):
            rush = int(organic_counts[i, m, t0] * prng.uniform(0.2, 0.5))
            if rush:
                parts = prng.multinomial(rush, np.full(min(5, 60 - m0), 1 / min(5, 60 - m0)))
                prem_rows += [(i, t0, m, m0 + j, int(c)) for j, c in enumerate(parts.tolist()) if c]
    if prem_rows:
        minute_extras = np.concatenate([minute_extras, np.array(prem_rows, dtype=np.int64)])
    offs, nz, wz = org["offs"], org["nz"], org["wz"]
    channels = _channels(np.random.default_rng([int(seed), 43]), n, id_prefix, seed)
    hp = np.zeros((n, len(sim.PATTERNS), t), dtype=bool)
    organic_kind = [lookalike[i] or ORGANIC_KINDS[kind[i]] for i in range(n)]
    return MarketDataset(
        video_ids=[f"{id_prefix}{seed}-{i:06d}" for i in range(n)],
        start_hour=start,
        counts=counts.astype(np.float64),
        hour_fake=hour_fake,
        hour_patterns=hp,
        hour_metrics=deliver.HM,
        label=label,
        pattern=pattern,
        organic_kind=organic_kind,
        category=[sim.CATEGORIES[c] for c in org["cat"].tolist()],
        published_hour=(start + org["pub_idx"]).astype(np.int64),
        timezone_offsets=[offs[i, : nz[i]].tolist() for i in range(n)],
        seed=int(seed),
        organic_counts=organic_counts,
        timezone_weights=[[round(float(w), 4) for w in wz[i, : nz[i]]] for i in range(n)],
        published_minute=org["pub_minute"].astype(np.int64),
        injections=injections,
        minute_extras=minute_extras,
        minute_onsets=np.concatenate(onsets) if onsets else np.zeros((0, 4)),
        texture_source=tex[3] if texture is not None else [],
        delivery=delivery,
        lookalike=lookalike,
        amplitude=amplitude,
        fake_events=deliver.delivered,
        channel=channels,
    )


def _channels(rng, n: int, prefix: str, seed: int) -> list[str]:
    """Each video's channel: creators with 1-8 videos in the set (heavy-tailed)."""
    out, i, c = [], 0, 0
    while i < n:
        k = int(min(rng.zipf(2.0), 8))
        out += [f"ch-{prefix}{seed}-{c:05d}"] * k
        i += k
        c += 1
    out = out[:n]
    return [out[j] for j in rng.permutation(n)]
