"""A batch CopyCatch oracle: lockstep groups found with the whole week in hindsight.

CopyCatch (Beutel et al., WWW 2013) looks for groups of at least ``n`` accounts that each
engaged at least ``m`` of the same targets, each within +-dt of one time per target. It is a
batch method with every action known; the stream's user level (``stream_detector.accounts``)
judges each account from what it has seen so far. Run on the same simulated week, the oracle
says how much lockstep evidence there is to find at all, beside what the stream finds.

This is an approximation of CopyCatch's search, as a baseline rather than a copy of it:

- two actions are "in lockstep on a video" when they fall in the same cell of width 2 dt on
  one of two grids offset by dt (any two actions less than dt apart share a cell on one of
  them; actions up to 2 dt apart may);
- a cell with more than ``crowd`` accounts is a crowd and says nothing about who is with whom
  (a viral video's viewers co-engage by chance; the stream's ``SYNC_SMALL``);
- two accounts are linked when they were in lockstep on at least ``m`` distinct videos;
- a group is what remains of a connected component of links after peeling, repeatedly, every
  account with fewer than ``n - 1`` links in it (its ``n - 1``-core), if at least ``n`` remain:
  every member was in lockstep with ``n - 1`` others of its group on ``m`` videos each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from training.account_eval import AccountRun


@dataclass
class CopyCatch:
    """Lockstep groups of accounts in a batch of actions. ``fit(video, minute, account)``;
    learned: ``group_`` (per account, its group or -1), ``n_groups_``, ``links_``, ``seconds_``."""

    n: int = 5  # accounts in a group, at least
    m: int = 3  # distinct videos each linked pair was in lockstep on, at least
    within_min: int = 30  # dt: +-this many minutes
    crowd: int = 150  # accounts in one cell above which it says nothing

    def get_params(self) -> dict:
        return {"n": self.n, "m": self.m, "within_min": self.within_min, "crowd": self.crowd}

    def fit(self, video: np.ndarray, minute: np.ndarray, account: np.ndarray, n_accounts: int | None = None,
            ) -> CopyCatch:
        t0 = time.perf_counter()
        if self.n < 2 or self.m < 1 or self.within_min < 1 or self.crowd < 2:
            raise ValueError(f"CopyCatch parameters out of range: {self.get_params()}")
        video, minute, account = (np.asarray(x, dtype=np.int64) for x in (video, minute, account))
        n_acc = int(n_accounts if n_accounts is not None else (account.max() + 1 if account.size else 0))
        width = 2 * self.within_min
        pairs, pair_videos = [], []
        for offset in (0, self.within_min):
            cell = (minute + offset) // width
            # one row per (video, cell, account): an account acting twice in a cell is there once
            key = np.unique(np.stack([video, cell, account], axis=1), axis=0)
            starts = np.flatnonzero(np.r_[True, np.any(key[1:, :2] != key[:-1, :2], axis=1)])
            sizes = np.diff(np.r_[starts, len(key)])
            for size in np.unique(sizes[(sizes >= 2) & (sizes <= self.crowd)]).tolist():
                at = starts[sizes == size]  # every cell of this many accounts, at once
                a, b = np.triu_indices(size, k=1)
                members = key[at[:, None] + np.arange(size)[None, :], 2]  # (cells, size), sorted
                pairs.append((members[:, a] * n_acc + members[:, b]).ravel())
                pair_videos.append(np.repeat(key[at, 0], len(a)))
        self.links_ = 0
        self.group_ = np.full(n_acc, -1, dtype=np.int64)
        self.n_groups_ = 0
        if pairs:
            pv = np.unique(np.stack([np.concatenate(pairs), np.concatenate(pair_videos)], axis=1), axis=0)
            pair, count = np.unique(pv[:, 0], return_counts=True)
            linked = pair[count >= self.m]
            self.links_ = int(linked.size)
            self._groups(linked // n_acc, linked % n_acc, n_acc)
        self.seconds_ = time.perf_counter() - t0
        return self

    def _groups(self, a: np.ndarray, b: np.ndarray, n_acc: int) -> None:
        alive = np.ones(a.size, dtype=bool)
        while True:  # the (n-1)-core: peel accounts with too few links until none is left to peel
            degree = np.bincount(np.r_[a[alive], b[alive]], minlength=n_acc)
            weak = degree < self.n - 1
            drop = alive & (weak[a] | weak[b])
            if not drop.any():
                break
            alive &= ~drop
        a, b = a[alive], b[alive]
        if not a.size:
            return
        graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n_acc, n_acc))
        _, label = connected_components(graph, directed=False)
        in_core = np.zeros(n_acc, dtype=bool)
        in_core[a] = in_core[b] = True
        sizes = np.bincount(label[in_core], minlength=label.max() + 1)
        keep = in_core & (sizes[label] >= self.n)
        ids = {c: k for k, c in enumerate(np.unique(label[keep]).tolist())}
        self.group_[keep] = [ids[c] for c in label[keep].tolist()]
        self.n_groups_ = len(ids)


def oracle_run(world, oracle: CopyCatch):
    """``oracle`` fitted on a world's actions, as an ``account_eval.AccountRun`` (flagged at the
    week's end: a batch method has no time to a first flag), so ``account_metrics`` scores it
    like the stream's user level."""
    a = world.actions
    oracle.fit(a[:, 0], a[:, 1], a[:, 3], len(world.account_ids))
    found = oracle.group_ >= 0
    return AccountRun(first_flag=np.where(found, world.data.hours * 60, -1), score=found.astype(float),
                      patterns=[{"copycatch"} if f else set() for f in found.tolist()],
                      group=[f"copycatch-{g}" if g >= 0 else None for g in oracle.group_.tolist()],
                      judged=0, seconds=oracle.seconds_)
