"""Prototype: a faust App that hosts a batch consumer (aiokafka ``getmany``).

Why this shape (see FINDINGS.md): faust's own consumer delivers one message at a
time through ``Consumer._drain_messages`` -> ``wait_first(callback(msg), ...)`` ->
conductor -> stream queue -> agent; that per-message machinery caps a worker at
~12-13k events/s here (19k patched), whatever the settings; this shape reads ~195k.  Here faust keeps what it is good at (lifecycle, web
views, producer, signal handling) and the hot path is one ``getmany`` batch at a time.

* ``NoFaustConsumerBoot`` turns faust's consumer off: no faust consumer thread, no
  conductor, no tables, no leader topic, so faust never joins a consumer group and
  never competes with ``BatchConsumer`` (which joins ``--group``, default ``bench``).
  The producer and the web server still start (``app.producer`` can publish flags/DLQ).
* ``BatchConsumer`` is a ``mode.Service`` with an explicit lifecycle:
  start -> consume loop (getmany -> handler -> commit) -> stop.  Stop (SIGTERM,
  SIGINT, app.stop()) lets the in-flight batch finish, commits what was processed,
  then leaves the group (``consumer.stop()``) so other members rebalance at once.
  A revocation during a rebalance waits for the in-flight batch (same lock) and
  commits before the partitions move: at-least-once, no replay on clean handover.
* Bounds: ``max_records`` per batch; aiokafka's background prefetch is bounded by
  ``fetch_max_bytes`` / ``max_partition_fetch_bytes``; there is deliberately no extra
  queue between fetch and processing (it would decouple commits from processing);
  every broker call and the handler run under a timeout.  The timeout cannot preempt
  CPU-bound code: aiokafka heartbeats run on this same event loop, so one batch must
  never block the loop for longer than ``session_timeout_ms`` (6 s) or the member is
  expelled and its partitions move.

Run (programmatic worker, not the faust CLI):
    python bench/faust/batch_consumer_in_faust.py --bootstrap 127.0.0.1:9092 \
        --topic events --group bench --web-port 6067
    curl http://127.0.0.1:6067/healthz ; kill -TERM <pid>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from faust.app.base import BootStrategy
from mode import Service

log = logging.getLogger("batch_consumer")

Batch = dict[TopicPartition, list[ConsumerRecord]]
Handler = Callable[[Batch], Awaitable[None]]


class NoFaustConsumerBoot(BootStrategy):
    """Start faust's producer + web server only: faust's consumer never joins a group."""

    enable_kafka_consumer = False


class BatchApp(faust.App):
    BootStrategy = NoFaustConsumerBoot


class _Revocation(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner._on_assigned(set(assigned))


class BatchConsumer(Service):
    """getmany -> handler(batch) -> commit, in one consumer group, under a faust App."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        handler: Handler,
        max_records: int = 5000,
        poll_timeout_ms: int = 200,
        handler_timeout_s: float = 30.0,
        start_timeout_s: float = 30.0,
        session_timeout_ms: int = 6000,  # Tansu answers the first JoinGroup after ~session/2
        heartbeat_interval_ms: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.handler = handler
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.handler_timeout_s = handler_timeout_s
        self.start_timeout_s = start_timeout_s
        # aiokafka objects must be created inside the running loop: see on_start
        self._consumer_kwargs = dict(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=f"{group}-batch",
            enable_auto_commit=False,  # we commit after the handler succeeded
            auto_offset_reset="earliest",
            max_poll_records=max_records,
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            rebalance_timeout_ms=max(session_timeout_ms, int(handler_timeout_s * 1000)),
            request_timeout_ms=max(30_000, session_timeout_ms + 5_000),
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.topic = topic
        self._lock = asyncio.Lock()  # held while a batch is in flight (py>=3.10: loop-free)
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit
        self._loop_fut: asyncio.Future | None = None
        self.assigned: set = set()
        self.events = 0
        self.batches = 0
        self.last_error: str | None = None

    # lifecycle -----------------------------------------------------------------
    async def on_start(self) -> None:
        self.consumer = AIOKafkaConsumer(**self._consumer_kwargs)
        self.consumer.subscribe([self.topic], listener=_Revocation(self))
        await asyncio.wait_for(self.consumer.start(), self.start_timeout_s)
        self._loop_fut = asyncio.ensure_future(self._consume_loop())

    async def on_stop(self) -> None:
        # mode sets should_stop before on_stop: the loop exits after its in-flight batch.
        if self._loop_fut is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._loop_fut),
                    self.handler_timeout_s + self.poll_timeout_ms / 1000 + 1,
                )
            except TimeoutError:
                log.warning("consume loop did not finish in time; cancelling")
                self._loop_fut.cancel()
            except Exception as exc:  # the loop's own failure was logged already
                log.warning("consume loop ended with %r", exc)
        if self.consumer is None:
            return
        await self._commit_processed()
        await asyncio.wait_for(self.consumer.stop(), 10)  # LeaveGroup: fast rebalance
        log.info("batch consumer stopped: %d events in %d batches", self.events, self.batches)

    @property
    def ready(self) -> bool:
        return bool(self.assigned) and self._loop_fut is not None and not self._loop_fut.done()

    # hot path ------------------------------------------------------------------
    async def _consume_loop(self) -> None:
        try:
            await self._consume()
        except Exception as exc:  # broker/consumer failure: stop the worker, do not hang
            self.last_error = repr(exc)
            log.exception("consume loop failed; stopping the worker")
            self.app_crash(exc)

    async def _consume(self) -> None:
        getmany = self.consumer.getmany
        while not self.should_stop:
            batch = await getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
            if not batch:
                continue
            async with self._lock:
                # a revocation may have happened while getmany returned: keep owned tps only
                batch = {tp: recs for tp, recs in batch.items() if tp in self.assigned}
                if not batch:
                    continue
                # On failure nothing of this batch is committed: it is redelivered after
                # the restart (at-least-once); the exception stops the worker.
                await asyncio.wait_for(self.handler(batch), self.handler_timeout_s)
                for tp, recs in batch.items():
                    self._processed[tp] = recs[-1].offset + 1
                    self.events += len(recs)
                self.batches += 1
                await self._commit_processed()

    async def _commit_processed(self, only: set | None = None) -> None:
        offsets = {
            tp: OffsetAndMetadata(off, "")
            for tp, off in self._processed.items()
            if only is None or tp in only
        }
        if not offsets:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), 10)
        except Exception as exc:  # e.g. rebalance in progress: offsets are retried next time
            log.warning("commit failed: %r", exc)
            return
        for tp in offsets:
            self._processed.pop(tp, None)

    # rebalance -----------------------------------------------------------------
    async def _on_revoked(self, revoked: set) -> None:
        async with self._lock:  # waits for the in-flight batch
            await self._commit_processed(only=revoked)
            for tp in revoked:  # if that commit failed, the new owner replays (at-least-once)
                self._processed.pop(tp, None)
            self.assigned -= revoked

    def _on_assigned(self, assigned: set) -> None:
        self.assigned = set(assigned)
        log.info("assigned %s", sorted(tp.partition for tp in assigned))

    def app_crash(self, exc: BaseException) -> None:
        # Crash the App: the Worker stops every service and exits non-zero.
        app = getattr(self, "faust_app", None)
        if app is not None:
            asyncio.ensure_future(app.crash(exc))


# ----------------------------------------------------------------------------------
def create_app(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    web_port: int,
    handler: Handler | None = None,
    max_records: int = 5000,
    out_topic: str | None = None,
    app_id: str = "stream-detector-host",
    disable_faust_consumer: bool = True,
    **app_overrides: Any,
) -> tuple[faust.App, BatchConsumer]:
    app_cls = BatchApp if disable_faust_consumer else faust.App
    settings: dict[str, Any] = dict(
        broker=f"kafka://{bootstrap}",
        web_enabled=True,
        web_port=web_port,
        web_bind="127.0.0.1",  # default is 0.0.0.0
        web_host="127.0.0.1",
        datadir=os.path.join(tempfile.gettempdir(), f"{app_id}-data"),  # default: ./<id>-data
        # irrelevant while faust's consumer is disabled, but keep faust's own joins short
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        topic_disable_leader=True,
    )
    settings.update(app_overrides)
    # app_id is not used as a consumer group while faust's consumer is disabled
    app = app_cls(app_id, **settings)

    async def default_handler(batch: Batch) -> None:
        # decode + aggregate in memory (one entry per key per batch), then the side
        # effects of the batch; they are awaited before the consumer commits.
        loads = json.loads
        per_key: Counter = Counter()
        for recs in batch.values():
            for r in recs:
                ev = loads(r.value)
                per_key[ev["video_id"]] += ev["count"]
        if out_topic:
            # faust's producer is shared (started by the App, stopped after this service)
            top = per_key.most_common(3)
            fut = await app.producer.send(
                out_topic, None, json.dumps({"top": top}).encode(), None, None, None
            )
            await asyncio.wait_for(fut, 10)

    bc = BatchConsumer(
        bootstrap=bootstrap,
        topic=topic,
        group=group,
        handler=handler or default_handler,
        max_records=max_records,
    )
    bc.faust_app = app  # type: ignore[attr-defined]
    app.service(bc)  # started after app start, stopped before producer/web

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        # liveness: 503 only once the consume loop has died; "ready" = partitions owned
        dead = bc._loop_fut is not None and bc._loop_fut.done()
        return web.json(
            {
                "status": "ok" if bc.ready else ("dead" if dead else "starting"),
                "ready": bc.ready,
                "assigned": sorted(tp.partition for tp in bc.assigned),
                "events": bc.events,
                "batches": bc.batches,
                "last_error": bc.last_error,
            },
            status=503 if dead else 200,
        )

    return app, bc


def run_worker(app: faust.App, loglevel: str = "INFO") -> None:
    """Programmatic worker (instead of the faust CLI).  Blocks; exits via SystemExit.

    faust.Worker installs loop signal handlers for SIGTERM/SIGINT (graceful stop of
    the App and its services, in reverse start order) and configures logging."""
    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,  # no banner / spinner on stdout
        redirect_stdouts=False,  # otherwise print() goes to the logger
        # override_logging=False keeps the caller's logging.basicConfig/dictConfig
    )
    worker.execute_from_commandline()  # raises SystemExit(0) after a clean stop


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="events")
    ap.add_argument("--group", default="bench")
    ap.add_argument("--web-port", type=int, default=6067)
    ap.add_argument("--max-records", type=int, default=5000)
    ap.add_argument("--out-topic", help="publish one summary per batch via app.producer")
    ap.add_argument("--loglevel", default="INFO")
    a = ap.parse_args(argv)
    app, _ = create_app(
        bootstrap=a.bootstrap,
        topic=a.topic,
        group=a.group,
        web_port=a.web_port,
        max_records=a.max_records,
        out_topic=a.out_topic,
    )
    run_worker(app, a.loglevel)


if __name__ == "__main__":
    main()
