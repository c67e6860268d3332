"""`detector-train`: simulate, train, evaluate, export the shipped model, push it to workers.

Bad arguments get one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 1")
    return n


def _rate(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 < x < 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} must be in (0, 1)")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="detector-train", description="Offline training of the fake-engagement model")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for name, help_ in (
        ("all", "simulate, train all architectures, evaluate vs baselines, export the shipped model"),
        ("evaluate", "same run as `all`, writing the report (and the model) to the given paths"),
    ):
        a = sub.add_parser(name, help=help_)
        a.add_argument("--seed", type=int, default=7)
        a.add_argument("--videos-per-week", type=_positive, default=1500)
        a.add_argument("--epochs", type=_positive, default=20)
        a.add_argument("--arch", choices=("tcn", "autoencoder", "lstm"), default="tcn")
        a.add_argument("--compare", default="tcn,autoencoder,lstm", help="architectures in the report")
        a.add_argument("--cv-folds", type=int, default=3)
        a.add_argument("--cv-epochs", type=_positive, default=8)
        a.add_argument("--output", default="models/default.onnx")
        a.add_argument("--report-dir", default="reports")
        a.add_argument("--version", default="1.1.0")
        a.add_argument("--threads", type=_positive, default=2)
        a.add_argument("--stream-videos", type=_positive, default=800,
                       help="videos of the test week replayed through the stream process (validation: all)")
        a.add_argument("--target-fpr", type=_rate, default=0.02,
                       help="default operating point: organic videos ever flagged in the stream")
        a.add_argument("--no-texture", action="store_true",
                       help="plain simulated organics only (not evidence: for comparison)")
        a.add_argument("--market-videos", type=int, default=1000,
                       help="videos per week of fraud as panels sell it and organic look-alikes (0: none)")
        a.add_argument("--verdicts", help="moderators' verdicts (a dump of the verdicts topic): real labels for "
                                          "the report and the model card; needs --flags")
        a.add_argument("--flags", help="the flags topic dump the verdicts judge")

    s = sub.add_parser("simulate", help="write a simulated engagement CSV (+ truth JSONL)")
    s.add_argument("--videos", type=_positive, default=1000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--output", required=True, help="CSV path")
    s.add_argument("--truth", help="JSONL path for the ground truth")
    s.add_argument("--granularity", choices=("hour", "minute"), default="hour")

    pu = sub.add_parser("push", help="validate a model and publish it to the running workers (control topic)")
    pu.add_argument("path", help="ONNX model artifact, e.g. models/default.onnx after `make train`")
    pu.add_argument("--shadow", action="store_true", help="run it in shadow beside the serving model")
    pu.add_argument("--dry-run", action="store_true", help="validate exactly as a worker would, publish nothing")

    v = sub.add_parser("verdicts", help="moderators' verdicts as labels: judged precision, the publish threshold "
                                         "they support (dumps of the verdicts and flags topics, JSON lines)")
    v.add_argument("--verdicts", required=True, help="verdicts topic dump (verdict 1.0, one per line)")
    v.add_argument("--flags", required=True, help="flags topic dump (flag records, one per line)")
    v.add_argument("--target-precision", type=_rate, default=0.9)
    v.add_argument("--output", help="write the report as JSON here too")

    c = sub.add_parser("canary", help="regenerate the canary set the workers check every model against")
    c.add_argument("--videos", type=_positive, default=200)
    c.add_argument("--seed", type=int, default=31337)
    c.add_argument("--output", help="default: stream_detector/canary.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("all", "evaluate"):
        from training.pipeline import TrainConfig, run

        if bool(args.verdicts) != bool(args.flags):
            sys.stderr.write("detector-train: error: --verdicts and --flags go together\n")
            return 2
        if args.verdicts:  # checked before hours of training, not after
            from training.verdicts import load_labels

            try:
                load_labels(args.verdicts, args.flags)
            except (OSError, ValueError, KeyError) as exc:
                sys.stderr.write(f"detector-train: error: {exc}\n")
                return 2
        compare = tuple(a for a in args.compare.split(",") if a)
        bad = [a for a in compare if a not in ("tcn", "autoencoder", "lstm")]
        if bad:
            sys.stderr.write(f"detector-train: error: unknown architecture(s) in --compare: {', '.join(bad)}\n")
            return 2
        if args.arch not in compare:
            compare = (args.arch, *compare)
        cfg = TrainConfig(
            seed=args.seed,
            videos_per_week=args.videos_per_week,
            arch=args.arch,
            compare=compare,
            epochs=args.epochs,
            cv_folds=args.cv_folds,
            cv_epochs=args.cv_epochs,
            output=args.output,
            report_dir=args.report_dir,
            version=args.version,
            threads=args.threads,
            name=f"fake-engagement-{args.arch}",
            stream_videos=args.stream_videos,
            target_fpr=args.target_fpr,
            texture=not args.no_texture,
            market_videos_per_week=max(args.market_videos, 0),
            verdicts=args.verdicts,
            flags_dump=args.flags,
        )
        result = run(cfg)
        m = result["metrics"]
        print(
            f"{cfg.name} {cfg.version}: AUC {m.get('auc', float('nan')):.3f} precision {m.get('precision', 0):.3f} "
            f"recall {m.get('recall', 0):.3f} F1 {m.get('f1', 0):.3f} FPR {m.get('fpr', 0):.3f} -> {cfg.output}; "
            f"report {result['report']}"
        )
        return 0
    if args.command == "simulate":
        from stream_detector.dev.simulate import simulate

        data = simulate(args.videos, seed=args.seed)
        data.write_csv(args.output, granularity=args.granularity)
        if args.truth:
            data.write_truth(args.truth)
        print(f"wrote {len(data)} videos ({int(data.label.sum())} fake) to {args.output}")
        return 0
    if args.command == "push":
        from stream_detector.cli import registry_command

        args.model_command = "push"
        return registry_command(args, prog="detector-train")
    if args.command == "verdicts":
        import json

        from training.verdicts import load_labels, report

        try:
            labels = load_labels(args.verdicts, args.flags)
        except (OSError, ValueError, KeyError) as exc:
            sys.stderr.write(f"detector-train: error: {exc}\n")
            return 2
        if not len(labels):
            sys.stderr.write("detector-train: error: no verdict names a flag of the flags dump\n")
            return 2
        rep = report(labels, args.target_precision)
        b, a = rep["before"], rep["after"]
        print(f"{rep['labelled_flags']} judged flags ({rep['confirmed']} confirmed, {rep['false_positive']} false "
              f"positives, {rep['unmatched_verdicts']} verdicts without their flag, {rep['invalid_records']} records "
              f"that are no verdict)")
        print("| operating point | publish threshold | judged precision | flags | confirmed kept |")
        print("|---|---|---|---|---|")
        print(f"| as published | {b['threshold']:.4f} | {b['precision']:.3f} | {b['flags']} | 1.000 |")
        print(f"| re-estimated (precision >= {args.target_precision:g}) | {a['threshold']:.4f} | {a['precision']:.3f} "
              f"| {a['flags']} | {a['confirmed_kept']:.3f} |")
        if args.output:
            with open(args.output, "w") as f:
                json.dump(rep, f, indent=2)
        return 0
    if args.command == "canary":
        from training.canary import DEFAULT_PATH, write_canary

        path = write_canary(args.output or DEFAULT_PATH, videos=args.videos, seed=args.seed)
        print(f"wrote the canary set ({args.videos} videos, seed {args.seed}) to {path}; models pushed from now on "
              f"are checked against it")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
