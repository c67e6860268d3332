"""The scoring core alone, stage by stage: microseconds of CPU per video for one batch.

Two populations of (N, 4, 168) closed windows:

- ``sustained``: what ``bench/sustained.py`` makes the cadence path score (log-normal
  popularity, sigma 1.5; a sparse 168 h history, then dense recent hours);
- ``simulated``: the simulator's videos with real-world texture (test pool), 35 % fakes.

Each stage is timed on its own inputs (the best of ``--reps`` calls, CPU time of this
process): shared signals, features, normalisation, the ONNX model, each pattern detector, the
combiner, and the whole ``Scorer.score_windows`` (which also builds the per-video results).
The machine is shared and noisy: compare runs with paired before/after calls, not one figure.

    .venv/bin/python bench/scoring_core.py                 # batch 512, both populations
    .venv/bin/python bench/scoring_core.py --batch 256 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream_detector import malloc_policy, patterns, signals  # noqa: E402
from stream_detector.features import build_features, normalize  # noqa: E402
from stream_detector.models import ModelArtifact  # noqa: E402
from stream_detector.scoring import Scorer  # noqa: E402

WINDOW = 168


def sustained_windows(n: int, seed: int, dense_hours: int = 9, videos: int = 30_000) -> tuple[np.ndarray, ...]:
    """Windows like the sustained benchmark's: 600k events over 168 h, then 750k per hour."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.5, videos)
    weight /= weight.sum()
    pick = weight[rng.choice(videos, n, replace=False)]
    rate = np.concatenate([np.repeat((pick * 600_000 / WINDOW)[:, None], WINDOW - dense_hours, axis=1),
                           np.repeat((pick * 750_000)[:, None], dense_hours, axis=1)], axis=1)
    mix = np.array([0.9, 0.07, 0.015, 0.015])
    counts = rng.poisson(rate[:, None, :] * mix[None, :, None]).astype(np.float64)
    return counts, np.full(n, 495_000, dtype=np.int64), np.full(n, -1, dtype=np.int64)


def simulated_windows(n: int, seed: int) -> tuple[np.ndarray, ...]:
    from stream_detector.dev.simulate import simulate
    from stream_detector.dev.texture import RealTexture

    data = simulate(n_videos=n, seed=seed, texture=RealTexture("test"))
    last = [s.last(WINDOW) for s in data.iter_series()]
    return (np.stack([s.counts for s in last]).astype(np.float64), np.array([s.start_hour for s in last]),
            np.array([-1 if s.published_hour is None else s.published_hour for s in last]))


def best(fn, reps: int) -> float:
    """Best CPU seconds of ``reps`` calls (one warm-up call first)."""
    fn()
    out = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        out = min(out, time.process_time() - t0)
    return out


def stages(model: ModelArtifact, counts: np.ndarray, starts: np.ndarray, pubs: np.ndarray, reps: int) -> dict:
    scorer = Scorer(model)
    n = len(counts)
    ids = [f"v{i}" for i in range(n)]
    s = signals.compute(counts, starts, pubs)
    x, _ = build_features(counts, starts, pubs, s)
    xn = normalize(x, s.mask, model.normalization)
    score = model.run(xn)
    ev = patterns.detect_signals(s)
    us = {
        "signals": best(lambda: signals.compute(counts, starts, pubs), reps),
        "features": best(lambda: build_features(counts, starts, pubs, s), reps),
        "normalize": best(lambda: normalize(x, s.mask, model.normalization), reps),
        "onnx model": best(lambda: model.run(xn), reps),
    }
    for d in patterns.DETECTORS:
        us[f"detector {d.name}"] = best(lambda d=d: d.evidence(s), reps)
    us["combiner"] = best(lambda: model.combiner.hour_probability(score, ev.evidence), reps)
    us["Scorer.score_windows (all)"] = best(lambda: scorer.score_windows(ids, counts, starts, pubs), reps)
    return {k: v / n * 1e6 for k, v in us.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512, help="videos per scoring call (the cadence path's batch)")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--model", default=str(ROOT / "models" / "default.onnx"))
    p.add_argument("--heap-keep-mb", type=int, default=256,
                   help="the scoring processes' heap policy (malloc_policy.py; 0: the C library's defaults)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.batch < 1 or args.reps < 1:
        p.error("--batch and --reps must be positive")
    malloc_policy.apply(args.heap_keep_mb)  # as a scoring process runs
    model = ModelArtifact.load(args.model)
    results = {
        "sustained": stages(model, *sustained_windows(args.batch, 1), args.reps),
        "simulated": stages(model, *simulated_windows(args.batch, 5), args.reps),
    }
    print(f"Scoring core, batch {args.batch}, best of {args.reps} calls, heap policy {args.heap_keep_mb} MB, "
          "CPU microseconds per video:\n")
    print("| stage | sustained population | simulated, real texture |")
    print("|---|---|---|")
    for k in results["sustained"]:
        print(f"| {k} | {results['sustained'][k]:.1f} | {results['simulated'][k]:.1f} |")
    if args.json:
        print(json.dumps({pop: {k: round(v, 2) for k, v in r.items()} for pop, r in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
