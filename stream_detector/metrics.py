"""Prometheus metrics of the worker: every counter an SRE or ML engineer asks about.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` base units) and are a
public contract: the Grafana dashboard and alert rules in ``monitoring/`` query them, and a
test checks that every query finds data on a live worker. Each worker process owns one
``Metrics`` object on its own registry, so tests can run several workers in one process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    generate_latest,
)

T = TypeVar("T")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REDIS_OPERATIONS = (
    "apply", "read", "script_load", "memory_usage",  # windows.py
    "store_scores", "flag_state", "watermark", "active", "score_view",  # detector.py
    "schedule",  # schedule.py
    "quarantine",  # worker/quarantine.py
    "accounts",  # worker/account_store.py, worker/accounts.py
    "verdicts",  # worker/verdicts.py, publisher.py (channels)
)
BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
VALIDATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELTA_BUCKETS = (-0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
INTERNAL_ERROR_STAGES = ("parse", "windows", "scoring_process")
SHADOW_OUTCOMES = ("both_flagged", "both_clear", "serving_only", "shadow_only")


class Metrics:
    """All worker metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # python_gc_*: collections per generation, the cost gc_policy.py keeps low
        GCCollector(registry=r)
        self.events_consumed = Counter(
            "detector_events_consumed_total",
            "Valid engagement events consumed, by metric (an event with several metrics counts once per metric)",
            ["metric"],
            registry=r,
        )
        self.events_invalid = Counter(
            "detector_events_invalid_total",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.events_late = Counter(
            "detector_events_late_total",
            "Events older than the watermark minus the allowed lateness (also in invalid, reason=late)",
            registry=r,
        )
        self.events_replayed = Counter(
            "detector_events_replayed_total",
            "Events skipped because their offset was already applied to the window (at-least-once replay)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_messages",
            "End offset minus position, per assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.watermark = Gauge(
            "detector_event_time_watermark_seconds",
            "Event-time watermark (max event time seen minus allowed lateness), Unix seconds",
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "detector_end_to_end_latency_seconds",
            "Arrival of the newest event of a scored video to its flag being published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.schedule_delay = Histogram(
            "detector_schedule_delay_seconds",
            "How long a video due for scoring (hour closed, late event) waited past its due time",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "detector_inference_latency_seconds",
            "Wall time of one batched scoring call (features, ONNX, patterns)",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.inference_batch_size = Histogram(
            "detector_inference_batch_size",
            "Videos per scoring batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.consume_batch_size = Histogram(
            "detector_consume_batch_size",
            "Events per consumed batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.videos_scored = Counter(
            "detector_videos_scored_total",
            "Video windows scored, by path (cadence or immediate spike path)",
            ["path"],
            registry=r,
        )
        self.videos_deferred = Counter(
            "detector_immediate_deferred_total",
            "Videos the immediate path handed to the cadence path: their minute ring held no burst that fires",
            registry=r,
        )
        self.flags = Counter(
            "detector_flags_total",
            "Flags published (new or updated), by severity",
            ["severity"],
            registry=r,
        )
        self.flag_status = Counter(
            "detector_flag_records_total",
            "Flag records published, by status: new, updated (a material change), withdrawn (evidence gone)",
            ["status"],
            registry=r,
        )
        self.hours_closed = Counter(
            "detector_hours_closed_total",
            "Event hours closed per partition (each closure re-scores the videos active in it); reason: "
            "events (the partition's event time moved on) or idle (no events for DETECTOR_IDLE_CLOSE_SECONDS)",
            ["reason"],
            registry=r,
        )
        self.flag_patterns = Counter(
            "detector_flag_patterns_total",
            "Patterns named in published flags",
            ["pattern"],
            registry=r,
        )
        self.internal_errors = Counter(
            "detector_internal_errors_total",
            "Records the worker failed on (a bug, not bad input), by stage; each one is dead-lettered "
            "with reason internal_error instead of stopping its partition",
            ["stage"],
            registry=r,
        )
        self.scoring_failures = Counter(
            "detector_scoring_failures_total",
            "Videos whose scoring or decision raised (a bug met by their data), by outcome: retry (tried "
            "again later) or set_aside (after the last attempt; listed at /quarantine)",
            ["outcome"],
            registry=r,
        )
        self.account_actions = Counter(
            "detector_account_actions_total",
            "Account actions consumed (events with a user_id, event 1.1)",
            registry=r,
        )
        self.accounts_judged = Counter(
            "detector_accounts_judged_total",
            "Account judgements (an account is judged at most every 3 event hours while active, at once when an hour it engaged in is found suspicious)",
            registry=r,
        )
        from stream_detector.accounts import QUIET_AFTER_MIN

        quiet_hours = [str(m // 60) for m in QUIET_AFTER_MIN]
        self.account_quiet_judgements = Counter(
            "detector_account_quiet_judgements_total",
            f"Account judgements because an account not flagged went quiet ({', '.join(quiet_hours[:-1])} and "
            f"{quiet_hours[-1]} event hours after its last action): the video level's suspicion of its hours "
            "may come after it",
            registry=r,
        )
        self.account_judge_delay = Histogram(
            "detector_account_judgement_delay_seconds",
            "How long an account due for a judgement (3rd action, every 3 event hours, an hour it "
            "engaged in found suspicious: those first) waited for it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.account_judge_latency = Histogram(
            "detector_account_judge_latency_seconds",
            "Wall time of one batch of account judgements (state, co-engagers, judgement)",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.account_flags = Counter(
            "detector_account_flags_total",
            "Account flag records published, by status (new, updated, withdrawn)",
            ["status"],
            registry=r,
        )
        self.account_flag_patterns = Counter(
            "detector_account_flag_patterns_total",
            "Patterns named in published account flags",
            ["pattern"],
            registry=r,
        )
        self.verdicts = Counter(
            "detector_verdicts_total",
            "Moderation verdicts read from the verdicts topic, by verdict and scope",
            ["verdict", "scope"],
            registry=r,
        )
        self.verdicts_invalid = Counter(
            "detector_verdicts_invalid_total",
            "Verdicts dead-lettered, by reason (bad JSON, unknown verdict or scope, unknown_flag, ...)",
            ["reason"],
            registry=r,
        )
        self.moderation_suppressed = Counter(
            "detector_moderation_suppressed_total",
            "Flag records held back by moderation (episode_cleared, allowlist_video, allowlist_channel)",
            ["reason"],
            registry=r,
        )
        self.moderation_withdrawn = Counter(
            "detector_moderation_withdrawn_total",
            "Flags withdrawn because of a verdict, by scope",
            ["scope"],
            registry=r,
        )
        self.review_flags = Counter(
            "detector_review_flags_total",
            "Critical flags of allowlisted videos sent to the review topic instead of being dropped",
            registry=r,
        )
        self.judged_precision = Gauge(
            "detector_judged_precision",
            "Precision as judged by moderation: confirmed / (confirmed + false_positive) over the last 200 verdicts",
            registry=r,
        )
        self.judged_verdicts = Gauge(
            "detector_judged_verdicts",
            "Confirmed and false-positive verdicts the judged precision is computed over (at most 200)",
            registry=r,
        )
        self.judged_precision_floor = Gauge(
            "detector_judged_precision_floor",
            "DETECTOR_JUDGED_PRECISION_FLOOR: the alert fires when judged precision stays below it",
            registry=r,
        )
        self.flag_to_verdict = Histogram(
            "detector_flag_to_verdict_seconds",
            "Wall time from a video's flag to its verdict",
            buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400),
            registry=r,
        )
        self.redis_errors = Counter(
            "detector_redis_errors_total",
            "Redis calls that failed, by operation",
            ["operation"],
            registry=r,
        )
        self.redis_latency = Histogram(
            "detector_redis_latency_seconds",
            "Redis call latency, by operation",
            ["operation"],
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.active_videos = Gauge(
            "detector_active_videos",
            "Distinct videos whose window was updated in the last 24 h, all workers (HyperLogLog estimate)",
            registry=r,
        )
        self.model_info = Info(
            "detector_model",
            "The serving model: name, version, sha256, threshold",
            registry=r,
        )
        self.model_reloads = Counter(
            "detector_model_reloads_total",
            "Model load attempts, by result (loaded, refused)",
            ["result"],
            registry=r,
        )
        self.model_registry_failing = Gauge(
            "detector_model_registry_failing",
            "1 while reading the model registry (control topic) keeps failing: pushes and rollbacks do not reach "
            "this worker (it keeps serving its current model)",
            registry=r,
        )
        self.model_validation = Histogram(
            "detector_model_validation_seconds",
            "Time to load and canary-check a pushed model (in a thread, off the scoring path)",
            buckets=VALIDATION_BUCKETS,
            registry=r,
        )
        self.shadow_model_info = Info(
            "detector_shadow_model",
            "The model running in shadow (version none when no shadow runs)",
            registry=r,
        )
        self.shadow_comparisons = Counter(
            "detector_shadow_comparisons_total",
            "Videos scored by both the serving and the shadow model, by outcome "
            "(both_flagged, both_clear, serving_only, shadow_only)",
            ["outcome"],
            registry=r,
        )
        self.shadow_flags = Counter(
            "detector_shadow_flags_total",
            "Flags the shadow model published to the shadow topic, by severity",
            ["severity"],
            registry=r,
        )
        self.shadow_score_delta = Histogram(
            "detector_shadow_score_delta",
            "Shadow score minus serving score, per video scored by both",
            buckets=DELTA_BUCKETS,
            registry=r,
        )
        self.key_mismatch = Counter(
            "detector_events_key_mismatch_total",
            "Valid events whose record key is not their video_id (producer contract broken: the video "
            "may land in several partitions, and replay de-duplication is off for it)",
            registry=r,
        )
        self.no_dedup = Counter(
            "detector_window_no_dedup_total",
            "Video batches applied without replay de-duplication (events of one video from several partitions)",
            registry=r,
        )
        self.log_discontinuities = Counter(
            "detector_log_discontinuities_total",
            "Fetches that did not start where the previous one ended: gap (records gone from the log: "
            "retention, truncation, a re-created topic) or rewind (offset reset)",
            ["kind"],
            registry=r,
        )
        self.log_records_skipped = Counter(
            "detector_log_records_skipped_total",
            "Offsets skipped by gaps in the log: events this worker never saw",
            registry=r,
        )
        self.state_rebuilds = Counter(
            "detector_state_rebuilds_total",
            "Partitions whose windows Redis had lost (restart or failover to an empty replica), rebuilt "
            "from the input topic",
            registry=r,
        )
        self.state_rebuilt_events = Counter(
            "detector_state_rebuilt_events_total",
            "Events re-applied to windows by state rebuilds",
            registry=r,
        )
        self.dependency_up = Gauge(
            "detector_dependency_up",
            "1 while the dependency (redis, broker) answers, 0 during an outage",
            ["dependency"],
            registry=r,
        )
        self.dependency_outages = Counter(
            "detector_dependency_outages_total",
            "Outages of a dependency (redis, broker) the worker rode out or died of",
            ["dependency"],
            registry=r,
        )
        self.ready = Gauge(
            "detector_ready",
            "1 when broker, Redis and model are ready",
            registry=r,
        )

        self._zero_known_series()

    def _zero_known_series(self) -> None:
        """Create every known label combination at 0, so dashboards and alerts see a series
        (and rate() works) before the first occurrence."""
        from stream_detector.events import REASONS
        from stream_detector.flags import PATTERN_ORDER
        from stream_detector.series import METRICS

        for m in METRICS:
            self.events_consumed.labels(metric=m)
        for reason in REASONS:
            self.events_invalid.labels(reason=reason)
        for stage in INTERNAL_ERROR_STAGES:
            self.internal_errors.labels(stage=stage)
        for path in ("cadence", "immediate"):
            self.videos_scored.labels(path=path)
        for outcome in ("retry", "set_aside"):
            self.scoring_failures.labels(outcome=outcome)
        from stream_detector.accounts import ACCOUNT_PATTERNS

        for status in ("new", "updated", "withdrawn"):
            self.account_flags.labels(status=status)
        for p in ACCOUNT_PATTERNS:
            self.account_flag_patterns.labels(pattern=p)
        for sev in ("low", "medium", "high", "critical"):
            self.flags.labels(severity=sev)
        for p in PATTERN_ORDER:
            self.flag_patterns.labels(pattern=p)
        for status in ("new", "updated", "withdrawn"):
            self.flag_status.labels(status=status)
        for reason in ("events", "idle"):
            self.hours_closed.labels(reason=reason)
        from stream_detector.verdicts import REASONS as VERDICT_REASONS
        from stream_detector.verdicts import SCOPES, VERDICTS

        for verdict in VERDICTS:
            for scope in SCOPES:
                self.verdicts.labels(verdict=verdict, scope=scope)
        for reason in VERDICT_REASONS:
            self.verdicts_invalid.labels(reason=reason)
        for reason in ("episode_cleared", "allowlist_video", "allowlist_channel", "allowlist_account"):
            self.moderation_suppressed.labels(reason=reason)
        for scope in SCOPES:
            self.moderation_withdrawn.labels(scope=scope)
        for kind in ("gap", "rewind"):
            self.log_discontinuities.labels(kind=kind)
        for dep in ("redis", "broker"):
            self.dependency_up.labels(dependency=dep).set(1)
            self.dependency_outages.labels(dependency=dep)
        for op in REDIS_OPERATIONS:
            self.redis_errors.labels(operation=op)
            self.redis_latency.labels(operation=op)
        for result in ("loaded", "refused"):
            self.model_reloads.labels(result=result)
        for outcome in SHADOW_OUTCOMES:
            self.shadow_comparisons.labels(outcome=outcome)
        for sev in ("low", "medium", "high", "critical"):
            self.shadow_flags.labels(severity=sev)
        self.shadow_model_info.info({"name": "none", "version": "none", "sha256": "none"})

    async def timed_redis(self, operation: str, awaitable: Awaitable[T]) -> T:
        """Await a Redis call, recording its latency, and count it as an error if it raises."""
        t0 = time.perf_counter()
        try:
            return await awaitable
        except Exception:
            self.redis_errors.labels(operation=operation).inc()
            raise
        finally:
            self.redis_latency.labels(operation=operation).observe(time.perf_counter() - t0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def read_samples(text: str) -> dict[str, float]:
    """The text ``render`` produces, read back (the demo, benchmarks and tests watch a worker
    through it): ``'name{labels}'`` -> value, and each family summed under ``'name'``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, raw = line.rpartition(" ")
        try:
            value = float(raw)
        except ValueError:
            continue
        out[key] = value
        if "{" in key:
            name = key.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + value
    return out


def scrape(port: int, *, timeout_s: float = 5.0) -> dict[str, float]:
    """A worker's ``/metrics`` on this machine, read (``read_samples``); raises ``OSError``
    when it does not answer."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        return read_samples(resp.read().decode())
