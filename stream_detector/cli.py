"""`stream-detector` command line: score (offline), worker, demo, replay, model.

Bad arguments and unusable input files get one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from stream_detector.config import DEFAULT_MODEL_PATH

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _fail(message: str) -> int:
    sys.stderr.write(f"stream-detector: error: {message}\n")
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stream-detector", description="Streaming fake-engagement detector")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("score", help="score an engagement CSV offline (same core as the stream)")
    s.add_argument("--input", required=True, help="CSV: video_id,ts,views,likes,comments,shares[,published_at]")
    s.add_argument("--output", required=True, help="JSONL, one line per input video")
    s.add_argument("--model", default=os.environ.get("DETECTOR_MODEL_PATH") or str(DEFAULT_MODEL_PATH),
                   help="ONNX model artifact (default: $DETECTOR_MODEL_PATH or the shipped model)")
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--explain", action="store_true", help="add the explanation and threshold to each line")

    sub.add_parser("worker", help="run a worker (embedded broker/Redis when none configured)")

    d = sub.add_parser("demo", help="embedded stack + worker + simulated stream, live table, summary")
    d.add_argument("--videos", type=int, default=120)
    d.add_argument("--duration", type=float, default=40.0, help="seconds to replay the simulated week in")
    d.add_argument("--seed", type=int, default=2026)

    r = sub.add_parser("replay", help="produce events from a CSV/JSONL file (or a simulation) into the topic")
    r.add_argument("file", nargs="?", help="CSV (offline format) or JSONL of events")
    r.add_argument("--simulate", type=int, metavar="N", help="simulate N videos instead of reading a file")
    r.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    r.add_argument("--seed", type=int, default=1)

    m = sub.add_parser("model", help="show or change the serving model")
    msub = m.add_subparsers(dest="model_command", required=True, parser_class=_Parser)
    mi = msub.add_parser("inspect", help="validate an ONNX artifact and print its metadata")
    mi.add_argument("path")
    return p


def cmd_score(args: argparse.Namespace) -> int:
    from stream_detector.models import ModelArtifact, ModelError
    from stream_detector.scoring import Scorer
    from stream_detector.series import InputError, read_csv

    if args.batch_size < 1:
        return _fail("--batch-size must be >= 1")
    try:
        model = ModelArtifact.load(args.model)
    except ModelError as exc:
        return _fail(f"model {args.model}: {exc}")
    t0 = time.perf_counter()
    try:
        series = read_csv(args.input)
    except InputError as exc:
        return _fail(str(exc))
    t_read = time.perf_counter() - t0
    scorer = Scorer(model)
    flagged = 0
    try:
        out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror}")
    with out:
        for i in range(0, len(series), args.batch_size):
            for vs in scorer.score_full(series[i : i + args.batch_size]):
                line = vs.to_dict()
                if args.explain:
                    line["explanation"] = vs.explanation
                    line["threshold"] = round(vs.threshold, 4)
                flagged += vs.flagged
                out.write(json.dumps(line) + "\n")
    dt = time.perf_counter() - t0
    sys.stderr.write(
        f"scored {len(series)} videos ({flagged} flagged) in {dt:.1f}s "
        f"(read {t_read:.1f}s) with {model.name} {model.version} -> {args.output}\n"
    )
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from stream_detector.models import ModelArtifact, ModelError

    if args.model_command == "inspect":
        try:
            model = ModelArtifact.load(args.path)
        except ModelError as exc:
            return _fail(f"model {args.path}: {exc}")
        print(json.dumps(model.info() | {"metrics": json.loads(model.metadata["metrics"])}, indent=2))
        return 0
    return _fail(f"unknown model command {args.model_command}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "score":
        return cmd_score(args)
    if args.command == "model":
        return cmd_model(args)
    if args.command == "worker":
        from stream_detector.app import run_worker

        return run_worker()
    if args.command == "demo":
        from stream_detector.demo import run_demo

        return run_demo(videos=args.videos, duration=args.duration, seed=args.seed)
    if args.command == "replay":
        from stream_detector.replay import run_replay

        if not args.file and not args.simulate:
            return _fail("replay needs a FILE or --simulate N")
        return run_replay(args.file, simulate=args.simulate, rate=args.rate, seed=args.seed)
    return _fail(f"unknown command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
