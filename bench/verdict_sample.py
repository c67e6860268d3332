"""A labelled sample for the moderation loop: held-out market weeks replayed through the stream
process as deployed, their flags written as the flags topic would hold them, and verdicts for a
share of the flagged episodes from the simulator's truth (moderators who judge right), as the
verdicts topic would hold them. Then ``detector-train verdicts`` re-estimates the operating point.

    .venv/bin/python bench/verdict_sample.py --out /tmp/verdicts-sample      # ~1-2 min
    .venv/bin/detector-train verdicts --verdicts /tmp/verdicts-sample/verdicts.jsonl \\
        --flags /tmp/verdicts-sample/flags.jsonl --target-precision 0.95

What it is evidence of: the tool's arithmetic on a realistic mix (panel deliveries and their
organic look-alikes), not of real moderators' judgement (who are slower, disagree, and judge
only some flags).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_detector.config import DEFAULT_MODEL_PATH  # noqa: E402
from stream_detector.models import ModelArtifact  # noqa: E402
from stream_detector.scoring import Scorer  # noqa: E402
from stream_detector.worker.model_slot import decision_of  # noqa: E402
from training.market_eval import market_week  # noqa: E402
from training.stream_eval import replay  # noqa: E402

SEEDS = (90233, 90239)  # held out from training (bench/market_quality.py uses 90211..90229)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for flags.jsonl and verdicts.jsonl")
    ap.add_argument("--videos", type=int, default=400, help="videos per market week")
    ap.add_argument("--judged", type=float, default=0.7, help="share of flagged episodes a moderator judges")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    args = ap.parse_args(argv)
    if args.videos < 50 or not 0 < args.judged <= 1:
        ap.error("--videos must be >= 50 and --judged in (0, 1]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ModelArtifact.load(args.model)
    scorer, decision = Scorer(model), decision_of(model, None)
    rng = random.Random(7)
    flags, verdicts = [], []
    for seed in SEEDS:
        data = market_week(args.videos, seed)
        run = replay(scorer, decision, data)
        for i, records in enumerate(run.published):
            vid = data.video_ids[i]
            episode_first = None
            for rec in records:
                flags.append({"flag_id": rec.flag_id, "video_id": vid, "status": rec.status,
                              "score": round(float(rec.score), 4), "threshold": decision.thresholds.publish,
                              "severity": rec.severity})
                if rec.status == "new":
                    episode_first = rec.flag_id
                    if rng.random() < args.judged:
                        verdicts.append({"flag_id": episode_first, "video_id": vid, "scope": "episode",
                                         "verdict": "confirmed" if data.label[i] else "false_positive",
                                         "reviewer": "simulated", "ts": 1_800_000_000 + len(verdicts)})
    (out / "flags.jsonl").write_text("".join(json.dumps(f) + "\n" for f in flags))
    (out / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    print(f"{len(flags)} flag records, {len(verdicts)} verdicts -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
