"""Evaluate the user level as it runs: account events replayed in event time through the
account state and judgement the worker uses (``stream_detector.accounts``), on a simulated
world of accounts (``dev/accounts.py``): account precision / recall / FPR by role (fans,
shared networks, very active users and embed viewers as their own rows), group recovery,
time from a farm's first bought action to its first account flag, and what the flagged
accounts do for the video level.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_detector.accounts import (
    JUDGE_EVERY_MIN,
    MIN_ACTIONS,
    QUIET_AFTER_MIN,
    SUSPECT_P,
    AccountJudge,
    Action,
    InMemoryAccountStore,
    carried_share,
    carried_suspicion,
    channel_hash,
    group_of,
    near_hours,
    next_quiet_judgement,
    suspicion,
)
from stream_detector.dev.accounts import FAKE_ROLES, ROLES, AccountWorld


@dataclass
class AccountRun:
    first_flag: np.ndarray  # (A,) event minute of the first flag (-1 never)
    score: np.ndarray  # (A,) highest score seen
    patterns: list[set[str]]  # per account, the patterns it was flagged with
    group: list[str | None]  # per account, the group id of its first flag
    judged: int
    seconds: float
    # (video, hour from the week's start) -> event minute from the week's start at which flagged
    # accounts came to carry that hour (``accounts.carried_share``); None where not replayed
    carried_at: dict[tuple[int, int], int] | None = None


SUSPICION_DELAY_MIN = 120  # the video level judges an hour once it and the hour after it closed


def replay_accounts(world: AccountWorld, *, step_minutes: int = 10, judge: AccountJudge | None = None,
                    hour_p: np.ndarray | None = None, suspect_at: np.ndarray | None = None,
                    suspect: float = SUSPECT_P, quiet_after: Sequence[int] = QUIET_AFTER_MIN) -> AccountRun:
    """Apply the world's actions in event time, ``step_minutes`` at a time, and judge the
    accounts touched (each at most every ``JUDGE_EVERY_MIN`` minutes, from ``MIN_ACTIONS``), as
    the worker does.
    ``hour_p`` (N, T): the video level's hour probabilities (``stream_eval.replay``'s
    ``hour_p``), put on the user level's scale with the model's ``suspect`` threshold
    (``Thresholds.suspect``, ``stream_eval.StreamRun.suspect``) as the worker does; ``suspect_at`` (N, T): the event minute from which each hour is known as
    suspicious (``stream_eval.replay``'s, as the worker learns it), else hindsight: every hour
    at or above ``suspect`` at any scoring is known ``SUSPICION_DELAY_MIN`` after it began (on
    a market week the video level's suspicion comes a median 4 hours after the hour began, and
    14 hours at the 75th percentile; the hindsight took week A's account recall from 0.56 to 0.79).
    As in the worker (``AccountLoop.note_suspicion``), the accounts that engaged a video in an
    hour are judged again when that hour becomes suspicious, or when flagged
    accounts come to carry it (``accounts.carried_share``: the worker notes it when it scores
    the video again, which a new account flag asks for; here from the next step).
    An account judged and not flagged is judged again when it has been quiet ``quiet_after``
    minutes (``accounts.next_quiet_judgement``), as the worker's quiet schedule does."""
    t0 = time.perf_counter()
    judge = judge or AccountJudge()
    d = world.data
    a = world.actions
    order = np.lexsort((a[:, 3], a[:, 0], a[:, 1]))
    a = a[order]
    base = int(d.start_hour) * 60
    ch = np.array([channel_hash(c, v) for c, v in zip(d.channel, d.video_ids, strict=True)])
    store = InMemoryAccountStore()
    n_acc = len(world.account_ids)
    first = np.full(n_acc, -1, dtype=np.int64)
    best = np.zeros(n_acc)
    pats: list[set[str]] = [set() for _ in range(n_acc)]
    group: list[str | None] = [None] * n_acc
    last_judged = np.full(n_acc, -10**9, dtype=np.int64)
    n_actions = np.zeros(n_acc, dtype=np.int64)
    index = {u: k for k, u in enumerate(world.account_ids)}
    video_index = {v: k for k, v in enumerate(d.video_ids)}
    judged = 0
    minutes = a[:, 1]
    bounds = np.searchsorted(minutes, np.arange(0, d.hours * 60 + step_minutes, step_minutes))
    # (video, hour) that become suspicious, by the minute the video level knows it
    if hour_p is not None:
        if suspect_at is None:  # hindsight: known once the hour and the next closed
            known_minute = np.arange(d.hours) * 60 + SUSPICION_DELAY_MIN
            suspect_at = np.where(hour_p >= suspect, known_minute[None, :], -1)
        hour_p = suspicion(hour_p, suspect)
    known_at: dict[int, list[tuple[int, int]]] = {}
    if suspect_at is not None:
        for v, h in zip(*np.nonzero(suspect_at >= 0), strict=True):
            known_at.setdefault(int(suspect_at[v, h]), []).append((int(v), int(h)))

    def engaged_in(v: int, h: int) -> set[int]:  # the engagers the worker finds there (latest minute)
        near = near_hours(h)
        return {index[u] for u in store.engaged_in(d.video_ids[v], int(d.start_hour) + near[0], hours=len(near))}

    quiet: list[tuple[int, int]] = []  # (event minute from base, account): its next quiet judgement
    quiet_at = np.full(n_acc, -1, dtype=np.int64)
    pending = sorted(known_at)
    next_known = 0
    hour_actions: dict[tuple[int, int], int] = {}  # (video, hour) -> account actions
    hour_flagged: dict[tuple[int, int], int] = {}  # ... of accounts flagged by then
    carried: dict[tuple[int, int], float] = {}  # (video, hour) -> its suspicion, once carried
    carried_at: dict[tuple[int, int], int] = {}  # (video, hour) -> the event minute it came to be carried
    newly_carried: list[tuple[int, int]] = []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        due: set[int] = set()
        step_end = (s + 1) * step_minutes
        while next_known < len(pending) and pending[next_known] < step_end:
            for v, h in known_at[pending[next_known]]:  # its engagers and those of the hours next to it
                due |= engaged_in(v, h)
            next_known += 1
        for v, h in newly_carried:
            due |= engaged_in(v, h)
        newly_carried = []
        while quiet and quiet[0][0] < step_end:
            m, k = heapq.heappop(quiet)
            if quiet_at[k] == m:
                due.add(k)
                quiet_at[k] = -1
        if lo == hi and not due:
            continue
        rows = a[lo:hi]
        # one Action per (video, minute, account): counts per metric
        per: dict[tuple[int, int, int], list[int]] = {}
        for v, m, metric, acc, cnt, _fake in rows.tolist():
            c = per.setdefault((acc, v, m), [0, 0, 0, 0])
            c[metric] += cnt
        batch: dict[str, list[Action]] = {}
        for (acc, v, m), c in per.items():
            batch.setdefault(world.account_ids[acc], []).append(
                Action(base + m, d.video_ids[v], int(ch[v]), (c[0], c[1], c[2], c[3])))
        store.apply(batch)
        now = base + step_end - 1
        counted: set[tuple[int, int]] = set()
        for acc, v, m in per:
            hour_actions[(v, m // 60)] = hour_actions.get((v, m // 60), 0) + 1
            if first[acc] >= 0:  # a flagged account's later actions count as they arrive
                hour_flagged[(v, m // 60)] = hour_flagged.get((v, m // 60), 0) + 1
                counted.add((v, m // 60))
        for user, acts in batch.items():
            n_actions[index[user]] += len(acts)
        touched = [index[u] for u in batch]
        for k in touched + sorted(due - set(touched)):
            user = world.account_ids[k]
            if n_actions[k] < MIN_ACTIONS or (k not in due and now - last_judged[k] < JUDGE_EVERY_MIN):
                continue
            last_judged[k] = now
            act = store.activity[user]
            susp = {}
            for video, hour in judge.suspicion_queries(act):  # the model's hour, or flagged accounts carrying it
                v, h = video_index[video], hour - int(d.start_hour)
                known = suspect_at is not None and 0 <= h < d.hours and 0 <= suspect_at[v, h] <= now - base
                p = max(carried.get((v, h), 0.0), float(hour_p[v, h]) if known else 0.0)
                if p:  # an hour of probability 0 is no evidence either way: left out
                    susp[(video, hour)] = p
            sc = judge.judge(act, store.co_engagers(judge.sync_queries(act)), susp)
            judged += 1
            best[k] = max(best[k], sc.score)
            if not sc.flagged and first[k] < 0:
                q = next_quiet_judgement(act.last_minute - base, now - base, quiet_after)
                if q is not None and q != quiet_at[k]:
                    quiet_at[k] = q
                    heapq.heappush(quiet, (q, k))
            if sc.flagged:
                pats[k] |= set(sc.patterns)
                if first[k] < 0:
                    first[k] = now - base
                    g = group_of(user, sc.partners)
                    group[k] = g["group_id"] if g else None
                    for x in act.actions:  # its actions count as flagged in their videos' hours
                        vh = (video_index[x.video_id], x.minute // 60 - int(d.start_hour))
                        hour_flagged[vh] = hour_flagged.get(vh, 0) + 1
                        counted.add(vh)
        for vh in sorted(counted - set(carried)):
            share = carried_share(hour_actions.get(vh, 0), hour_flagged[vh])
            if share:
                carried[vh] = carried_suspicion(share)
                carried_at[vh] = step_end
                newly_carried.append(vh)
    return AccountRun(first, best, pats, group, judged, time.perf_counter() - t0, carried_at)


def account_metrics(run: AccountRun, world: AccountWorld) -> dict:
    """Account precision / recall / FPR by role, group recovery, time to first flag, and the
    video-level share of engagement from flagged accounts."""
    flagged = run.first_flag >= 0
    n = np.bincount(world.actions[:, 3], weights=world.actions[:, 4], minlength=len(world.account_ids))
    judged = n >= MIN_ACTIONS
    fake = world.fake_accounts
    role = np.array([ROLES[r] for r in world.role])
    tp = int((flagged & fake & judged).sum())
    fp = int((flagged & ~fake & judged).sum())
    out: dict = {
        "accounts_judged": int(judged.sum()),
        "fake_accounts": int((fake & judged).sum()),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(int((fake & judged).sum()), 1),
        "recall_all_active": int((flagged & fake).sum()) / max(int((fake & (n > 0)).sum()), 1),
        "fpr": fp / max(int((~fake & judged).sum()), 1),
        "flagged_by_role": {},
        "recall_by_stealth": {},
        "judgements": run.judged,
        "seconds": run.seconds,
    }
    for r in ROLES:
        sel = judged & (role == r)
        if sel.any():
            out["flagged_by_role"][r] = float(flagged[sel].mean())
    first_fake = _first_fake_minute(world)
    delays, coverage, purity = [], [], []
    for g in world.groups:
        if g["kind"] not in FAKE_ROLES:
            continue
        members = np.flatnonzero(world.group == g["id"]) if "id" in g else np.zeros(0, dtype=int)
        members = members[np.isin(world.role[members], [ROLES.index(r) for r in FAKE_ROLES])]
        active = members[judged[members]]
        if not active.size:
            continue
        caught = active[flagged[active]]
        coverage.append(len(caught) / len(active))
        stealth = g.get("stealth", g["kind"])
        out["recall_by_stealth"].setdefault(stealth, []).append(len(caught) / len(active))
        if caught.size:
            ids = [run.group[k] for k in caught.tolist() if run.group[k]]
            if ids:
                purity.append(max(ids.count(x) for x in set(ids)) / len(ids))
            t_first = int(run.first_flag[caught].min())
            start = first_fake.get(int(g["id"]))
            if start is not None:
                delays.append(max(0, t_first - start) / 60.0)
    out["recall_by_stealth"] = {k: float(np.mean(v)) for k, v in out["recall_by_stealth"].items()}
    out["groups_found"] = float(np.mean([c > 0 for c in coverage])) if coverage else None
    out["group_member_recall"] = float(np.mean(coverage)) if coverage else None
    out["group_purity"] = float(np.mean(purity)) if purity else None
    out["hours_to_first_account_flag_median"] = float(np.median(delays)) if delays else None
    out["hours_to_first_account_flag_max"] = float(np.max(delays)) if delays else None
    out.update(_video_effect(world, flagged))
    if run.carried_at is not None:
        out.update(_later_customers(run, world))
    return out


def _later_customers(run: AccountRun, world: AccountWorld) -> dict:
    """What an account flag is for: the farm's (or pod's) next customers. Per customer whose
    delivery began after the group's first account flag, whether flagged accounts came to carry
    one of its bought hours (the video level then flags it with ``coordinated_accounts`` once the
    hour is confirmed, whatever its counts), and how many event hours after its first bought
    action the first such hour was carried."""
    a = world.actions[world.actions[:, 5] == 1]
    grp = world.group[a[:, 3]]
    carried_hours: dict[int, list[tuple[int, int]]] = {}
    for (v, h), m in run.carried_at.items():
        carried_hours.setdefault(v, []).append((h, m))
    later = caught = 0
    delays: list[float] = []
    for g in world.groups:
        if g["kind"] not in FAKE_ROLES or "id" not in g:
            continue
        members = np.flatnonzero(world.group == g["id"])
        flagged = run.first_flag[members]
        flagged = flagged[flagged >= 0]
        if not flagged.size:
            continue
        t_first = int(flagged.min())
        mine = a[grp == g["id"]]
        for v in np.unique(mine[:, 0]).tolist():
            start = int(mine[mine[:, 0] == v, 1].min())
            if start < t_first:
                continue
            later += 1
            known = [m for h, m in carried_hours.get(v, []) if h >= start // 60]
            if known:
                caught += 1
                delays.append(max(0, min(known) - start) / 60.0)
    return {
        "later_customers": later,
        "later_customers_carried": caught / later if later else None,
        "later_customers_hours_to_carried_median": float(np.median(delays)) if delays else None,
        "later_customers_carried_within_1h": sum(d <= 1.0 for d in delays) / later if later else None,
    }


def _first_fake_minute(world: AccountWorld) -> dict[int, int]:
    a = world.actions[world.actions[:, 5] == 1]
    out: dict[int, int] = {}
    grp = world.group[a[:, 3]]
    for g in np.unique(grp).tolist():
        out[int(g)] = int(a[grp == g, 1].min())
    return out


def _video_effect(world: AccountWorld, flagged: np.ndarray, share: float = 0.3, min_accounts: int = 5) -> dict:
    """Per video: is some hour carried by flagged accounts (>= ``share`` of its account actions,
    from >= ``min_accounts`` flagged accounts)? That is what the video level can use: recall on
    bought videos, and how often it would touch organic ones, per kind."""
    d = world.data
    a = world.actions
    hour = a[:, 1] // 60
    key = a[:, 0] * d.hours + hour
    tot = np.bincount(key, weights=a[:, 4], minlength=len(d) * d.hours).reshape(len(d), d.hours)
    fl = flagged[a[:, 3]]
    ftot = np.bincount(key[fl], weights=a[fl, 4], minlength=len(d) * d.hours).reshape(len(d), d.hours)
    accs = {}
    for v, h, acc in zip(a[fl, 0].tolist(), hour[fl].tolist(), a[fl, 3].tolist(), strict=True):
        accs.setdefault((v, h), set()).add(acc)
    carried = np.zeros((len(d), d.hours), dtype=bool)
    for (v, h), s in accs.items():
        if len(s) >= min_accounts and ftot[v, h] >= share * tot[v, h]:
            carried[v, h] = True
    hit = carried.any(axis=1)
    labels = np.asarray(d.label, dtype=bool)
    kinds = [d.kind_of(i) for i in range(len(d))]
    out = {"video_recall_by_accounts": float(hit[labels].mean()) if labels.any() else None,
           "video_fpr_by_accounts": float(hit[~labels].mean()) if (~labels).any() else None,
           "video_by_kind": {}}
    for k in sorted(set(kinds)):
        sel = np.array([x == k for x in kinds])
        out["video_by_kind"][k] = float(hit[sel].mean())
    return out
