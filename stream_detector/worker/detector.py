"""The worker core: its parts composed, with an explicit start/stop lifecycle and three tasks.

- the consume loop: fetch (``getmany``) → ``Ingest.prepare`` / ``Ingest.write`` → commit
  through the ``Checkpoint`` (every ``COMMIT_INTERVAL_S``, only what is written) → idle hour
  closures;
- the scoring loop: the immediate path (``ScoringLoop.score_immediate``) and the cadence lanes
  (``score_cadence``) until stopped; a Redis or broker outage is ridden out with backoff
  (leased videos stay due; a flag sent but not yet remembered is sent again with the same id);
- the broker probe: every ``BROKER_PROBE_S``, the end offsets of the owned partitions (the lag
  gauge, and whether the broker answers at all), in its own task so that a consume loop
  blocked on a frozen broker cannot delay the news.

Any task or scoring lane ending outside ``stop()`` means the worker failed: ``fail`` records
it at once (``/healthz`` 503, not ready) before anything else is cancelled or awaited, so no
sibling that is slow to stop can leave a worker that looks healthy and detects nothing;
``wait()`` raises it, and the app ends the process with a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

from stream_detector import redis_client
from stream_detector.config import Settings
from stream_detector.dependencies import TRANSIENT, Backoff, DependencyGuard, DependencyLost
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact
from stream_detector.moderation import VerdictBook
from stream_detector.publisher import FlagPublisher
from stream_detector.schedule import RescoreSchedule
from stream_detector.windows import WindowStore
from stream_detector.worker.account_store import AccountStore
from stream_detector.worker.accounts import AccountLoop
from stream_detector.worker.checkpoint import Checkpoint
from stream_detector.worker.context import WorkerContext
from stream_detector.worker.ingest import Arrivals, Ingest, Prepared
from stream_detector.worker.model_slot import ModelSlot
from stream_detector.worker.score_process import ScoringProcess
from stream_detector.worker.scoring import ScoringLoop
from stream_detector.worker.verdicts import VerdictFollower

log = logging.getLogger("stream_detector.detector")

COMMIT_INTERVAL_S = 0.5
SCORE_POLL_S = 0.05
IMMEDIATE_POLL_S = 1.0
CADENCE_NICENESS = 5
# records taken and parsed between two turns of the event loop: every await of the scoring side
# waits for the step in progress (a fetch of 5,000 records parsed at once held it ~40 ms); a
# slice is judged like a smaller fetch would be
PREPARE_SLICE = 1000
BROKER_PROBE_S = 1.0
BROKER_PROBE_TIMEOUT_S = 1.5
LANE_STOP_S = 5.0
ACCOUNT_POLL_S = 0.5
# the broker probe is what notices a frozen broker and keeps the lag gauge honest: failing
# (other than the broker not answering, which is an outage) this many times in a row, ~5 s,
# it is broken, and so is the worker
PROBE_FAILURES_FATAL = 10


class WorkerFailed(RuntimeError):
    """A loop the worker needs died (``Detector.failure`` says which and why)."""


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    async def on_partitions_revoked(self, revoked) -> None:
        # aiokafka calls this while the consume loop may be writing a fetched batch: wait for
        # it, so that what is committed is exactly what is written
        d = self.detector
        async with d.batch_lock:
            if revoked:
                await d.checkpoint.commit("rebalance")  # the new owner takes over the due schedule
            for tp in revoked:
                d.checkpoint.forget(tp)
                d.ingest.marks.written.forget(tp.partition)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.detector.checkpoint.load(assigned)
        log.info("assigned partitions=%s", sorted(tp.partition for tp in assigned))


class Detector:
    def __init__(self, settings: Settings, model: ModelArtifact, metrics: Metrics | None = None) -> None:
        metrics = metrics or Metrics()
        self.ctx = WorkerContext(settings, metrics, DependencyGuard(metrics, limit_s=settings.dependency_timeout_seconds))
        self.slot = ModelSlot(settings, model, metrics)
        self.checkpoint = Checkpoint(self.ctx)
        self.arrivals = Arrivals()
        self.ingest = Ingest(self.ctx, self.checkpoint, self.arrivals,
                             confirm_hours=lambda: self.slot.decision.thresholds.confirm_hours)
        self.scoring: ScoringLoop | None = None
        self.score_processes: list[ScoringProcess] = []
        self.publisher: FlagPublisher | None = None
        self.book = VerdictBook()  # moderators' verdicts (moderation.py), read by worker/verdicts.py
        self.verdicts: VerdictFollower | None = None
        self.batch_lock = asyncio.Lock()  # held while a fetched batch is being written
        self._tasks: dict[str, asyncio.Task] = {}
        self._lanes: list[asyncio.Task] = []
        self.failure: str | None = None  # the first loop that died, and why
        self._failed = asyncio.Event()
        self._assigned = False
        self._probed = 0.0

    # convenient views of the parts -------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def guard(self) -> DependencyGuard:
        return self.ctx.guard

    @property
    def redis(self):
        return self.ctx.redis

    @property
    def consumed(self) -> int:
        return self.ingest.consumed

    @property
    def flags_published(self) -> int:
        return self.publisher.published if self.publisher is not None else 0

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        ctx, s = self.ctx, self.ctx.settings
        ctx.redis = redis_client.connect(s.redis_url)
        await ctx.guard.call("redis", "startup ping", ctx.redis.ping)  # a worker may start while Redis is down
        ctx.windows = WindowStore(ctx.redis, window_hours=s.window_hours, ttl_seconds=s.idle_ttl_seconds,
                                  prefix=s.key_prefix, spike_minute_count=s.spike_minute_count, metrics=ctx.metrics)
        ctx.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=5, acks="all",
                                        request_timeout_ms=30000)
        await ctx.producer.start()
        ctx.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            session_timeout_ms=6000,  # Tansu answers the first JoinGroup after ~session/2
            heartbeat_interval_ms=1000,
            rebalance_timeout_ms=30000,
            max_poll_interval_ms=300000,
        )
        await ctx.consumer.start()
        ctx.schedule = RescoreSchedule(ctx.redis, prefix=s.key_prefix, topic=s.events_topic, metrics=ctx.metrics)
        ctx.metrics.judged_precision_floor.set(s.judged_precision_floor)
        self.verdicts = VerdictFollower(ctx, self.book)
        await self.verdicts.start()  # the allowlists hold from the first decision after a restart
        self.publisher = FlagPublisher(ctx.redis, ctx.producer, ctx.metrics, topic=s.flags_topic,
                                       state_key=ctx.flag_key, book=self.book, review_topic=s.review_topic,
                                       channel_key=ctx.channel_key)
        # one child for cadence batches and one for the immediate path, so a spike is never
        # queued behind cadence batches there; the cadence child runs at a lower CPU priority
        # (CADENCE_NICENESS): in an hour closure's burst it waits, spikes do not
        self.score_processes = ([ScoringProcess(ctx.metrics, niceness=CADENCE_NICENESS, heap_keep_mb=s.heap_keep_mb),
                                 ScoringProcess(ctx.metrics, heap_keep_mb=s.heap_keep_mb)]
                                if s.scoring_process else [])
        cadence, urgent = self.score_processes or (None, None)
        self.scoring = ScoringLoop(ctx, self.slot, self.checkpoint, self.arrivals, self.publisher,
                                   cadence, urgent_process=urgent)
        ctx.accounts = AccountLoop(ctx, AccountStore(ctx.redis, s.key_prefix, ctx.metrics, ttl_s=s.idle_ttl_seconds),
                                   ctx.producer, self.checkpoint, self.book)
        ctx.consumer.subscribe([s.events_topic], listener=_Rebalance(self))
        for name, coro in (("consume", self._consume_loop()), ("scoring", self._score_loop()),
                           ("broker probe", self._probe_loop()), ("verdicts", self.verdicts.run())):
            self._tasks[name] = asyncio.create_task(self._supervised(name, coro), name=f"detector-{name}")
        log.info("detector started group=%s topic=%s model=%s", s.consumer_group, s.events_topic,
                 self.slot.scorer.model.version)

    async def stop(self) -> None:
        """Finish the in-flight batch and scoring batch, commit, close. What is still due stays
        in the durable schedule for the next owner of the partitions."""
        ctx = self.ctx
        ctx.stopping.set()
        for name, task in self._tasks.items():
            try:
                await asyncio.wait_for(task, timeout=30)
            except TimeoutError:
                log.error("%s loop did not finish within 30s; cancelling", name)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:  # noqa: BLE001 - already logged by the loop; keep closing the rest
                pass
        if self.verdicts is not None:
            await self.verdicts.stop()
        for client in (ctx.consumer, ctx.producer):
            if client is not None:
                await client.stop()
        if ctx.redis is not None:
            await ctx.redis.aclose()
        for proc in self.score_processes:
            await proc.stop()
        ctx.metrics.ready.set(0)
        log.info("detector stopped consumed=%d flags=%d", self.consumed, self.flags_published)

    async def wait(self) -> None:
        """Until a loop fails: raises ``WorkerFailed`` with the first failure."""
        await self._failed.wait()
        raise WorkerFailed(self.failure or "a worker loop failed")

    def fail(self, where: str, exc: BaseException) -> None:
        """A loop the worker needs died: unhealthy and unready from now on (``wait`` wakes)."""
        if self.failure is None:
            self.failure = f"{where}: {type(exc).__name__}: {exc}"
        self.ctx.metrics.ready.set(0)
        self._failed.set()

    async def _supervised(self, name: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s loop failed", name)
            self.fail(name, exc)
            raise
        if not self.ctx.stopping.is_set():  # a loop has no business ending on its own
            self.fail(name, RuntimeError(f"the {name} loop ended while the worker runs"))

    @property
    def alive(self) -> bool:
        """No loop failed, and every loop (tasks and scoring lanes) still runs or stopped on request."""
        if self.failure is not None:
            return False
        if self.ctx.stopping.is_set():
            return True
        return all(not t.done() for t in (*self._tasks.values(), *self._lanes))

    @property
    def ready(self) -> bool:
        """Every loop alive, partitions assigned and both dependencies answering."""
        return (bool(self._tasks) and self.alive and self._assigned
                and self.guard.up("redis") and self.guard.up("broker"))

    # the three tasks -----------------------------------------------------------------------
    async def _consume_loop(self) -> None:
        ctx, cp = self.ctx, self.checkpoint
        s = ctx.settings
        assert ctx.consumer is not None
        ahead: asyncio.Task | None = None  # the next batch, fetched and prepared while this one is written

        async def fetch() -> Prepared | None:
            # up to consume_max_records, taken from the fetched data PREPARE_SLICE records at a
            # time (aiokafka builds the record objects of a getmany at once: 20,000 of them held
            # the event loop ~30 ms) and parsed in between, letting the scoring lanes in
            prepared = Prepared()
            timeout = s.consume_timeout_ms
            while prepared.n < s.consume_max_records:
                step = min(PREPARE_SLICE, s.consume_max_records - prepared.n)
                batches = await ctx.consumer.getmany(timeout_ms=timeout, max_records=step)
                if ctx.consumer.assignment():
                    self._assigned = True
                got = sum(len(r) for r in batches.values())
                if batches:
                    self.ingest.prepare(batches, into=prepared)
                    await asyncio.sleep(0)
                if got < step:
                    break  # what was fetched is taken: write it
                timeout = 0
            return prepared if prepared.n else None

        try:
            while not ctx.stopping.is_set():
                if cp.lost:  # found at assignment: rebuild before consuming
                    async with self.batch_lock:
                        await ctx.guard.call("redis", "state rebuild", self._rebuild_lost, ctx.stopping)
                prepared = await (ahead if ahead is not None else fetch())
                ahead = None
                if prepared is not None:
                    async with self.batch_lock:
                        # fetch and parse N+1 while N's writes wait on Redis; writes stay in
                        # order (N+1 is written after N) and commits follow the writes
                        ahead = asyncio.create_task(fetch(), name="detector-fetch-ahead")
                        await self.ingest.write(prepared)
                if cp.uncommitted and time.monotonic() - cp.last_commit >= COMMIT_INTERVAL_S:
                    await cp.commit("interval")
                await ctx.guard.call("redis", "idle close", self.ingest.marks.close_idle_partitions, ctx.stopping)
                ctx.metrics.ready.set(1 if self.ready else 0)
            if ahead is not None:  # fetched, never written: not committed, the events replay
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead
                ahead = None
            await cp.commit("shutdown")
        finally:
            if ahead is not None:
                ahead.cancel()

    async def _rebuild_lost(self) -> None:
        for tp in sorted(self.checkpoint.lost & self.ctx.owned(), key=lambda t: t.partition):
            await self.ingest.rebuilder.rebuild(tp)
        self.checkpoint.lost.clear()

    async def _score_loop(self) -> None:
        """Claim due videos of the owned partitions, score, decide, publish; until stopped.
        The immediate path runs on its own, next to several cadence lanes
        (``DETECTOR_SCORING_LANES``), each for its own partitions: while one batch is scored
        (in the scoring process), another reads its windows or publishes."""
        assert self.scoring is not None
        scoring = self.scoring
        await scoring.warm()
        n = max(1, self.ctx.settings.scoring_lanes)
        # the immediate path wakes when a spike's mark is written (and looks every
        # IMMEDIATE_POLL_S anyway: marks from before a restart or a rebalance)
        passes = [("immediate", scoring.score_immediate, IMMEDIATE_POLL_S, self.arrivals.spiked)]
        passes += [(f"cadence-{i}", functools.partial(scoring.score_cadence, i, n), SCORE_POLL_S * (1 + i), None)
                   for i in range(n)]
        if self.ctx.accounts is not None:  # the user level: due accounts of the owned shards
            passes.append(("accounts", self.ctx.accounts.judge, ACCOUNT_POLL_S, None))
        lanes = self._lanes = [asyncio.create_task(self._score_lane(name, run, idle_s, wake), name=f"detector-scoring-{name}")
                               for name, run, idle_s, wake in passes]
        try:
            done, _ = await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in lanes:
                t.cancel()
            # bounded: a lane that swallows its cancellation (asyncio.wait_for in Python 3.11 can,
            # when what it waits for finishes at that moment) must not hold this task forever;
            # the failure is recorded already, and the process ends without it
            _, stuck = await asyncio.wait(lanes, timeout=LANE_STOP_S)
            if stuck:
                log.error("scoring lanes did not stop within %.0f s: %s", LANE_STOP_S,
                          ", ".join(t.get_name() for t in stuck))

    async def _score_lane(self, name: str, run: Callable[[], Awaitable[int]], idle_s: float,
                          wake: asyncio.Event | None = None) -> None:
        ctx = self.ctx
        backoff = Backoff(0.2, 5.0)
        try:
            while not ctx.stopping.is_set():
                if wake is not None:
                    wake.clear()  # before the pass: a spike marked during it wakes the next one
                try:
                    worked = await run()
                except TRANSIENT["redis"] + TRANSIENT["broker"] as exc:
                    dep = "broker" if isinstance(exc, TRANSIENT["broker"]) and not isinstance(exc, OSError) else "redis"
                    ctx.guard.mark_down(dep, f"scoring: {type(exc).__name__}: {str(exc)[:120]}")
                    ctx.guard.check_limit(dep)
                    await backoff.sleep()
                    continue
                backoff.reset()
                if worked:
                    continue
                if wake is None:
                    await asyncio.sleep(idle_s)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), idle_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("scoring lane %s failed", name)
            self.fail(f"scoring lane {name}", exc)  # before any sibling lane is cancelled or awaited
            raise
        if not ctx.stopping.is_set():
            self.fail(f"scoring lane {name}", RuntimeError("the lane ended while the worker runs"))

    async def _probe_loop(self) -> None:
        failed = 0
        while not self.ctx.stopping.is_set():
            try:
                await self._probe_broker()
                failed = 0
            except DependencyLost:
                raise  # the outage outlasted the limit: the worker ends (wait() sees this task fail)
            except Exception as exc:  # a failure is a missed sample; one that repeats is a dead probe
                failed += 1
                log.warning("broker probe failed (%d in a row): %s: %s", failed, type(exc).__name__, exc)
                if failed >= PROBE_FAILURES_FATAL:
                    raise
            self.ctx.metrics.ready.set(1 if self.ready else 0)
            await asyncio.sleep(BROKER_PROBE_S / 2)

    async def _probe_broker(self) -> None:
        ctx = self.ctx
        c = ctx.consumer
        now = time.monotonic()
        if c is None or now - self._probed < BROKER_PROBE_S:
            return
        self._probed = now
        assigned = list(c.assignment())
        if not assigned:
            return
        try:
            ends = await asyncio.wait_for(c.end_offsets(assigned), timeout=BROKER_PROBE_TIMEOUT_S)
        except TRANSIENT["broker"] as exc:
            ctx.guard.mark_down("broker", f"end offsets: {type(exc).__name__}")
            ctx.guard.check_limit("broker")
            return
        ctx.guard.mark_up("broker")
        for tp, high in ends.items():
            pos = self.checkpoint.positions.get(tp)
            if pos is None:
                committed = None
                with contextlib.suppress(Exception):
                    committed = await asyncio.wait_for(c.committed(tp), timeout=BROKER_PROBE_TIMEOUT_S)
                pos = committed if committed is not None else 0
            ctx.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - pos))

    # what the web views ask --------------------------------------------------------------
    def model_status(self) -> dict:
        return self.slot.status()

    async def account(self, user_id: str) -> dict | None:
        return await self.ctx.accounts.current(user_id) if self.ctx.accounts is not None else None

    async def quarantined(self) -> list[dict]:
        return [e.to_dict() for e in await self.scoring.quarantine.entries()] if self.scoring is not None else []

    async def current_score(self, video_id: str) -> dict | None:
        return await self.scoring.current_score(video_id) if self.scoring is not None else None
