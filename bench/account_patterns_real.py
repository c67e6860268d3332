"""The user level's activity patterns on real accounts: how often each fires where no farm is.

Real per-account activity (``stream_detector/dev/real_accounts``: 218,971 posts by 58,317
accounts over six weeks of the 2021 German election campaign, MIT) cut into account-weeks of
``accounts.DAYS`` days, each an ``AccountActivity`` judged by ``AccountJudge`` with no video-level
suspicion and no co-engagers: only the patterns an account's own activity can break
(``no_sleep``, ``shift_hours``, ``regular``, ``rate``). The data is about political posting, not
viewing, and it may hold some real automation (the source is a package for finding coordinated
accounts): a pattern firing here is an upper bound of its organic rate on people who post.

    .venv/bin/python bench/account_patterns_real.py            # ~1 min
    .venv/bin/python bench/account_patterns_real.py --json
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_detector.accounts import (  # noqa: E402
    DAYS,
    MIN_ACTIONS,
    SHIFT_MIN_HOURS,
    THRESHOLD,
    AccountActivity,
    AccountJudge,
    Action,
)
from stream_detector.dev.accounts import REAL_ACCOUNTS  # noqa: E402

OWN_PATTERNS = ("no_sleep", "shift_hours", "regular", "rate")


def account_weeks(path: Path = REAL_ACCOUNTS) -> list[AccountActivity]:
    """Every account's activity per ``DAYS``-day week of the data (weeks with >= MIN_ACTIONS posts)."""
    minutes: dict[str, list[int]] = defaultdict(list)
    with gzip.open(path, "rt") as f:
        for row in csv.DictReader(f):
            minutes[row["account_id"]].append(int(float(row["ts"])) // 60)
    start = min(min(m) for m in minutes.values()) // 1440
    out = []
    for user, ms in minutes.items():
        by_week: dict[int, list[int]] = defaultdict(list)
        for m in ms:
            by_week[(m // 1440 - start) // DAYS].append(m)
        for week, wm in by_week.items():
            if len(wm) < MIN_ACTIONS:
                continue
            act = AccountActivity(f"{user}#{week}")
            act.add(Action(m, f"post{k}", 0, (1, 0, 0, 0)) for k, m in enumerate(sorted(wm)))
            out.append(act)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    weeks = account_weeks()
    judge = AccountJudge()
    fired = dict.fromkeys(OWN_PATTERNS, 0)
    busy_fired = dict.fromkeys(OWN_PATTERNS, 0)
    flagged = busy = 0
    for act in weeks:
        sc = judge.judge(act, {}, {})
        is_busy = sum(bin(m).count("1") >= SHIFT_MIN_HOURS for m in act.day_masks.values()) >= 3
        busy += is_busy
        flagged += sc.flagged
        for p in OWN_PATTERNS:
            if sc.evidence[p] >= 0.5:
                fired[p] += 1
                busy_fired[p] += is_busy
    n = len(weeks)
    print(f"real account-weeks with >= {MIN_ACTIONS} posts: {n:,}; busy (>= {SHIFT_MIN_HOURS} active hours on "
          f">= 3 days): {busy:,}\n")
    print("| pattern | account-weeks it fires on | share | of the busy ones |")
    print("|---|---|---|---|")
    for p in OWN_PATTERNS:
        print(f"| {p} | {fired[p]:,} | {fired[p] / max(n, 1):.5f} | {busy_fired[p]} of {busy} |")
    print(f"| flagged (score >= {THRESHOLD}) | {flagged:,} | {flagged / max(n, 1):.5f} | |")
    if args.json:
        print(json.dumps({"account_weeks": n, "busy": busy, "fired": fired, "busy_fired": busy_fired,
                          "flagged": flagged}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
