"""`stream-detector` command line: score (offline), worker, demo, replay, model.

Bad arguments and unusable input files get one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    s.add_argument("--target-fpr", type=_rate, default=None,
                   help="share of organic videos to flag, from the model's offline operating points "
                        "(default: the model's default target, the stream's DETECTOR_TARGET_FPR default)")

    sub.add_parser("worker", help="run a worker (embedded broker/Redis when none configured)")

    d = sub.add_parser("demo", help="embedded stack + worker + simulated stream, live table, summary")
    d.add_argument("--videos", type=int, default=120)
    d.add_argument("--duration", type=float, default=40.0, help="seconds to replay the simulated week in")
    d.add_argument("--seed", type=int, default=2026)
    d.add_argument("--market", action="store_true",
                   help="fraud as panels sell it, organic look-alikes, and the accounts behind the events")

    r = sub.add_parser("replay", help="produce events from a CSV/JSONL file (or a simulation) into the topic")
    r.add_argument("file", nargs="?", help="CSV (offline format) or JSONL of events")
    r.add_argument("--simulate", type=int, metavar="N", help="simulate N videos instead of reading a file")
    r.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    r.add_argument("--seed", type=int, default=1)

    du = sub.add_parser("dump", help="write a topic's records (e.g. verdicts, flags) to a JSON-lines file, "
                                     "for `detector-train verdicts`")
    du.add_argument("topic", help="topic name, e.g. engagement-verdicts")
    du.add_argument("--output", required=True, help="JSON-lines file (one record value per line)")
    du.add_argument("--timeout", type=float, default=10.0, help="stop after this many seconds without a new record")

    m = sub.add_parser("model", help="show or change the serving model")
    msub = m.add_subparsers(dest="model_command", required=True, parser_class=_Parser)
    mi = msub.add_parser("inspect", help="validate an ONNX artifact and print its metadata")
    mi.add_argument("path")
    add_registry_commands(msub)
    return p


def add_registry_commands(msub) -> None:
    """`model push | list | current | promote | rollback | unshadow` (`detector-train push` runs the same
    `registry_command`)."""
    mp = msub.add_parser("push", help="validate a model and publish it to every worker (control topic)")
    mp.add_argument("path", help="ONNX model artifact")
    mp.add_argument("--shadow", action="store_true", help="run it in shadow beside the serving model (flags to the shadow topic)")
    mp.add_argument("--dry-run", action="store_true", help="validate exactly as a worker would, publish nothing")
    ml = msub.add_parser("list", help="models in the registry")
    ml.add_argument("--json", action="store_true")
    mc = msub.add_parser("current", help="serving and shadow model, rollback target, recent changes (JSON)")
    mc.add_argument("--history", type=int, default=10, help="changes to show (default 10)")
    mpr = msub.add_parser("promote", help="make a pushed VERSION serve (e.g. the shadow model)")
    mpr.add_argument("version")
    msub.add_parser("rollback", help="serve the version that served before the current one")
    msub.add_parser("unshadow", help="stop the shadow model")


def _rate(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 < x < 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} must be in (0, 1)")
    return x


def cmd_score(args: argparse.Namespace) -> int:
    from stream_detector import malloc_policy
    from stream_detector.config import setting
    from stream_detector.decision import closed_window
    from stream_detector.models import ModelArtifact, ModelError
    from stream_detector.operating_points import OperatingPointError
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
    try:
        threshold = model.offline_threshold(args.target_fpr)
    except OperatingPointError as exc:
        return _fail(f"--target-fpr {args.target_fpr:g}: {exc}")
    if args.target_fpr is not None and model.offline_curve is None:
        return _fail(f"--target-fpr: model {model.name} {model.version} has no offline operating points")
    # judged as the stream judges a video once its last hour has closed and time moved on
    confirm = int(model.decision.get("confirm_hours", 1))
    series = [closed_window(s, s.end_hour + 1 + confirm, confirm) for s in series]
    scorer = Scorer(model, threshold=threshold)
    malloc_policy.apply(setting("heap_keep_mb"))  # DETECTOR_HEAP_KEEP_MB: batches reuse the heap's pages
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
    return registry_command(args)


def registry_command(args: argparse.Namespace, prog: str = "stream-detector") -> int:
    """The registry commands; broker from KAFKA_BOOTSTRAP_SERVERS, topic DETECTOR_CONTROL_TOPIC."""
    import asyncio

    from stream_detector.config import Settings, SettingsError
    from stream_detector.registry import Registry, RegistryError

    def fail(message: str) -> int:
        sys.stderr.write(f"{prog}: error: {message}\n")
        return EXIT_USAGE

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return fail(str(exc))
    cmd = args.model_command
    model = data = report = None
    if cmd == "push":
        from stream_detector.canary import validate_bytes
        from stream_detector.models import ModelError

        try:
            with open(args.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return fail(f"cannot read model file {args.path}: {exc.strerror}")
        try:
            model, report = validate_bytes(data, source=args.path, window_hours=settings.window_hours)
        except ModelError as exc:
            return fail(f"model {args.path} refused: {exc}")
        if args.dry_run:
            print(f"{model.name} {model.version} (sha256 {model.sha256[:12]}) passes: {_canary_line(report.to_dict())}")
            return 0
    if not settings.kafka_bootstrap_servers:
        return fail(f"`model {cmd}` needs the broker: set KAFKA_BOOTSTRAP_SERVERS (e.g. localhost:9092)")
    reg = Registry(settings.kafka_bootstrap_servers, settings.control_topic)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the error line below says it once

    async def run():
        if cmd == "push":
            return await reg.push(data, model, shadow=args.shadow, canary=report.to_dict())
        if cmd == "promote":
            return await reg.promote(args.version)
        if cmd == "rollback":
            return await reg.rollback()
        if cmd == "unshadow":
            return await reg.unshadow()
        return await reg.read()

    try:
        result = asyncio.run(asyncio.wait_for(run(), 90))
    except RegistryError as exc:
        return fail(str(exc))
    except (TimeoutError, OSError, Exception) as exc:  # noqa: BLE001 - broker unreachable etc.: one line
        name = type(exc).__name__
        text = str(exc) if name in str(exc) else f"{name}: {exc}".rstrip(": ")
        return fail(f"control topic {settings.control_topic} on {settings.kafka_bootstrap_servers}: {text}")
    if cmd in ("list", "current"):
        state = result.state
        if cmd == "current":
            print(json.dumps(state.to_dict(history=args.history), indent=2))
            return 0
        if args.json:
            print(json.dumps([{"sha256": sha} | m for sha, m in state.models.items()], indent=2))
            return 0
        _print_models(state)
        return 0
    change, state = result["change"], result["state"]
    if change["result"] != "applied":
        return fail(f"{cmd} {change['result']}: {change['detail']}")
    print(f"{cmd}: {change['detail']} [by {change['by']} at {change['at']}]")
    if cmd == "push":
        print(f"  {model.name} {model.version} sha256 {model.sha256[:12]} ({len(data) / 1024:.0f} KiB); "
              f"{_canary_line(report.to_dict())}")
    print(f"  serving {_ref(state.serving)}; shadow {_ref(state.shadow) if state.shadow else 'none'}; "
          f"rollback -> {(state.rollback_target() or {}).get('version', 'nothing')}")
    print("  every worker validates it again and swaps between scoring batches: check /model or the "
          "dashboard's Model version table")
    return 0


def _ref(ref) -> str:
    return "built-in (DETECTOR_MODEL_PATH)" if ref is None else f"{ref.version} ({ref.sha256[:12]})"


def _canary_line(c: dict) -> str:
    return (f"canary AUC {c['auc']:.3f} (min {c['min_auc']:.3f}), recall {c['recall']:.2f}, "
            f"FPR {c['fpr']:.3f} on {c['videos']} videos, checked in {c['seconds']:.2f}s")


def _print_models(state) -> None:
    roles = {}
    if state.serving:
        roles[state.serving.sha256] = "serving"
    if state.shadow:
        roles[state.shadow.sha256] = "shadow"
    target = state.rollback[-1] if state.rollback else None
    if target is not None:
        roles.setdefault(target.sha256, "rollback target")
    print(f"{'version':<14} {'role':<16} {'sha256':<12} {'arch':<12} {'canary AUC':>10}  pushed")
    if state.serving is None:
        print(f"{'built-in':<14} {'serving':<16} {'-':<12} {'-':<12} {'-':>10}  DETECTOR_MODEL_PATH of each worker")
    for sha, m in state.models.items():
        auc = (m.get("canary") or {}).get("auc")
        print(f"{m['version']:<14} {roles.get(sha, ''):<16} {sha[:12]:<12} {str(m.get('architecture', '')):<12} "
              f"{'' if auc is None else f'{auc:.3f}':>10}  {m.get('pushed_at')} by {m.get('pushed_by')}")


def main(argv: Sequence[str] | None = None) -> int:
    from stream_detector.config import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SettingsError as exc:  # a bad setting anywhere: one line and exit 2, never a traceback
        return _fail(str(exc))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "score":
        return cmd_score(args)
    if args.command == "model":
        return cmd_model(args)
    if args.command == "worker":
        from stream_detector.app import run_worker

        return run_worker()
    if args.command == "demo":
        from stream_detector.dev.demo import run_demo

        return run_demo(videos=args.videos, duration=args.duration, seed=args.seed, market=args.market)
    if args.command == "replay":
        from stream_detector.dev.replay import run_replay

        if not args.file and not args.simulate:
            return _fail("replay needs a FILE or --simulate N")
        return run_replay(args.file, simulate=args.simulate, rate=args.rate, seed=args.seed)
    if args.command == "dump":
        return cmd_dump(args)
    return _fail(f"unknown command {args.command}")


def cmd_dump(args: argparse.Namespace) -> int:
    """Every record of a topic, from its beginning, one value per line (values that are not
    JSON objects are skipped and counted)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from stream_detector.config import SettingsError, setting

    try:
        bootstrap = str(setting("kafka_bootstrap_servers"))
    except SettingsError as exc:
        return _fail(str(exc))
    if not bootstrap:
        return _fail("KAFKA_BOOTSTRAP_SERVERS is not set")

    async def run() -> tuple[int, int]:
        consumer = AIOKafkaConsumer(args.topic, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        written = skipped = 0
        try:
            with open(args.output, "w") as out:
                loop = asyncio.get_running_loop()
                last = loop.time()
                while loop.time() - last < args.timeout:
                    batch = await consumer.getmany(timeout_ms=500)
                    for rec in (r for recs in batch.values() for r in recs):
                        last = loop.time()
                        try:
                            doc = json.loads(rec.value)
                        except (TypeError, ValueError):
                            doc = None
                        if not isinstance(doc, dict):
                            skipped += 1
                            continue
                        out.write(json.dumps(doc, separators=(",", ":")) + "\n")
                        written += 1
        finally:
            await consumer.stop()
        return written, skipped

    try:
        written, skipped = asyncio.run(run())
    except (KafkaError, OSError) as exc:
        sys.stderr.write(f"stream-detector: error: dump {args.topic}: {type(exc).__name__}: {exc}\n")
        return 1
    print(f"{written} records of {args.topic} -> {args.output}" + (f" ({skipped} not JSON objects, skipped)"
                                                                   if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
