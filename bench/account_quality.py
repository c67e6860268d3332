"""The user level offline, in event time: a held-out market week's accounts through the evaluator.

The same week as ``bench/stream_quality.py --market --accounts`` (seeded, held-out texture),
without a worker: the video level's hour probabilities come from ``training.stream_eval.replay``
(the shipped model and decision, minute-level, closed hours), each hour suspicious from the
event minute a scoring first found it so, and the account actions are replayed through
``training.account_eval.replay_accounts`` (the worker's account state and judgement, suspicious
and carried hours making their engagers due). No lane backlog: the time to a first account flag
is in event time, which the stream bench at 3,600x cannot give.

    .venv/bin/python bench/account_quality.py                  # week A (seed 777001), ~15 min
    .venv/bin/python bench/account_quality.py --seed 777002    # week B

Beside the stream's figures: a batch CopyCatch oracle (``training/copycatch.py``) at the
stream's own sync rules, with the whole week in hindsight: how much lockstep there is to find.

Prints a Markdown table; with ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream_detector.accounts import (  # noqa: E402
    LOCKSTEP_MINUTES,
    LOCKSTEP_PARTNERS,
    SYNC_CHANNELS,
    SYNC_MINUTES,
    SYNC_PARTNERS,
    SYNC_SMALL,
)
from stream_detector.config import DEFAULT_MODEL_PATH  # noqa: E402
from stream_detector.dev.accounts import build_world  # noqa: E402
from stream_detector.dev.market import simulate_market  # noqa: E402
from stream_detector.dev.texture import RealTexture  # noqa: E402
from stream_detector.models import ModelArtifact  # noqa: E402
from stream_detector.scoring import Scorer  # noqa: E402
from stream_detector.worker.model_slot import decision_of  # noqa: E402
from training.account_eval import account_metrics, replay_accounts  # noqa: E402
from training.copycatch import CopyCatch, oracle_run  # noqa: E402
from training.stream_eval import replay  # noqa: E402

BASE_HOUR = 1767571200 // 3600 + 9 * 168  # the week bench/stream_quality.py replays
SEED = 777_001


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


# the batch oracle at the stream's own sync rules: n accounts (the account and its partners) on m
# videos within +-dt, with the whole week in hindsight (the stream counts m in unrelated channels)
ORACLES = ({"n": SYNC_PARTNERS + 1, "m": SYNC_CHANNELS, "within_min": SYNC_MINUTES, "crowd": SYNC_SMALL},
           {"n": LOCKSTEP_PARTNERS + 1, "m": SYNC_CHANNELS, "within_min": LOCKSTEP_MINUTES, "crowd": SYNC_SMALL})


def _oracles(world, stream: dict) -> None:
    """The batch CopyCatch oracle beside the stream's user level, on the same accounts."""
    print("\n| accounts (>= 3 actions) | stream user level | " + " | ".join(
        f"CopyCatch n {o['n']}, m {o['m']}, +-{o['within_min']} min" for o in ORACLES) + " |")
    print("|---|---|" + "---|" * len(ORACLES))
    ms = [account_metrics(oracle_run(world, CopyCatch(**o)), world) for o in ORACLES]
    rows = [("precision / recall", lambda x: f"{x['precision']:.3f} / {x['recall']:.3f}")]
    rows += [(f"{r} flagged", lambda x, r=r: f"{x['flagged_by_role'].get(r, 0.0):.4f}")
             for r in ("organic", "heavy", "fan", "network", "embed_viewer")]
    rows += [("recall: naive / shift / stealthy / pods", lambda x: " / ".join(
        _f(x["recall_by_stealth"].get(k)) for k in ("naive", "shift", "stealthy", "pod"))),
             ("groups found / members recovered", lambda x: f"{_f(x['groups_found'])} / "
                                                            f"{_f(x['group_member_recall'])}"),
             ("seconds", lambda x: f"{x['seconds']:.0f}")]
    for label, cell in rows:
        print(f"| {label} | {cell(stream)} | " + " | ".join(cell(x) for x in ms) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-oracle", dest="oracle", action="store_false",
                    help="skip the batch CopyCatch oracle (~2 min)")
    args = ap.parse_args(argv)
    if args.videos < 20:
        ap.error("--videos must be >= 20")
    data = simulate_market(args.videos, seed=args.seed, texture=RealTexture("test"), start_hour=BASE_HOUR)
    world = build_world(data, seed=args.seed)
    model = ModelArtifact.load(args.model)
    video = replay(Scorer(model), decision_of(model, None), data)
    run = replay_accounts(world, hour_p=video.hour_p, suspect_at=video.suspect_at, suspect=video.suspect)
    m = account_metrics(run, world)
    rows = [("accounts judged (>= 3 actions) / of them farm and pod accounts",
             f"{m['accounts_judged']:,} / {m['fake_accounts']:,}"),
            ("precision", f"{m['precision']:.3f}"), ("recall", f"{m['recall']:.3f}"),
            ("flagged by role", ", ".join(f"{r} {v:.4f}" for r, v in m["flagged_by_role"].items())),
            ("recall by farm kind", ", ".join(f"{k} {v:.2f}" for k, v in m["recall_by_stealth"].items())),
            ("groups found / members recovered", f"{_f(m['groups_found'])} / {_f(m['group_member_recall'])}"),
            ("median event hours, a farm's first action to its first account flag",
             _f(m["hours_to_first_account_flag_median"], 1)),
            ("a group's later customers (delivery begun after its first account flag): carried by flagged "
             "accounts / within 1 event hour of their first bought action / median event hours",
             f"{m['later_customers']} customers: {_f(m['later_customers_carried'])} / "
             f"{_f(m['later_customers_carried_within_1h'])} / {_f(m['later_customers_hours_to_carried_median'], 1)}"),
            ("videos with an hour carried by flagged accounts: fake / organic",
             f"{_f(m['video_recall_by_accounts'], 3)} / {_f(m['video_fpr_by_accounts'], 3)}"),
            ("judgements / seconds", f"{m['judgements']:,} / {m['seconds']:.0f}")]
    print(f"market week seed {args.seed}: {len(data)} videos, {len(world.account_ids):,} accounts\n")
    print("| measure | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    if args.oracle:
        _oracles(world, m)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "video_by_kind"}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
