"""One typed settings object, read from environment variables.

Every field maps to ``DETECTOR_<FIELD>`` (upper case), except the two connection URLs,
which use the names the ecosystem already knows: ``KAFKA_BOOTSTRAP_SERVERS`` and
``REDIS_URL``. A worker refuses to start without both unless ``DETECTOR_EMBEDDED=true``
asks for the embedded broker / redis-server explicitly (the demo and the tests start their
own): an empty variable in production must not quietly become an in-memory broker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "default.onnx"

_ENV_OVERRIDES = {
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "redis_url": "REDIS_URL",
}


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = ""
    redis_url: str = ""
    embedded: bool = False  # start embedded servers for the endpoints not configured (trials only)
    startup_timeout_seconds: float = 30.0  # the broker must answer within this at startup
    # a Redis or broker outage longer than this ends the worker (non-zero exit); shorter ones
    # pause consumption and are retried with backoff (below max.poll.interval, 300 s)
    dependency_timeout_seconds: float = 240.0
    events_topic: str = "engagement-events"
    flags_topic: str = "engagement-flags"
    dlq_topic: str = "engagement-events-dlq"
    # Model registry: compacted control topic (model bytes + changes); shadow flags topic
    control_topic: str = "engagement-models"
    shadow_flags_topic: str = "engagement-flags-shadow"
    # the user level: account flags (accounts.py), on their own topic, key = user_id
    account_flags_topic: str = "engagement-account-flags"
    # the moderation loop (moderation.py): verdicts in, suppressed critical flags out for review
    verdicts_topic: str = "engagement-verdicts"
    review_topic: str = "engagement-flags-review"
    verdict_pending_seconds: float = 3600.0  # a verdict on a flag not seen yet waits this long
    judged_precision_floor: float = 0.8  # alert when moderation's judged precision falls below
    consumer_group: str = "stream-detector"
    topic_partitions: int = 4
    model_path: str = str(DEFAULT_MODEL_PATH)
    # Hot path
    consume_max_records: int = 20000
    consume_timeout_ms: int = 200
    max_event_bytes: int = 4096
    # A dead-letter copy longer than this is truncated (headers dlq.truncated, dlq.original_size):
    # the producer refuses requests over 1 MiB, and a record that cannot be dead-lettered would
    # stop its partition.
    dlq_max_value_bytes: int = 512 * 1024
    max_count_per_event: int = 10_000_000
    max_future_seconds: int = 3600
    allowed_lateness_seconds: int = 3600
    # Windows
    window_hours: int = 168
    idle_ttl_seconds: int = 8 * 24 * 3600
    key_prefix: str = "sd"
    # Scoring
    score_interval_seconds: float = 5.0
    score_batch_size: int = 1024
    # videos per cadence scoring batch: bigger batches cost fewer round trips per video (spikes
    # never wait behind one: the immediate path runs on its own)
    cadence_batch_size: int = 512
    # a minute count at least this high sends the video to the immediate path (burst check)
    spike_minute_count: int = 30
    # organic videos the stream may flag (share); picks the publish threshold from the model's
    # operating points. 0 = the model's own default (its artifact says which)
    target_fpr: float = 0.0
    # a partition with no events for this long (wall clock) closes its current event hour, so
    # the last hours of a stream that stopped are judged too
    idle_close_seconds: float = 30.0
    inference_threads: int = 1
    # a video whose scoring or decision raises is tried again after this, then twice as long,
    # then set aside (worker/quarantine.py)
    scoring_retry_seconds: float = 30.0
    # score in a child process (its own core, no GIL shared with the consume loop); false
    # scores in a thread of the worker (one-core pods)
    scoring_process: bool = True
    # cadence scoring batches in flight at once, one lane per partition % lanes (one scored
    # while others read windows or publish); more lanes than owned partitions leave lanes idle
    scoring_lanes: int = 4
    # the garbage collector's young-generation threshold in the worker (see gc_policy.py); a
    # high one costs the consume loop far less CPU. 0 keeps CPython's default (700)
    gc_young_threshold: int = 100_000
    # free memory (MB) the scoring processes keep in their heap (see malloc_policy.py): a
    # batch's temporaries reuse mapped pages instead of page-faulting fresh ones every batch.
    # 0 keeps the C library's defaults. (The consume loop showed no gain: bench/throughput.py)
    heap_keep_mb: int = 256
    # Web
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = _ENV_OVERRIDES.get(f.name, f"DETECTOR_{f.name.upper()}")
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(name, raw, f.type)
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Endpoints that can only be a misconfiguration: one clear ``SettingsError`` (the CLI
        prints one line and exits 2), not a traceback from a client library later."""
        for server in filter(None, (x.strip() for x in self.kafka_bootstrap_servers.split(","))):
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers!r}: {server!r} is not "
                                    f"host:port with a port in 1-65535")
        if self.redis_url:
            scheme = self.redis_url.split("://", 1)[0] if "://" in self.redis_url else ""
            if scheme not in REDIS_SCHEMES:
                raise SettingsError(f"REDIS_URL={self.redis_url!r}: the scheme must be one of "
                                    f"{', '.join(s + '://' for s in REDIS_SCHEMES)}")

    @staticmethod
    def env_names() -> dict[str, str]:
        """Field name -> environment variable, for docs and the CLI."""
        return {
            f.name: _ENV_OVERRIDES.get(f.name, f"DETECTOR_{f.name.upper()}") for f in fields(Settings)
        }


def setting(field: str, environ: dict[str, str] | None = None) -> object:
    """One setting from the environment (its default when unset), without reading (and
    checking) every other one: loading a model must not fail on an unrelated variable."""
    f = next(f for f in fields(Settings) if f.name == field)
    name = _ENV_OVERRIDES.get(field, f"DETECTOR_{field.upper()}")
    raw = (os.environ if environ is None else environ).get(name)
    return f.default if raw is None or raw == "" else _convert(name, raw, f.type)


def _convert(name: str, raw: str, type_name: object) -> object:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "str")
    if kind == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a valid bool (true/false)")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw
