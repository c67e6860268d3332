"""The worker process: a faust App hosting the batch detector, plus its web views.

Faust gives the worker its lifecycle (signals, ordered start/stop of services), its web
server and views. Its own per-message consumer is switched off: measured here a faust agent
consumes ~12-13k events/s against ~200k for aiokafka ``getmany`` (``bench/faust/FINDINGS.md``), so the hot path is the
``Detector`` batch loop over aiokafka ``getmany`` running as a faust service in the
same consumer group semantics (key = video_id, no repartitioning).

Views: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (broker, Redis,
model), ``/score/{video_id}`` (latest score, windows, explanation), ``/model``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.app.base import BootStrategy
from mode import Service

from stream_detector import gc_policy, malloc_policy
from stream_detector.canary import validate_bytes
from stream_detector.config import Settings, SettingsError
from stream_detector.dev.embedded import resolve_endpoints
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact, ModelError
from stream_detector.topics import ensure_deployment_topics
from stream_detector.worker import Detector
from stream_detector.worker.model_follower import ModelFollower
from stream_detector.worker.model_slot import decision_of

log = logging.getLogger("stream_detector.app")


class _BatchBoot(BootStrategy):
    """Faust runs web and services only; the Detector owns its Kafka clients."""

    enable_kafka = False
    enable_kafka_consumer = False
    enable_kafka_producer = False


class DetectorApp(faust.App):
    BootStrategy = _BatchBoot


FAILED_EXIT_S = 45.0  # a failed worker's graceful stop gets this long, then the process ends


def _exit_failed(why: str) -> None:
    sys.stderr.write(f"stream-detector: error: the worker failed ({why}) and did not stop within "
                     f"{FAILED_EXIT_S:g} s; exiting\n")
    sys.stderr.flush()
    os._exit(1)


class DetectorService(Service):
    """Starts the detector after the app, stops it (gracefully) before the web server.

    With a model follower, the control topic is read to its end (and the registry's serving
    and shadow models validated) before the detector consumes its first event, so a worker
    started after a push never scores with the built-in model.
    """

    def __init__(self, detector: Detector, follower: ModelFollower | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.detector = detector
        self.follower = follower
        self.failed: str | None = None

    async def on_start(self) -> None:
        if self.follower is not None:
            await self.follower.start()
        await self.detector.start()
        self.add_future(self._watch())

    async def _watch(self) -> None:
        try:
            await self.detector.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop logged it; crash the service tree so the worker exits 1
            self.failed = str(exc)
            log.error("detector failed: %s; stopping the worker (exit 1)", exc)
            # a graceful stop that hangs must not keep a failed worker alive: end it regardless
            timer = threading.Timer(FAILED_EXIT_S, _exit_failed, args=(str(exc),))
            timer.daemon = True
            timer.start()
            # mode's crash(): the faust Worker stops every service in order, then exits with
            # the crash reason (EX_FAILURE); no signal sent to ourselves
            await self.crash(exc)

    async def on_stop(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
        await self.detector.stop()


def create_app(
    settings: Settings,
    model: ModelArtifact,
    metrics: Metrics | None = None,
    *,
    follow_registry: bool = True,
    canary_report: dict | None = None,
    datadir: str | None = None,
) -> tuple[faust.App, Detector]:
    """``model`` is the built-in model (``DETECTOR_MODEL_PATH``); with ``follow_registry`` the
    worker serves what the control topic says (``stream_detector.registry``)."""
    metrics = metrics or Metrics()
    detector = Detector(settings, model, metrics)
    follower = ModelFollower(settings, detector.slot, model, metrics) if follow_registry else None
    if canary_report is not None:  # the built-in model's validation at startup
        metrics.model_validation.observe(canary_report["seconds"])
        if follower is not None:
            follower.reports[model.sha256] = canary_report
    app = DetectorApp(
        "stream-detector",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        datadir=datadir or os.path.join(tempfile.gettempdir(), f"stream-detector-{os.getpid()}"),
        topic_disable_leader=True,
    )
    service = DetectorService(detector, follower)
    app.service(service)
    app.detector_service = service  # type: ignore[attr-defined]  # the entry point reads its failure
    started = time.time()

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        alive = service.failed is None and detector.alive  # every loop the worker needs still runs
        return web.json(
            {"status": "ok" if alive else "failed", "uptime_s": round(time.time() - started, 1),
             "error": service.failed or detector.failure},
            status=200 if alive else 503,
        )

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        checks = {"broker": detector.ready, "model": detector.slot.scorer is not None, "redis": False}
        if detector.redis is not None:
            try:
                checks["redis"] = bool(await asyncio.wait_for(detector.redis.ping(), 1.0))
            except (TimeoutError, OSError, Exception):  # noqa: BLE001 - any failure means not ready
                checks["redis"] = False
        ok = all(checks.values())
        return web.json({"ready": ok, "checks": checks}, status=200 if ok else 503)

    @app.page("/model")
    async def model_view(web: Any, request: Any) -> Any:
        """The serving model (top level), its shadow, and the registry as this worker sees it:
        desired versions, in_sync, refusals with their reasons, recent changes."""
        status = detector.model_status()
        if follower is not None:
            status["registry"] = follower.status()
        return web.json(status)

    @app.page("/accounts/{user_id:[^/]+}")
    async def account_view(web: Any, request: Any, user_id: str) -> Any:
        """The latest judgement of an account (event 1.1 user level), 404 when never judged."""
        doc = await detector.account(user_id)
        if doc is None:
            return web.json({"user_id": user_id, "error": "no judgement for this account"}, status=404)
        return web.json(doc)

    @app.page("/verdicts")
    async def verdicts_view(web: Any, request: Any) -> Any:
        """What moderation told this worker: verdict counts, allowlists in force, episode
        verdicts waiting for their flag, judged precision (the moderation loop)."""
        return web.json(detector.verdicts.status() if detector.verdicts is not None else {})

    @app.page("/quarantine")
    async def quarantine_view(web: Any, request: Any) -> Any:
        """Videos whose judgement raised: attempts, reason, traceback, set aside or not."""
        entries = await detector.quarantined()
        return web.json({"count": len(entries), "set_aside": sum(e["set_aside_until"] is not None for e in entries),
                         "videos": entries})

    @app.page("/score/{video_id:[^/]+}")  # any id, braces included (aiohttp defaults exclude them)
    async def score_view(web: Any, request: Any, video_id: str) -> Any:
        doc = await detector.current_score(video_id)
        if doc is None:
            return web.json({"video_id": video_id, "error": "no window for this video"}, status=404)
        return web.json(doc)

    return app, detector


class _KeyValueFormatter(logging.Formatter):
    """Structured single-line logs: ts=... level=... logger=... msg=..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " | ")
        line = f"ts={ts}Z level={record.levelname} logger={record.name} msg={msg!r}"
        if record.exc_info:  # the whole traceback, on the same line
            line += " exc=" + repr(self.formatException(record.exc_info).splitlines()[-1])
            line += " traceback=" + repr(self.formatException(record.exc_info))
        return line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def run_worker() -> int:
    """`stream-detector worker`: embedded stack when nothing is configured, then serve until SIGTERM."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"stream-detector: error: {exc}\n")
        return 2
    configure_logging(settings.log_level)
    try:
        try:
            data = Path(settings.model_path).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {settings.model_path}: {exc.strerror}") from None
        # the built-in model passes the same gate as a pushed one (contract + canary)
        model, report = validate_bytes(data, source=settings.model_path, window_hours=settings.window_hours)
        decision_of(model, settings.target_fpr or None)  # the deployment's target FPR must be reachable
    except ModelError as exc:
        sys.stderr.write(f"stream-detector: error: model {settings.model_path}: {exc}\n")
        return 2
    missing = [n for n, v in (("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
                              ("REDIS_URL", settings.redis_url)) if not v]
    if missing and not settings.embedded:
        sys.stderr.write(f"stream-detector: error: {' and '.join(missing)} not set; point them at the broker and "
                         f"Redis, or set DETECTOR_EMBEDDED=true to start embedded servers for a local trial\n")
        return 2
    stack, settings = resolve_endpoints(settings)
    datadir = tempfile.mkdtemp(prefix="stream-detector-")
    try:
        quiet = logging.getLogger("aiokafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the one line below says it; no connection-retry noise
        try:
            asyncio.run(asyncio.wait_for(ensure_deployment_topics(settings), timeout=settings.startup_timeout_seconds))
        except (TimeoutError, OSError, KafkaError) as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else f"no answer within {settings.startup_timeout_seconds:g} s"
            sys.stderr.write(f"stream-detector: error: broker {settings.kafka_bootstrap_servers} unreachable "
                             f"({type(exc).__name__}: {why})\n")
            return 1
        finally:
            quiet.setLevel(level)
        app, detector = create_app(settings, model, canary_report=report.to_dict(), datadir=datadir)
        log.info("worker starting web=%s:%d broker=%s redis=%s", settings.web_host, settings.web_port,
                 settings.kafka_bootstrap_servers, settings.redis_url)
        worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
        gc_policy.apply(settings.gc_young_threshold)  # after start-up, so that what it loaded is frozen
        if not settings.scoring_process:  # scoring runs in this process: its batches reuse the heap too
            malloc_policy.apply(settings.heap_keep_mb)
        code = 0
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = int(exc.code or 0)
        failed = app.detector_service.failed  # type: ignore[attr-defined]
        if failed is not None:
            sys.stderr.write(f"stream-detector: error: the worker stopped after a failure: {failed}\n")
            return code or 1
        return code
    finally:
        shutil.rmtree(datadir, ignore_errors=True)
        if stack is not None:
            stack.stop()
