"""The detection loop: consume a batch, update windows, score what changed, flag, commit.

One ``Detector`` per worker process, two tasks:

- the consume loop: one Kafka fetch (``getmany``, thousands of records) per iteration;
  events are parsed, invalid ones go to the dead-letter topic, valid ones update the Redis
  windows in one atomic Lua call, and the touched videos are marked due in the durable
  re-score schedule (``schedule.py``): at the cadence, or at once when a minute count looks
  like a spike. Offsets are committed once windows and marks are written, never before, so a
  crash replays work instead of losing it (window updates skip already-applied offsets);
- the scoring loop: claims due videos in batches, scores them with one model (in a thread,
  so consumption goes on), publishes flags, then releases them. A crashed scorer's lease
  expires and the videos are scored again; flag ids are deterministic, so nothing repeats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time

import numpy as np
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream_detector import keys, redis_client
from stream_detector.config import Settings
from stream_detector.decision import StreamDecision, Thresholds, closed_window
from stream_detector.dependencies import TRANSIENT, DependencyGuard, DependencyLost
from stream_detector.events import Event, Rejection, dead_letter_headers, parse_event
from stream_detector.flags import iso
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact, ModelError
from stream_detector.operating_points import OperatingPointError
from stream_detector.patterns import BurstDetector, usual_hour
from stream_detector.publisher import FlagPublisher, Scored
from stream_detector.schedule import RescoreSchedule, now_ms
from stream_detector.scoring import Scorer, VideoScore
from stream_detector.series import METRICS, HourlySeries
from stream_detector.windows import ApplyResult, WindowStore

log = logging.getLogger("stream_detector.detector")

FLAG_STATE_TTL_S = 30 * 24 * 3600
COMMIT_INTERVAL_S = 0.5
URGENT_DUE_MS = 0  # the spike path: due before any cadence mark
CADENCE_BATCH = 128  # videos per cadence scoring call: bounds how long a spike can wait
SCORE_POLL_S = 0.05
MAX_TRACKED_VIDEOS = 1_000_000
WATERMARK_EVENTS = 2048  # recent event times per partition behind its watermark
WATERMARK_QUANTILE = 0.99  # one in a hundred of them may run ahead without moving it
BROKER_PROBE_S = 1.0
COMMIT_TIMEOUT_S = 5.0
BROKER_PROBE_TIMEOUT_S = 1.5
MAX_DLQ_KEY_BYTES = 1024  # a dead-letter copy's key beyond this is cut (its partition does not matter)  # bound of the in-memory arrival-time map (~100 MB)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    async def on_partitions_revoked(self, revoked) -> None:
        # aiokafka calls this while the consume loop may be writing a fetched batch: wait for
        # it, so that what is committed is exactly what is written
        async with self.detector.batch_lock:
            if revoked:
                await self.detector.commit("rebalance")  # the new owner takes over the due schedule
            for tp in revoked:
                self.detector.forget_partition(tp)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.detector.load_watermarks(assigned)
        log.info("assigned partitions=%s", sorted(tp.partition for tp in assigned))


class Detector:
    """Consumer loop + scoring + flag publication with an explicit start/stop lifecycle."""

    def __init__(self, settings: Settings, model: ModelArtifact, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.scorer = Scorer(model)
        self._next_scorer: Scorer | None = None
        self.shadow: Scorer | None = None
        self._next_shadow: tuple[Scorer | None] | None = None
        self.shadow_stats: dict[str, float] = {}
        self.model_since = time.time()
        self.model_swaps = 0
        self._shadow_error_logged = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.redis: aioredis.Redis | None = None
        self.windows: WindowStore | None = None
        self.schedule: RescoreSchedule | None = None
        self._arrival_ms: dict[str, float] = {}  # newest Kafka timestamp per unscored video
        self._urgent: set[str] = set()  # spike path: scored at once, counted as "immediate"
        self._last_commit = 0.0
        self._uncommitted = False
        self._score_task: asyncio.Task | None = None
        self._probe_task: asyncio.Task | None = None
        self._next_partition = 0
        self._watermark: dict[int, float] = {}
        self._event_high: dict[int, float] = {}  # robust newest event time, per partition
        self._recent_ts: dict[int, collections.deque] = {}
        self._clock: dict[int, int] = {}  # per partition: its open event hour (hours before it are closed)
        self._last_events: dict[int, float] = {}  # monotonic time of a partition's last valid event
        self._idle_closed: set[int] = set()
        self._decisions: dict[str, StreamDecision] = {}
        self.bursts = BurstDetector()
        self.guard = DependencyGuard(self.metrics, limit_s=settings.dependency_timeout_seconds)
        self._saved: set[int] = set()  # partitions whose state marker this worker wrote or found
        self._lost: set[TopicPartition] = set()  # partitions whose windows Redis lost: to rebuild
        self._probed = 0.0
        self.publisher: FlagPublisher | None = None
        self._positions: dict[TopicPartition, int] = {}  # next offset to commit: all before it is written
        self.batch_lock = asyncio.Lock()  # held while a fetched batch is being written
        self._active_refreshed = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._assigned = False
        self.consumed = 0
        self._set_model_info(model)
        self.decision_for(model)  # refuse a target FPR the model cannot meet before starting

    # lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.redis = redis_client.connect(s.redis_url)
        await self.guard.call("redis", "startup ping", self.redis.ping)  # a worker may start while Redis is down
        self.windows = WindowStore(
            self.redis,
            window_hours=s.window_hours,
            ttl_seconds=s.idle_ttl_seconds,
            prefix=s.key_prefix,
            spike_minute_count=s.spike_minute_count,
            metrics=self.metrics,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            linger_ms=5,
            acks="all",
            request_timeout_ms=30000,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
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
        await self.consumer.start()
        self.schedule = RescoreSchedule(self.redis, prefix=s.key_prefix, topic=s.events_topic, metrics=self.metrics)
        self.publisher = FlagPublisher(self.redis, self.producer, self.metrics, topic=s.flags_topic,
                                       state_key=self.flag_key, state_ttl_s=FLAG_STATE_TTL_S)
        self.consumer.subscribe([s.events_topic], listener=_Rebalance(self))
        self._task = asyncio.create_task(self._run(), name="detector-loop")
        self._score_task = asyncio.create_task(self._score_loop(), name="detector-scoring")
        self._probe_task = asyncio.create_task(self._probe_loop(), name="detector-broker-probe")
        log.info("detector started group=%s topic=%s model=%s", s.consumer_group, s.events_topic, self.scorer.model.version)

    async def stop(self) -> None:
        """Finish the in-flight batch and scoring batch, commit, close. What is still due stays
        in the durable schedule for the next owner of the partitions."""
        self._stopping.set()
        for task, name in ((self._task, "detector loop"), (self._score_task, "scoring loop"),
                           (self._probe_task, "broker probe")):
            if task is None:
                continue
            try:
                await asyncio.wait_for(task, timeout=30)
            except TimeoutError:
                log.error("%s did not finish within 30s; cancelling", name)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:  # already logged by the loop; keep closing the rest
                pass
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.redis is not None:
            await self.redis.aclose()
        self.metrics.ready.set(0)
        log.info("detector stopped consumed=%d flags=%d", self.consumed, self.flags_published)

    @property
    def flags_published(self) -> int:
        return self.publisher.published if self.publisher is not None else 0

    # decisions -------------------------------------------------------------------
    def decision_for(self, model: ModelArtifact) -> StreamDecision:
        """The stream decision of a model at this deployment's target organic flag rate
        (``DETECTOR_TARGET_FPR``; 0 = the model's default), from its operating points."""
        cached = self._decisions.get(model.sha256)
        if cached is not None:
            return cached
        target = self.settings.target_fpr or None
        try:
            publish = model.publish_threshold(target)
        except OperatingPointError as exc:
            raise ModelError(f"DETECTOR_TARGET_FPR={self.settings.target_fpr:g}: {exc}") from None
        d = dict(model.decision)
        base = Thresholds.for_publish(publish, model.combiner.hour_threshold)
        thresholds = Thresholds(
            publish=base.publish,
            withdraw=float(d.get("withdraw_ratio", 0.5)) * base.publish,
            extent=base.extent,
            burst=float(d.get("burst", base.burst)),
            confirm_hours=int(d.get("confirm_hours", base.confirm_hours)),
            withdraw_after_hours=int(d.get("withdraw_after_hours", base.withdraw_after_hours)),
        )
        decision = self._decisions[model.sha256] = StreamDecision(thresholds)
        return decision

    @property
    def confirm_hours(self) -> int:
        return self.decision_for(self.scorer.model).thresholds.confirm_hours

    async def wait(self) -> None:
        """Until a loop ends (which, outside stop(), means it failed)."""
        tasks = [t for t in (self._task, self._score_task, self._probe_task) if t is not None]
        if tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()

    @property
    def ready(self) -> bool:
        """Consuming (loop alive, partitions assigned) and both dependencies answering."""
        return (self._task is not None and not self._task.done() and self._assigned
                and self.guard.up("redis") and self.guard.up("broker"))

    # model ---------------------------------------------------------------------
    def swap_model(self, model: ModelArtifact) -> None:
        """Takes effect between scoring batches: no batch is scored by two models.

        ``model`` must be validated already (``ModelFollower`` does it in a thread); the swap
        itself is a reference assignment at the top of the next scoring batch. Raises
        ``ModelError`` when the model cannot meet this deployment's target organic flag rate.
        """
        self.decision_for(model)
        self._next_scorer = Scorer(model)

    def set_shadow(self, model: ModelArtifact | None) -> None:
        """Run ``model`` beside the serving one on the same batches (None: stop), from the
        next scoring batch on."""
        self._next_shadow = (Scorer(model) if model is not None else None,)

    @property
    def serving_sha(self) -> str:
        """sha256 of the model serving from the next batch on (pending swap included)."""
        return (self._next_scorer or self.scorer).model.sha256

    @property
    def shadow_sha(self) -> str | None:
        shadow = self._next_shadow[0] if self._next_shadow is not None else self.shadow
        return shadow.model.sha256 if shadow is not None else None

    def _apply_swaps(self) -> None:
        if self._next_scorer is not None:
            t0 = time.perf_counter()
            old = self.scorer.model
            self.scorer, self._next_scorer = self._next_scorer, None
            self._set_model_info(self.scorer.model)
            self.model_since = time.time()
            self.model_swaps += 1
            log.info("model swap %s %s -> %s %s in %.0f us (between scoring batches)", old.name, old.version,
                     self.scorer.model.name, self.scorer.model.version, 1e6 * (time.perf_counter() - t0))
        if self._next_shadow is not None:
            (self.shadow,), self._next_shadow = self._next_shadow, None
            self.shadow_stats = {"since": time.time(), "videos": 0, "agree": 0, "serving_flagged": 0,
                                 "shadow_flagged": 0, "flags_published": 0, "errors": 0, "abs_delta_sum": 0.0}
            info = self.shadow.model.info() if self.shadow else {"name": "none", "version": "none", "sha256": "none"}
            self.metrics.shadow_model_info.info(info)

    def model_status(self) -> dict:
        model = self.scorer.model
        decision = self.decision_for(model)
        status = model.info() | {
            "threshold": model.threshold,
            "stream_threshold": decision.thresholds.publish,
            "publish_threshold": decision.thresholds.publish,
            "target_fpr": self.settings.target_fpr or model.default_target_fpr,
            "decision": decision.thresholds.to_dict(),
            "operating_points": model.stream_curve is not None,
            "window_hours": model.window_hours,
            "path": model.path,
            "since": iso(self.model_since),
            "swaps": self.model_swaps,
        }
        if self._next_scorer is not None:
            status["pending"] = self._next_scorer.model.info()
        shadow = None
        if self.shadow is not None:
            st = self.shadow_stats
            n = max(st["videos"], 1)
            shadow = self.shadow.model.info() | {
                "since": iso(st["since"]),
                "videos_compared": int(st["videos"]),
                "agreement": round(st["agree"] / n, 4) if st["videos"] else None,
                "serving_flag_rate": round(st["serving_flagged"] / n, 4) if st["videos"] else None,
                "shadow_flag_rate": round(st["shadow_flagged"] / n, 4) if st["videos"] else None,
                "mean_abs_score_delta": round(st["abs_delta_sum"] / n, 4) if st["videos"] else None,
                "shadow_flags_published": int(st["flags_published"]),
                "errors": int(st["errors"]),
                "topic": self.settings.shadow_flags_topic,
            }
        status["shadow"] = shadow
        return status

    def _set_model_info(self, model: ModelArtifact) -> None:
        self.metrics.model_info.info(model.info())

    # main loop -----------------------------------------------------------------
    async def _run(self) -> None:
        assert self.consumer is not None
        s = self.settings
        try:
            while not self._stopping.is_set():
                if self._lost:  # found at assignment: rebuild before consuming
                    async with self.batch_lock:
                        await self.guard.call("redis", "state rebuild", lambda: self._check_state(set()), self._stopping)
                batches = await self.consumer.getmany(timeout_ms=s.consume_timeout_ms, max_records=s.consume_max_records)
                if self.consumer.assignment():
                    self._assigned = True
                if batches:
                    async with self.batch_lock:
                        await self._process(batches)
                    self._uncommitted = True
                if self._uncommitted and time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
                    await self.commit("interval")
                await self.guard.call("redis", "idle close", self._close_idle_partitions, self._stopping)
                self.metrics.ready.set(1 if self.ready else 0)
            await self.commit("shutdown")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("detector loop failed")
            self.metrics.ready.set(0)
            raise

    async def _process(self, batches: dict[TopicPartition, list]) -> None:
        s = self.settings
        now = time.time()
        events: list[Event] = []
        offsets: list[int] = []
        partitions: list[int] = []
        sources: list[tuple] = []  # (record, tp) of each valid event, for its dead-letter copy
        arrival: dict[str, float] = {}
        dead: list[tuple] = []  # (record, tp, rejection)
        fetched: dict[TopicPartition, int] = {}
        n = 0
        for tp, records in batches.items():
            p = tp.partition
            parsed_ok: list[tuple] = []
            for rec in records:
                n += 1
                try:
                    parsed = parse_event(
                        rec.value,
                        now=now,
                        max_bytes=s.max_event_bytes,
                        max_count=s.max_count_per_event,
                        max_future_s=s.max_future_seconds,
                    )
                except Exception as exc:  # noqa: BLE001 - one record must never stop its partition
                    log.exception("parse failed on %s[%d]@%d", tp.topic, tp.partition, rec.offset)
                    parsed = Rejection("internal_error", f"parse: {type(exc).__name__}: {exc}")
                    self.metrics.internal_errors.labels(stage="parse").inc()
                if isinstance(parsed, Rejection):
                    dead.append((rec, tp, parsed))
                    continue
                parsed_ok.append((rec, parsed))
            # the partition's event time: a high quantile of its recent event times, so one event
            # from a fast clock cannot move it (and with it the lateness allowance of every video).
            # Events are judged against the event time before their batch (a replayed batch can
            # span hours of event time: its own events must not make each other late).
            low = self._robust_high(p, []) - s.allowed_lateness_seconds
            high = self._robust_high(p, [e.ts for _, e in parsed_ok])
            for rec, parsed in parsed_ok:
                if parsed.ts < low:
                    dead.append((rec, tp, Rejection("late", f"ts {parsed.ts:.0f} < watermark {low:.0f}")))
                    self.metrics.events_late.inc()
                    continue
                events.append(parsed)
                offsets.append(rec.offset)
                partitions.append(p)
                sources.append((rec, tp))
                if rec.key is not None and rec.key != parsed.video_id.encode():
                    self.metrics.key_mismatch.inc()
                self._last_events[p] = time.monotonic()
                if rec.timestamp > arrival.get(parsed.video_id, 0.0):
                    arrival[parsed.video_id] = rec.timestamp
            self._watermark[p] = max(self._watermark.get(p, 0.0), high - s.allowed_lateness_seconds)
            self._event_high[p] = max(self._event_high.get(p, 0.0), high)
            if records:
                self._check_continuity(tp, records[0].offset)
                fetched[tp] = records[-1].offset + 1
        self.consumed += n
        self.metrics.consume_batch_size.observe(n)
        if self._watermark:
            self.metrics.watermark.set(max(self._watermark.values()))
        if events:
            assert self.windows is not None
            async def write_windows():
                await self._check_state(set(partitions))
                return await self._apply_isolating(events, offsets, partitions)

            result, poisoned = await self.guard.call("redis", "windows", write_windows, self._stopping)
            if poisoned:
                bad = set(poisoned)
                for idx, reason in poisoned.items():
                    rec, tp = sources[idx]
                    dead.append((rec, tp, Rejection("internal_error", reason)))
                keep = [i for i in range(len(events)) if i not in bad]
                events = [events[i] for i in keep]
                partitions = [partitions[i] for i in keep]
                sources = [sources[i] for i in keep]
                position = {i: k for k, i in enumerate(keep)}
                late = [position[i] for i in result.late]
            else:
                late = result.late
            for idx in late:
                rec, tp = sources[idx]
                dead.append((rec, tp, Rejection("late", f"ts {events[idx].ts:.0f} older than the {s.window_hours} h window")))
            await self.guard.call("redis", "schedule", lambda: self._mark_due(events, partitions, arrival, result.spikes),
                                  self._stopping)
            await self.guard.call("redis", "active videos", lambda: self._track_active({e.video_id for e in events}),
                                  self._stopping)
            self._count_consumed(events)  # replayed events are counted by the window store
        if dead:
            await self.guard.call("broker", "dead letters", lambda: self._dead_letter(dead), self._stopping)
        self._positions.update(fetched)  # committable: windows, marks and dead letters are written

    def _check_continuity(self, tp: TopicPartition, first_offset: int) -> None:
        """A fetch that does not start where the last one ended means the log moved under us:
        records deleted or truncated (a gap: those events were never seen) or the position
        reset backwards (a topic re-created, an offset reset: events replay)."""
        expected = self._positions.get(tp)
        if expected is None or first_offset == expected:
            return
        if first_offset > expected:
            self.metrics.log_discontinuities.labels(kind="gap").inc()
            self.metrics.log_records_skipped.inc(first_offset - expected)
            log.error("partition %s[%d]: offsets %d..%d are gone from the log (retention, truncation or a "
                      "re-created topic); their events were never applied", tp.topic, tp.partition, expected,
                      first_offset - 1)
        else:
            self.metrics.log_discontinuities.labels(kind="rewind").inc()
            log.error("partition %s[%d]: the log position went back from %d to %d (offset reset or re-created "
                      "topic); windows skip what they hold only for the same offsets", tp.topic, tp.partition,
                      expected, first_offset)

    def _robust_high(self, partition: int, batch_ts: list[float]) -> float:
        """The partition's event-time high mark: the ``WATERMARK_QUANTILE`` of its last
        ``WATERMARK_EVENTS`` accepted-or-candidate event times, never below the persisted one."""
        ring = self._recent_ts.get(partition)
        if ring is None:
            ring = self._recent_ts[partition] = collections.deque(maxlen=WATERMARK_EVENTS)
        ring.extend(batch_ts)
        floor = self._watermark.get(partition, 0.0) + self.settings.allowed_lateness_seconds
        if not ring:
            return floor
        return max(floor, float(np.quantile(np.fromiter(ring, dtype=np.float64, count=len(ring)), WATERMARK_QUANTILE)))

    def _count_consumed(self, events: list[Event]) -> None:
        totals = [0, 0, 0, 0]
        for e in events:
            c = e.counts
            totals[0] += c[0] > 0
            totals[1] += c[1] > 0
            totals[2] += c[2] > 0
            totals[3] += c[3] > 0
        for m, k in zip(METRICS, totals, strict=True):
            if k:
                self.metrics.events_consumed.labels(metric=m).inc(k)

    async def _apply_isolating(
        self, events: list[Event], offsets: list[int], partitions: list[int]
    ) -> tuple[ApplyResult, dict[int, str]]:
        """Apply a batch to the windows; if it fails for a reason that is not the connection
        (one record the code cannot handle), bisect down to the failing records so that they
        alone are dead-lettered and the rest of the partition goes on. Re-applying a half that
        already landed is safe: the windows skip offsets they hold."""
        assert self.windows is not None
        poisoned: dict[int, str] = {}
        merged = ApplyResult()

        async def run(idx: list[int]) -> None:
            try:
                part = await self.windows.apply([events[i] for i in idx], [offsets[i] for i in idx],
                                                [partitions[i] for i in idx])
            except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the record, never crash-loop on it
                if len(idx) == 1:
                    log.error("window update failed for one record (dead-lettered as internal_error): %s: %s",
                              type(exc).__name__, exc)
                    poisoned[idx[0]] = f"windows: {type(exc).__name__}: {exc}"
                    return
                half = len(idx) // 2
                await run(idx[:half])
                await run(idx[half:])
                return
            merged.late.extend(idx[j] for j in part.late)
            merged.replayed += part.replayed
            merged.changed |= part.changed
            merged.spikes |= part.spikes
            merged.no_dedup += part.no_dedup
            if part.no_dedup:
                self.metrics.no_dedup.inc(part.no_dedup)

        await run(list(range(len(events))))
        merged.late.sort()
        if poisoned:
            self.metrics.internal_errors.labels(stage="windows").inc(len(poisoned))
        return merged, poisoned

    async def _dead_letter(self, dead: list[tuple]) -> None:
        """Send rejected records to the dead-letter topic: their original bytes (truncated, with
        headers saying so, when the copy would exceed the producer's request limit)."""
        assert self.producer is not None
        limit = self.settings.dlq_max_value_bytes
        futures = []
        for rec, tp, rejection in dead:
            value, key = rec.value, rec.key
            headers = dead_letter_headers(rejection, tp.topic, tp.partition, rec.offset)
            if value is not None and len(value) > limit:
                headers += [("dlq.truncated", b"true"), ("dlq.original_size", str(len(value)).encode())]
                value = value[:limit]
            if key is not None and len(key) > MAX_DLQ_KEY_BYTES:
                headers += [("dlq.key_truncated", b"true"), ("dlq.original_key_size", str(len(key)).encode())]
                key = key[:MAX_DLQ_KEY_BYTES]
            futures.append(await self.producer.send(self.settings.dlq_topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)
        for _, _, rejection in dead:  # counted once delivered (a retried send is not counted twice)
            self.metrics.events_invalid.labels(reason=rejection.reason).inc()

    async def _mark_due(self, events: list[Event], partitions: list[int], arrival: dict[str, float],
                        spikes: set[str]) -> None:
        """Schedule what the new events make worth scoring.

        The hourly decision judges closed hours only (``decision.py``), so a video is scored
        when an hour it was active in closes (the partition's event time moved past it), not
        on every change: the answer would be the same. Also scheduled: videos whose minute
        count reached the spike threshold (the immediate path, at once) and videos that
        received late events into already closed hours (at the cadence)."""
        assert self.schedule is not None and self.redis is not None
        confirm = self.confirm_hours
        now = now_ms()
        cadence = now + int(self.settings.score_interval_seconds * 1000)
        clocks: dict[int, tuple[int, int]] = {}
        for p in set(partitions):
            old = self._clock.get(p)
            new = int(self._event_high.get(p, 0.0) // 3600)
            if old is None:
                old = new
            clocks[p] = (old, max(old, new))
        due: dict[int, dict[str, int]] = {}
        heads: dict[int, dict[str, int]] = {}
        for e, p in zip(events, partitions, strict=True):
            hour = int(e.ts // 3600)
            vid = e.video_id
            head = heads.setdefault(p, {})
            if hour > head.get(vid, -1):
                head[vid] = hour
            old, new = clocks[p]
            marks = due.setdefault(p, {})
            if vid in spikes:
                marks[vid] = URGENT_DUE_MS
            elif hour < old:  # late event into a closed hour: re-judge at the cadence
                marks[vid] = min(marks.get(vid, cadence), cadence)
            elif new > old and hour >= old - confirm:  # an hour it was active in just closed
                marks[vid] = min(marks.get(vid, now), now)
        pipe = self.redis.pipeline(transaction=False)
        closing = [p for p, (old, new) in clocks.items() if new > old]
        for p in closing:  # idle videos whose last active hour (or the one after) just closed
            old, new = clocks[p]
            pipe.zrangebyscore(self.active_key(p), old - confirm, new - 1)
        for p, head in heads.items():
            pipe.zadd(self.active_key(p), head, gt=True)
            pipe.zremrangebyscore(self.active_key(p), "-inf", clocks[p][1] - confirm - 2)
        results = await self.metrics.timed_redis("schedule", pipe.execute())
        for p, members in zip(closing, results[: len(closing)], strict=True):
            marks = due.setdefault(p, {})
            for raw in members:
                vid = raw.decode() if isinstance(raw, bytes) else raw
                marks[vid] = min(marks.get(vid, now), now)
            old, new = clocks[p]
            self.metrics.hours_closed.labels(reason="events").inc(new - old)
        for p, (_, new) in clocks.items():
            self._clock[p] = new
            self._idle_closed.discard(p)
        await self.schedule.mark(due)
        if len(self._arrival_ms) > MAX_TRACKED_VIDEOS:
            # entries of videos now scored by another worker (after a rebalance) never pop here;
            # dropping them only loses latency samples and the "immediate" label, not scoring
            log.warning("dropping %d tracked arrival times (bound %d)", len(self._arrival_ms), MAX_TRACKED_VIDEOS)
            self._arrival_ms.clear()
            self._urgent.clear()
        for vid, t in arrival.items():
            if t > self._arrival_ms.get(vid, 0.0):
                self._arrival_ms[vid] = t
        self._urgent |= spikes

    async def _close_idle_partitions(self) -> None:
        """A partition with no events for ``DETECTOR_IDLE_CLOSE_SECONDS`` closes its open event
        hour (and the ``confirm_hours`` after it), once: the last hours of a stream that
        stopped are judged too. Events that come later for those hours are late events."""
        if self.consumer is None or self.schedule is None or self.redis is None:
            return
        limit = self.settings.idle_close_seconds
        if limit <= 0:
            return
        t = time.monotonic()
        confirm = self.confirm_hours
        due: dict[int, dict[str, int]] = {}
        for tp in self.consumer.assignment():
            p = tp.partition
            last = self._last_events.get(p)
            if last is None or p in self._idle_closed or t - last < limit or p not in self._clock:
                continue
            old = self._clock[p]
            new = old + 1 + confirm
            members = await self.metrics.timed_redis(
                "schedule", self.redis.zrangebyscore(self.active_key(p), old - 1 - confirm, new - 1))
            now = now_ms()
            due[p] = {(m.decode() if isinstance(m, bytes) else m): now for m in members}
            self._clock[p] = new
            self._idle_closed.add(p)
            self.metrics.hours_closed.labels(reason="idle").inc(new - old)
            log.info("partition %d idle for %.0f s: closed event hours up to %s (%d videos to judge)", p,
                     t - last, iso(new * 3600), len(members))
        if due:
            await self.schedule.mark(due)

    async def commit(self, reason: str) -> None:
        """Commit consumed offsets: their windows and schedule marks are durable already."""
        self._last_commit = time.monotonic()
        if self.consumer is None or not self.consumer.assignment() or not self._uncommitted:
            return
        owned = self.consumer.assignment()
        offsets = {tp: pos for tp, pos in self._positions.items() if tp in owned}
        if not offsets:
            return
        try:  # exactly what is written, not the fetch positions; a frozen coordinator must not hang the loop
            await asyncio.wait_for(self.consumer.commit(offsets), timeout=COMMIT_TIMEOUT_S)
        except TRANSIENT["broker"] as exc:
            self.guard.mark_down("broker", f"commit: {type(exc).__name__}")
            self.guard.check_limit("broker")
            return
        except Exception as exc:  # CommitFailedError during a rebalance: the events replay
            log.warning("commit (%s) failed (%s); events since the last commit will replay", reason, exc)
            return
        self.guard.mark_up("broker")
        self._uncommitted = False
        # After the commit, never before: a watermark ahead of the committed offsets would
        # make replayed events look late after a crash. Behind it is only more lenient.
        await self.guard.call("redis", "watermarks", self.save_watermarks, self._stopping)

    # scoring -------------------------------------------------------------------
    async def _score_loop(self) -> None:
        """Claim due videos of the owned partitions, score, flag, release; until stopped."""
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                try:
                    worked = await self.score_due()
                except TRANSIENT["redis"] + TRANSIENT["broker"] as exc:
                    # leased videos stay due (the lease expires); a flag sent but not yet
                    # remembered is sent again with the same id
                    dep = "broker" if isinstance(exc, TRANSIENT["broker"]) and not isinstance(exc, OSError) else "redis"
                    self.guard.mark_down(dep, f"scoring: {type(exc).__name__}: {str(exc)[:120]}")
                    self.guard.check_limit(dep)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                if not worked:
                    await asyncio.sleep(SCORE_POLL_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scoring loop failed")
            self.metrics.ready.set(0)
            raise

    async def score_due(self) -> int:
        """One scoring pass: every spiked video first (the immediate path), then one bounded
        batch of videos due at the cadence, taking the owned partitions in turn, so a spike
        never waits behind more than one batch. Returns the number of videos scored."""
        self._apply_swaps()  # also when idle, so /model and new batches show a pushed model at once
        if self.consumer is None or self.schedule is None:
            return 0
        owned = sorted(tp.partition for tp in self.consumer.assignment())
        if not owned:
            return 0
        scored = 0
        for p in owned:  # immediate path: due time URGENT_DUE_MS sorts ahead of everything
            scored += await self._score_claimed(p, self.settings.score_batch_size, URGENT_DUE_MS, "immediate")
        self._next_partition = (self._next_partition + 1) % len(owned)
        for k in range(len(owned)):
            p = owned[(self._next_partition + k) % len(owned)]
            n = await self._score_claimed(p, min(CADENCE_BATCH, self.settings.score_batch_size), None, "cadence")
            if n:
                return scored + n
        return scored

    async def _score_claimed(self, partition: int, limit: int, at_ms: int | None, path: str) -> int:
        assert self.schedule is not None
        ids, lease = await self.schedule.claim(partition, limit, at_ms=at_ms)
        if not ids:
            return 0
        if any(v in self._urgent for v in ids):
            path = "immediate"
        self._urgent.difference_update(ids)
        arrival = {v: self._arrival_ms.pop(v, 0.0) for v in ids}
        await self._score_batch(ids, arrival, path, partition)
        await self.schedule.release(partition, ids, lease)
        return len(ids)

    def _prepare(self, raw: HourlySeries, now_hour: int, confirm: int) -> tuple[HourlySeries, object]:
        """The closed window the hourly decision judges, and the minute ring's burst evidence."""
        closed = closed_window(raw, now_hour, confirm)
        burst = None
        ring = raw.meta.get("minute_counts")
        if ring is not None and raw.end_hour >= now_hour and int(np.max(ring)) >= self.bursts.min_peak:
            usual, observed, mix = usual_hour(closed.counts)
            if observed >= self.bursts.min_history_hours:
                burst = self.bursts.evidence(ring, usual, int(raw.meta.get("minute_head", 0)), mix)
        return closed, burst

    async def _score_batch(self, ids: list[str], arrival: dict[str, float], path: str, partition: int) -> None:
        assert self.windows is not None and self.redis is not None and self.publisher is not None
        self._apply_swaps()  # a pushed model takes over here, between two scoring batches
        scorer, shadow = self.scorer, self.shadow  # one model (and one shadow) per batch
        decision = self.decision_for(scorer.model)
        confirm = decision.thresholds.confirm_hours
        now_hour = self._clock.get(partition, 0)
        series = await self.windows.read(ids)
        prepared = [(v, *self._prepare(series[v], now_hour, confirm)) for v in ids if v in series]
        prepared = [x for x in prepared if x[1].hours > 0]
        if not prepared:
            return
        present = [closed for _, closed, _ in prepared]

        def run() -> tuple[list[VideoScore], float, list[VideoScore] | None]:
            t0 = time.perf_counter()
            ours = scorer.score(present)
            spent = time.perf_counter() - t0
            theirs = self._shadow_score(shadow, present, ours) if shadow is not None else None
            return ours, spent, theirs

        # numpy and onnxruntime release the GIL: consumption goes on while a batch is scored
        scores, spent, shadow_scores = await asyncio.to_thread(run)
        self.metrics.inference_latency.observe(spent)
        self.metrics.inference_batch_size.observe(len(present))
        self.metrics.videos_scored.labels(path=path).inc(len(present))
        batch = [Scored(vs, now_hour, burst, arrival.get(vid, 0.0))
                 for (vid, _, burst), vs in zip(prepared, scores, strict=True)]
        wm = max(self._watermark.values()) if self._watermark else 0.0
        sent = await self.publisher.run(batch, decision, scorer.model, watermark=wm)
        await self._store_scores(batch, scorer, decision, shadow, shadow_scores, {s.score.video_id: d for s, d in sent})
        if shadow is not None and shadow_scores:
            shadow_batch = [Scored(vs, now_hour, b.burst, b.arrival_ms) for b, vs in zip(batch, shadow_scores, strict=True)]
            published = await self._shadow_publisher(shadow.model).run(
                shadow_batch, self.decision_for(shadow.model), shadow.model, watermark=wm)
            self.shadow_stats["flags_published"] = self.shadow_stats.get("flags_published", 0) + len(published)

    def _shadow_publisher(self, model: ModelArtifact) -> FlagPublisher:
        assert self.redis is not None and self.producer is not None
        return FlagPublisher(self.redis, self.producer, self.metrics, topic=self.settings.shadow_flags_topic,
                             state_key=lambda v: self.shadow_flag_key(v, model.sha256),
                             state_ttl_s=self.settings.idle_ttl_seconds, shadow=True)

    def _shadow_score(self, shadow: Scorer, present: list, scores: list[VideoScore]) -> list[VideoScore] | None:
        """Score the same batch with the shadow model and compare; never breaks serving."""
        try:
            theirs = shadow.score(present)
        except Exception:  # noqa: BLE001 - a failing shadow must not stop the serving model
            self.shadow_stats["errors"] = self.shadow_stats.get("errors", 0) + 1
            if time.monotonic() - self._shadow_error_logged > 60:
                self._shadow_error_logged = time.monotonic()
                log.exception("shadow model %s failed on a batch; serving is unaffected", shadow.model.version)
            return None
        st = self.shadow_stats
        m = self.metrics
        counts = dict.fromkeys(("both_flagged", "both_clear", "serving_only", "shadow_only"), 0)
        for a, b in zip(scores, theirs, strict=True):
            outcome = ("both_flagged" if b.flagged else "serving_only") if a.flagged else (
                "shadow_only" if b.flagged else "both_clear")
            counts[outcome] += 1
            delta = b.score - a.score
            m.shadow_score_delta.observe(delta)
            st["abs_delta_sum"] += abs(delta)
        for outcome, k in counts.items():
            if k:
                m.shadow_comparisons.labels(outcome=outcome).inc(k)
        st["videos"] += len(scores)
        st["agree"] += counts["both_flagged"] + counts["both_clear"]
        st["serving_flagged"] += counts["both_flagged"] + counts["serving_only"]
        st["shadow_flagged"] += counts["both_flagged"] + counts["shadow_only"]
        return theirs

    async def _store_scores(self, batch: list[Scored], scorer: Scorer, decision: StreamDecision,
                            shadow: Scorer | None = None, shadow_scores: list[VideoScore] | None = None,
                            sent: dict[str, dict] | None = None) -> None:
        """Keep the latest score per video for /score/{video_id} (one pipeline per batch): the
        scoring of its closed window (the offline verdict, as `stream-detector score` gives it)
        and, under ``stream``, the last flag record published now."""
        assert self.redis is not None
        model = scorer.model
        pipe = self.redis.pipeline(transaction=False)
        for i, item in enumerate(batch):
            vs = item.score
            doc = vs.to_dict() | {
                "threshold": round(vs.threshold, 4),
                "explanation": vs.explanation,
                "end_hour": vs.end_hour,
                "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
                "scored_at": time.time(),
                "stream": {"publish_threshold": round(decision.thresholds.publish, 4),
                           "statistic": round(decision.statistic(vs), 4),
                           "burst": round(item.burst.evidence, 4) if item.burst is not None else None},
            }
            rec = (sent or {}).get(vs.video_id)
            if rec is not None:
                doc["stream"]["published"] = {"flag_id": rec["flag_id"], "status": rec["status"]}
            if shadow is not None and shadow_scores:
                other = shadow_scores[i]
                doc["shadow"] = {"score": round(other.score, 4), "flagged": other.flagged,
                                 "model": {"name": shadow.model.name, "version": shadow.model.version,
                                           "sha256": shadow.model.sha256}}
            pipe.set(self.score_key(vs.video_id), json.dumps(doc), ex=self.settings.idle_ttl_seconds)
        await self.metrics.timed_redis("store_scores", pipe.execute())

    async def _track_active(self, video_ids: set[str]) -> None:
        """Distinct videos updated per hour in a HyperLogLog (one PFADD per batch); the gauge
        is the union of the last 24 hours, across all workers, refreshed every 10 s."""
        assert self.redis is not None
        hour = int(time.time() // 3600)
        key = keys.active_videos(self.settings.key_prefix, hour)
        pipe = self.redis.pipeline(transaction=False)
        pipe.pfadd(key, *video_ids)
        pipe.expire(key, 25 * 3600)
        await self.metrics.timed_redis("active", pipe.execute())
        now = time.monotonic()
        if now - self._active_refreshed >= 10.0:
            self._active_refreshed = now
            names = [keys.active_videos(self.settings.key_prefix, h) for h in range(hour - 23, hour + 1)]
            self.metrics.active_videos.set(await self.metrics.timed_redis("active", self.redis.pfcount(*names)))

    # state helpers ---------------------------------------------------------------
    def flag_key(self, video_id: str) -> str:
        return keys.flag_state(self.settings.key_prefix, video_id)

    def shadow_flag_key(self, video_id: str, sha256: str) -> str:
        return keys.shadow_flag_state(self.settings.key_prefix, video_id, sha256)

    def score_key(self, video_id: str) -> str:
        return keys.score(self.settings.key_prefix, video_id)

    def watermark_key(self, partition: int) -> str:
        return keys.watermark(self.settings.key_prefix, self.settings.events_topic, partition)

    def active_key(self, partition: int) -> str:
        return keys.active_hours(self.settings.key_prefix, self.settings.events_topic, partition)

    async def load_watermarks(self, assigned) -> None:
        """Resume event-time watermarks so a restarted worker judges lateness as before. A
        partition whose group has committed offsets but whose watermark key is gone lost its
        state while nobody owned it (Redis restarted empty): it is rebuilt before consuming."""
        if self.redis is None or not assigned:
            return
        parts = sorted(tp.partition for tp in assigned)
        values = await self.guard.call("redis", "watermarks", lambda: self.metrics.timed_redis(
            "watermark", redis_client.mget(self.redis, [self.watermark_key(p) for p in parts])))
        for p, v in zip(parts, values, strict=True):
            if v is None:
                tp = TopicPartition(self.settings.events_topic, p)
                committed = await self.consumer.committed(tp) if self.consumer is not None else None
                if committed:
                    self._lost.add(tp)
                    self._positions[tp] = committed
                continue
            self._saved.add(p)
            if v is not None:
                self._watermark[p] = max(self._watermark.get(p, 0.0), float(v))
                high = self._watermark[p] + self.settings.allowed_lateness_seconds
                self._event_high[p] = max(self._event_high.get(p, 0.0), high)
                self._clock.setdefault(p, int(high // 3600))

    async def save_watermarks(self) -> None:
        """Also the marker of a partition's state: a worker that saved it and later finds it
        gone knows that Redis lost the partition's windows."""
        if self.redis is None or not self._watermark:
            return
        await self.metrics.timed_redis("watermark", redis_client.mset(
            self.redis, {self.watermark_key(p): str(v) for p, v in self._watermark.items()}))
        self._saved.update(self._watermark)

    async def _check_state(self, partitions: set[int]) -> None:
        """Before a batch is written: are the state markers of its partitions still there? A
        missing one means Redis lost their windows (restart, failover to an empty replica):
        rebuild them first, so that no new event lands in a window the old ones cannot join."""
        if self.redis is None or self.consumer is None:
            return
        owned = [tp for tp in self.consumer.assignment() if tp.partition in self._saved and tp.partition in partitions]
        if owned:
            values = await self.metrics.timed_redis("watermark", redis_client.mget(
                self.redis, [self.watermark_key(tp.partition) for tp in owned]))
            self._lost.update(tp for tp, v in zip(owned, values, strict=True) if v is None)
        for tp in sorted(self._lost, key=lambda t: t.partition):
            if tp in self.consumer.assignment():
                await self._rebuild(tp)
        self._lost.clear()

    async def _rebuild(self, tp: TopicPartition) -> None:
        """Re-apply the retained last window (168 h, located by record time) of a partition whose
        windows Redis lost, up to what this worker had written, then re-judge every video in it.
        The input topic's retention must cover the window (README: "State in Redis")."""
        s = self.settings
        upto = self._positions.get(tp)
        if upto is None:
            committed = await self.consumer.committed(tp) if self.consumer is not None else None
            upto = committed or 0
        if upto <= 0:
            return
        t0 = time.monotonic()
        since_ms = int((time.time() - s.window_hours * 3600 - s.allowed_lateness_seconds) * 1000)
        reader = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
                                  max_partition_fetch_bytes=4 * 1024 * 1024)
        await reader.start()
        applied = 0
        videos: set[str] = set()
        try:
            reader.assign([tp])
            found = await reader.offsets_for_times({tp: max(since_ms, 0)})
            start = found[tp].offset if found.get(tp) is not None else (await reader.beginning_offsets([tp]))[tp]
            first = (await reader.beginning_offsets([tp]))[tp]
            if start > first:
                log.warning("partition %s[%d]: rebuilding from offset %d (the last %d h); older retained records "
                            "are outside the window", tp.topic, tp.partition, start, s.window_hours)
            reader.seek(tp, start)
            now = time.time()
            while True:
                pos = await reader.position(tp)
                if pos >= upto:
                    break
                got = await reader.getmany(tp, timeout_ms=2000, max_records=s.consume_max_records)
                recs = [r for r in got.get(tp, []) if r.offset < upto]
                if not recs and not got:
                    break  # nothing more retained
                evs, offs = [], []
                for rec in recs:
                    e = parse_event(rec.value, now=now, max_bytes=s.max_event_bytes, max_count=s.max_count_per_event,
                                    max_future_s=s.max_future_seconds)
                    if isinstance(e, Event):
                        evs.append(e)
                        offs.append(rec.offset)
                if evs:
                    await self.guard.call("redis", "rebuild", lambda evs=evs, offs=offs: self.windows.apply(
                        evs, offs, [tp.partition] * len(evs)))
                    applied += len(evs)
                    videos.update(e.video_id for e in evs)
        finally:
            await reader.stop()
        if videos:  # every rebuilt video is judged again (its decision state went with Redis)
            due = {tp.partition: dict.fromkeys(videos, now_ms())}
            await self.schedule.mark(due)
            await self.redis.zadd(self.active_key(tp.partition), {v: self._clock.get(tp.partition, 0) - 1 for v in videos},
                                  gt=True)
        await self.save_watermarks()
        self.metrics.state_rebuilds.inc()
        self.metrics.state_rebuilt_events.inc(applied)
        log.error("partition %s[%d]: Redis had lost its windows; rebuilt %d events of %d videos from the input topic "
                  "in %.1f s", tp.topic, tp.partition, applied, len(videos), time.monotonic() - t0)

    def forget_partition(self, tp: TopicPartition) -> None:
        """Drop per-partition state of a partition this worker no longer owns."""
        self._positions.pop(tp, None)
        self._watermark.pop(tp.partition, None)
        self._event_high.pop(tp.partition, None)
        self._recent_ts.pop(tp.partition, None)
        self._clock.pop(tp.partition, None)
        self._last_events.pop(tp.partition, None)
        self._idle_closed.discard(tp.partition)
        self._saved.discard(tp.partition)
        self._lost.discard(tp)
        with contextlib.suppress(KeyError):
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def _probe_loop(self) -> None:
        """Its own task, so that a consume loop blocked on a frozen broker cannot delay the news."""
        while not self._stopping.is_set():
            try:
                await self._probe_broker()
            except DependencyLost:
                raise  # the outage outlasted the limit: the worker ends (wait() sees this task fail)
            except Exception as exc:  # noqa: BLE001 - any other probe failure is only a missed sample
                log.warning("broker probe failed: %s: %s", type(exc).__name__, exc)
            self.metrics.ready.set(1 if self.ready else 0)
            await asyncio.sleep(BROKER_PROBE_S / 2)

    async def _probe_broker(self) -> None:
        """Every few seconds: the end offsets of the assigned partitions (the lag gauge) and,
        with them, whether the broker answers at all (a frozen broker must not look healthy)."""
        c = self.consumer
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
            self.guard.mark_down("broker", f"end offsets: {type(exc).__name__}")
            self.guard.check_limit("broker")
            return
        self.guard.mark_up("broker")
        for tp, high in ends.items():
            pos = self._positions.get(tp)
            if pos is None:
                committed = None
                with contextlib.suppress(Exception):
                    committed = await asyncio.wait_for(c.committed(tp), timeout=BROKER_PROBE_TIMEOUT_S)
                pos = committed if committed is not None else 0
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - pos))

    async def current_score(self, video_id: str) -> dict | None:
        assert self.redis is not None
        raw = await self.metrics.timed_redis("score_view", self.redis.get(self.score_key(video_id)))
        return json.loads(raw) if raw else None
