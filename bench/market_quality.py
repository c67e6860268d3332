"""Fraud as panels sell it: the stream process as deployed, per delivery kind, amplitude band
and organic look-alike, on held-out market weeks (``stream_detector/dev/market.py``, real texture
from the test pool), for a model artifact (default: the shipped one).

    .venv/bin/python bench/market_quality.py                 # 600 videos, 2 seeds, ~2 min
    .venv/bin/python bench/market_quality.py --model M.onnx --videos 1000 --seeds 3 --json

The event-time evaluator (``training.stream_eval.replay``) runs the real scoring core and the
real decision process on minute-level events, closed hours and the immediate path; a video
counts as flagged if it was ever flagged. Seeds are held out from training (training uses
week seeds of ``--seed 7``: 7000-7004).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_detector.config import DEFAULT_MODEL_PATH  # noqa: E402
from stream_detector.models import ModelArtifact  # noqa: E402
from stream_detector.scoring import Scorer  # noqa: E402
from stream_detector.worker.model_slot import decision_of  # noqa: E402
from training.market_eval import evaluate_market, markdown, market_week  # noqa: E402

HELD_OUT_SEEDS = (90211, 90223, 90227, 90229)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=2, help=f"held-out market weeks (at most {len(HELD_OUT_SEEDS)})")
    ap.add_argument("--target-fpr", type=float, default=None)
    ap.add_argument("--json", action="store_true", help="also print one JSON object per week")
    args = ap.parse_args(argv)
    if not 1 <= args.seeds <= len(HELD_OUT_SEEDS) or args.videos < 50:
        ap.error(f"--seeds must be 1..{len(HELD_OUT_SEEDS)} and --videos >= 50")
    model = ModelArtifact.load(args.model)
    scorer, decision = Scorer(model), decision_of(model, args.target_fpr)
    print(f"model {model.name} {model.version} ({model.sha256[:12]}), publish threshold "
          f"{decision.thresholds.publish:.4f}")
    for seed in HELD_OUT_SEEDS[: args.seeds]:
        data = market_week(args.videos, seed)
        m = evaluate_market(scorer, decision, data)
        print(f"\n### market week seed {seed} ({m['seconds']:.0f} s)\n")
        print(markdown(m))
        if args.json:
            print(json.dumps({k: v for k, v in m.items() if not isinstance(v, dict) or k.endswith("kind")
                              or k.startswith("recall_by")}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
