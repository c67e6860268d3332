"""Model registry on a Kafka control topic: push, promote, rollback, shadow, follow.

Distribution. One control topic (``DETECTOR_CONTROL_TOPIC``, default ``engagement-models``),
one partition, ``cleanup.policy=compact`` (records are kept by key, never by age, so a
worker that starts a month later still finds every model). Two kinds of record, each with
a unique key, written only by the CLI:

* ``model:<sha256>:<i>``: chunk ``i`` of the ONNX bytes (512 KiB chunks keep every record
  under the broker's default 1 MB message limit; headers carry sha256, chunk count, name,
  version). Written before the change that refers to them.
* ``change:<uuid>``: one change, JSON ``{"action": push|promote|rollback|unshadow, ...,
  "by": user@host, "at": ISO time}``.

The registry **state** (serving version, shadow version, rollback stack, catalogue of
pushed models, history) is a pure fold of the changes in log order (``fold``). Every
reader (each worker, each CLI call) folds the same ordered log, so all agree, concurrent
pushes from two machines are serialised by the broker instead of overwriting each other,
and the history *is* the log (who / what / when of every change, applied or not).

``serving = None`` means "each worker's built-in model" (``DETECTOR_MODEL_PATH``): the
state before the first push, and what ``rollback`` returns to after it.

Workers (``ModelFollower``) read the topic from the beginning before they start consuming
events, then follow it; they validate every model themselves (``canary.validate_bytes``,
in a thread, off the scoring path) and hand it to the detector, which swaps between scoring
batches. A refused model never serves: the reason is counted and shown in ``/model``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import logging
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_detector.canary import validate_bytes
from stream_detector.dependencies import Backoff
from stream_detector.models import ModelArtifact, ModelError

if TYPE_CHECKING:
    from stream_detector.config import Settings
    from stream_detector.metrics import Metrics
    from stream_detector.worker.model_slot import ModelSlot

log = logging.getLogger("stream_detector.registry")

CHUNK_BYTES = 512 * 1024
MAX_MODEL_BYTES = 64 * 1024 * 1024
HISTORY_IN_STATUS = 20


class RegistryError(RuntimeError):
    """A registry command cannot be carried out; the message says why."""


def whoami() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class ModelRef:
    version: str
    sha256: str
    name: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict) -> ModelRef:
        return cls(str(d["version"]), str(d["sha256"]), str(d.get("name", "")))


def _label(ref: ModelRef | None) -> str:
    return "built-in" if ref is None else ref.version


@dataclass
class State:
    """The registry as of some log position (see ``fold``)."""

    serving: ModelRef | None = None
    shadow: ModelRef | None = None
    rollback: list[ModelRef | None] = field(default_factory=list)  # last = where rollback goes
    models: dict[str, dict] = field(default_factory=dict)  # sha256 -> catalogue entry
    history: list[dict] = field(default_factory=list)

    def by_version(self, version: str) -> ModelRef | None:
        for sha, m in self.models.items():
            if m["version"] == version:
                return ModelRef(version, sha, m.get("name", ""))
        return None

    def rollback_target(self) -> dict | None:
        """Where ``rollback`` would go: a model, ``built-in``, or None (nothing to roll back to)."""
        if not self.rollback:
            return None
        ref = self.rollback[-1]
        return ref.to_dict() if ref is not None else {"version": "built-in"}

    def to_dict(self, history: int | None = None) -> dict:
        return {
            "serving": self.serving.to_dict() if self.serving else None,
            "shadow": self.shadow.to_dict() if self.shadow else None,
            "rollback_to": self.rollback_target(),
            "history": self.history if history is None else self.history[-history:],
        }


def apply_change(state: State, change: dict) -> tuple[str, str]:
    """Apply one change in place; return (result, detail) with result applied|noop|rejected."""
    action = change.get("action")
    if action == "push":
        ref = ModelRef.from_dict(change["model"])
        known = state.by_version(ref.version)
        if known is not None and known.sha256 != ref.sha256:
            return "rejected", f"version {ref.version} is already registered with other bytes (sha256 {known.sha256[:12]})"
        state.models.setdefault(ref.sha256, {
            "name": ref.name, "version": ref.version, "pushed_by": change.get("by"), "pushed_at": change.get("at"),
            **{k: change[k] for k in ("size", "architecture", "threshold", "canary", "created_at") if k in change},
        })
        if change.get("shadow"):
            if state.serving is not None and state.serving.sha256 == ref.sha256:
                return "noop", f"{ref.version} is serving; not shadowing it against itself"
            state.shadow = ref
            return "applied", f"{ref.version} runs in shadow beside {_label(state.serving)}"
        return _serve(state, ref)
    if action == "promote":
        ref = state.by_version(str(change.get("version")))
        if ref is None:
            return "rejected", f"no model with version {change.get('version')!r} was pushed"
        return _serve(state, ref)
    if action == "rollback":
        if not state.rollback:
            return "rejected", "nothing to roll back to"
        before = state.serving
        state.serving = state.rollback.pop()
        return "applied", f"rolled back from {_label(before)} to {_label(state.serving)}"
    if action == "unshadow":
        if state.shadow is None:
            return "noop", "no shadow model"
        was, state.shadow = state.shadow, None
        return "applied", f"stopped shadow {was.version}"
    return "rejected", f"unknown action {action!r}"


def _serve(state: State, ref: ModelRef) -> tuple[str, str]:
    if state.serving is not None and state.serving.sha256 == ref.sha256:
        return "noop", f"{ref.version} is already serving"
    before = state.serving
    state.rollback.append(before)
    del state.rollback[:-50]
    state.serving = ref
    if state.shadow is not None and state.shadow.sha256 == ref.sha256:
        state.shadow = None
    return "applied", f"{ref.version} serves (was {_label(before)})"


def fold(changes: list[dict]) -> State:
    state = State()
    for change in changes:
        record(state, change)
    return state


def record(state: State, change: dict) -> None:
    result, detail = apply_change(state, change)
    entry = {
        "action": change.get("action"),
        "version": (change.get("model") or {}).get("version") or change.get("version"),
        "shadow": bool(change.get("shadow")),
        "by": change.get("by"),
        "at": change.get("at"),
        "result": result,
        "detail": detail,
        "serving": _label(state.serving),
        "id": change.get("id"),
    }
    state.history.append(entry)


# ------------------------------------------------------------------------ the log, read


@dataclass
class ControlLog:
    """Everything read from the control topic so far (model bytes, changes, folded state)."""

    chunks: dict[str, dict[int, bytes]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    changes: list[dict] = field(default_factory=list)
    state: State = field(default_factory=State)
    next_offset: int = 0

    def apply_record(self, key: bytes | None, value: bytes | None, headers, offset: int) -> bool:
        """Returns True when the state changed."""
        self.next_offset = offset + 1
        k = (key or b"").decode("utf-8", "replace")
        if value is None:
            return False
        if k.startswith("model:"):
            try:
                _, sha, idx = k.split(":")
                h = {name: v.decode() for name, v in (headers or ())}
                self.totals[sha] = int(h["chunks"])
                self.chunks.setdefault(sha, {})[int(idx)] = value
            except (ValueError, KeyError):
                log.warning("control topic: malformed model record at offset %d (key %r)", offset, k)
            return False
        if k.startswith("change:"):
            try:
                change = json.loads(value)
            except ValueError:
                log.warning("control topic: malformed change at offset %d", offset)
                return False
            change["offset"] = offset
            self.changes.append(change)
            record(self.state, change)
            return True
        return False

    def model_bytes(self, sha: str) -> bytes | None:
        parts = self.chunks.get(sha, {})
        n = self.totals.get(sha)
        if n is None or len(parts) != n:
            return None
        data = b"".join(parts[i] for i in range(n))
        return data if hashlib.sha256(data).hexdigest() == sha else None


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * CHUNK_BYTES,
        fetch_max_bytes=16 * CHUNK_BYTES,
        request_timeout_ms=30000,
    )


async def ensure_control_topic(bootstrap: str, topic: str, timeout_s: float = 30) -> None:
    """Create the control topic (1 partition, compacted) if missing; warn if not compacted."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        if topic not in set(await admin.list_topics()):
            resp = await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
            for item in getattr(resp, "topic_errors", []):
                if item[1] not in (0, 36):  # 36 = already exists (a concurrent creator)
                    raise RegistryError(f"creating control topic {topic!r} failed: error code {item[1]} {item[2]}")
        deadline = time.monotonic() + timeout_s
        while True:
            described = await admin.describe_topics([topic])
            if described and described[0].get("error_code") == 0 and described[0]["partitions"]:
                break
            if time.monotonic() > deadline:
                raise RegistryError(f"control topic {topic!r} not visible after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
        with contextlib.suppress(Exception):  # a broker without DescribeConfigs: skip the check
            (res,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            entries = {e[0]: e[1] for r in res.resources for e in r[4]}
            if entries.get("cleanup.policy", "compact") != "compact":
                log.warning("control topic %s has cleanup.policy=%s: old models and changes will be "
                            "deleted by age; set cleanup.policy=compact", topic, entries.get("cleanup.policy"))
    finally:
        await admin.close()


async def read_log(bootstrap: str, topic: str, timeout_s: float = 30) -> ControlLog:
    """The whole control topic, up to its end offset at call time."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        return await _catch_up(consumer, topic, ControlLog(), timeout_s)
    finally:
        await consumer.stop()


async def _catch_up(consumer: AIOKafkaConsumer, topic: str, clog: ControlLog, timeout_s: float) -> ControlLog:
    tp = TopicPartition(topic, 0)
    if tp not in consumer.assignment():
        consumer.assign([tp])
        consumer.seek(tp, clog.next_offset)
    end = (await consumer.end_offsets([tp]))[tp]
    deadline = time.monotonic() + timeout_s
    while clog.next_offset < end:
        if time.monotonic() > deadline:
            raise RegistryError(f"control topic {topic}: read {clog.next_offset}/{end} records in {timeout_s:.0f}s")
        batch = await consumer.getmany(tp, timeout_ms=500)
        for rec in batch.get(tp, []):
            clog.apply_record(rec.key, rec.value, rec.headers, rec.offset)
        if not batch:
            # compaction can leave gaps: the position moves past removed offsets
            clog.next_offset = max(clog.next_offset, await consumer.position(tp))
    return clog


# ------------------------------------------------------------------------ the CLI side


@dataclass
class Registry:
    """Changes to the registry, as the CLI makes them."""

    bootstrap: str
    topic: str
    who: str = field(default_factory=whoami)

    async def read(self) -> ControlLog:
        await ensure_control_topic(self.bootstrap, self.topic)
        return await read_log(self.bootstrap, self.topic)

    async def push(self, data: bytes, model: ModelArtifact, *, shadow: bool = False, canary: dict | None = None) -> dict:
        clog = await self.read()
        st = clog.state
        ref = ModelRef(model.version, model.sha256, model.name)
        if st.serving is not None and st.serving.sha256 == model.sha256:
            raise RegistryError(f"same bytes (sha256 {model.sha256[:12]}) as the serving model {st.serving.version}: nothing to push")
        if shadow and st.shadow is not None and st.shadow.sha256 == model.sha256:
            raise RegistryError(f"same bytes (sha256 {model.sha256[:12]}) as the shadow model {st.shadow.version}: nothing to push")
        known = st.by_version(model.version)
        if known is not None and known.sha256 != model.sha256:
            raise RegistryError(
                f"version {model.version} is already registered with other bytes (sha256 {known.sha256[:12]}); "
                f"export the new model with its own version"
            )
        extra = {"architecture": model.architecture, "threshold": model.threshold,
                 "created_at": model.metadata.get("created_at"), "canary": canary}
        return await self.publish(data, ref, shadow=shadow, extra=extra, have_bytes=clog.model_bytes(model.sha256) is not None)

    async def publish(self, data: bytes, ref: ModelRef, *, shadow: bool = False, extra: dict | None = None,
                      have_bytes: bool = False) -> dict:
        """Write the bytes (unless already there) and the push change, without any check.

        ``push`` is the checked entry point; tests use this one to play a client that skips
        validation, so the workers' own validation (defence in depth) is what refuses.
        """
        if len(data) > MAX_MODEL_BYTES:
            raise RegistryError(f"model is {len(data)} bytes; the registry takes at most {MAX_MODEL_BYTES}")
        records: list[tuple[bytes, bytes, list]] = []
        if not have_bytes:
            n = max(1, -(-len(data) // CHUNK_BYTES))
            for i in range(n):
                headers = [("sha256", ref.sha256.encode()), ("chunks", str(n).encode()),
                           ("name", ref.name.encode()), ("version", ref.version.encode())]
                records.append((f"model:{ref.sha256}:{i}".encode(), data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES], headers))
        change = {"action": "push", "shadow": shadow, "model": ref.to_dict(), "size": len(data), **(extra or {})}
        return await self._commit(change, records)

    async def promote(self, version: str) -> dict:
        st = (await self.read()).state
        ref = st.by_version(version)
        if ref is None:
            known = ", ".join(m["version"] for m in st.models.values()) or "none"
            raise RegistryError(f"no model with version {version!r} was pushed (known: {known})")
        if st.serving is not None and st.serving.sha256 == ref.sha256:
            raise RegistryError(f"{version} is already serving")
        return await self._commit({"action": "promote", "version": version})

    async def rollback(self) -> dict:
        st = (await self.read()).state
        if not st.rollback:
            raise RegistryError("nothing to roll back to: no model was pushed or promoted yet")
        return await self._commit({"action": "rollback"})

    async def unshadow(self) -> dict:
        st = (await self.read()).state
        if st.shadow is None:
            raise RegistryError("no model runs in shadow")
        return await self._commit({"action": "unshadow"})

    async def _commit(self, change: dict, records: list | None = None) -> dict:
        change = change | {"id": uuid.uuid4().hex, "by": self.who, "at": now_iso()}
        await ensure_control_topic(self.bootstrap, self.topic)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False,
            max_request_size=CHUNK_BYTES + 64 * 1024, request_timeout_ms=30000,
        )
        await producer.start()
        try:
            for key, value, headers in records or []:
                await producer.send_and_wait(self.topic, value, key=key, headers=headers, partition=0)
            await producer.send_and_wait(
                self.topic, json.dumps(change, separators=(",", ":")).encode(), key=f"change:{change['id']}".encode(), partition=0
            )
        finally:
            await producer.stop()
        # Read back: the outcome is what the fold of the log says (a concurrent change from
        # another machine may have landed first and made this one a no-op or rejected).
        clog = await read_log(self.bootstrap, self.topic)
        entry = next((h for h in reversed(clog.state.history) if h.get("id") == change["id"]), None)
        if entry is None:
            raise RegistryError("the change was written but is not visible in the control topic yet")
        return {"change": entry, "state": clog.state}


# -------------------------------------------------------------------------- worker side


@dataclass
class Refusal:
    version: str
    sha256: str
    role: str
    reason: str
    at: str

    def to_dict(self) -> dict:
        return {"version": self.version, "sha256": self.sha256, "role": self.role, "reason": self.reason, "at": self.at}


class ModelFollower:
    """Keeps a worker's serving and shadow models equal to the registry state, validated."""

    def __init__(self, settings: Settings, slot: ModelSlot, baseline: ModelArtifact, metrics: Metrics) -> None:
        self.settings = settings
        self.slot = slot
        self.baseline = baseline
        self.metrics = metrics
        self.topic = settings.control_topic
        self.clog = ControlLog()
        self.consumer: AIOKafkaConsumer | None = None
        self.refused: OrderedDict[str, Refusal] = OrderedDict()
        self.validated: OrderedDict[str, ModelArtifact] = OrderedDict({baseline.sha256: baseline})
        self.reports: dict[str, dict] = {}
        self.last_validation_s: float | None = None
        self.synced_offset = 0
        self.backoff = Backoff(1.0, 30.0)
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Catch up with the whole control topic and adopt its state, before events flow."""
        await ensure_control_topic(self.settings.kafka_bootstrap_servers, self.topic)
        self.consumer = _consumer(self.settings.kafka_bootstrap_servers)
        await self.consumer.start()
        await _catch_up(self.consumer, self.topic, self.clog, timeout_s=60)
        await self.reconcile()
        self.synced_offset = self.clog.next_offset
        log.info("model registry %s read to offset %d: serving %s, shadow %s", self.topic, self.clog.next_offset,
                 _label(self.clog.state.serving), _label(self.clog.state.shadow) if self.clog.state.shadow else "none")
        self._task = asyncio.create_task(self._follow(), name="model-follower")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.consumer is not None:
            await self.consumer.stop()

    async def _follow(self) -> None:
        assert self.consumer is not None
        tp = TopicPartition(self.topic, 0)
        backoff = self.backoff
        dirty = False  # the state changed and is not reconciled yet (survives a failed attempt)
        while not self._stopping.is_set():
            try:
                batch = await self.consumer.getmany(tp, timeout_ms=1000)
                for rec in batch.get(tp, []):
                    dirty |= self.clog.apply_record(rec.key, rec.value, rec.headers, rec.offset)
                if dirty:
                    await self.reconcile()
                    dirty = False
                self.synced_offset = self.clog.next_offset
                if backoff.failures:
                    log.warning("model registry: following %s again after %d failures", self.topic, backoff.failures)
                backoff.reset()
                self.metrics.model_registry_failing.set(0)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving the current model, say so (gauge, /model, log), try again
                self.metrics.model_registry_failing.set(1)
                log.exception("model registry: following %s failed (%d in a row); retrying in %.0fs", self.topic,
                              backoff.failures + 1, backoff.delay)
                await backoff.sleep()

    async def reconcile(self) -> None:
        st = self.clog.state
        want = st.serving.sha256 if st.serving else self.baseline.sha256
        if want != self.slot.serving_sha:
            model = self.baseline if st.serving is None else await self._load(st.serving, "serving")
            if model is not None:
                self.slot.swap_model(model)
                log.info("model %s %s (sha256 %s) validated; serving from the next scoring batch",
                         model.name, model.version, model.sha256[:12])
        want_shadow = st.shadow.sha256 if st.shadow else None
        if want_shadow != self.slot.shadow_sha:
            if st.shadow is None:
                self.slot.set_shadow(None)
                log.info("shadow model stopped")
            else:
                model = await self._load(st.shadow, "shadow")
                if model is not None:
                    self.slot.set_shadow(model)
                    log.info("model %s %s runs in shadow", model.version, model.sha256[:12])

    async def _load(self, ref: ModelRef, role: str) -> ModelArtifact | None:
        if ref.sha256 in self.validated:
            self.validated.move_to_end(ref.sha256)
            return self.validated[ref.sha256]
        if ref.sha256 in self.refused:
            return None
        data = self.clog.model_bytes(ref.sha256)
        if data is None:
            self._refuse(ref, role, f"the bytes of sha256 {ref.sha256[:12]} are not (completely) in the control topic")
            return None
        t0 = time.perf_counter()
        try:
            model, report = await asyncio.to_thread(
                validate_bytes, data, source=f"{self.topic}:{ref.version}", window_hours=self.settings.window_hours
            )
        except ModelError as exc:
            self._refuse(ref, role, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - whatever breaks the check refuses the model
            self._refuse(ref, role, f"validation failed: {type(exc).__name__}: {str(exc)[:200]}")
            return None
        finally:
            self.last_validation_s = time.perf_counter() - t0
            self.metrics.model_validation.observe(self.last_validation_s)
        if model.version != ref.version:
            self._refuse(ref, role, f"metadata says version {model.version}, the registry says {ref.version}")
            return None
        try:
            self.slot.decision_for(model)  # this deployment's target FPR must be reachable
        except ModelError as exc:
            self._refuse(ref, role, str(exc))
            return None
        if model.version == self.baseline.version:
            self._refuse(ref, role, f"version {model.version} is this worker's built-in model with other bytes "
                                    f"(sha256 {self.baseline.sha256[:12]}); give the new model its own version")
            return None
        self.metrics.model_reloads.labels(result="loaded").inc()
        self.reports[ref.sha256] = report.to_dict()
        self.validated[ref.sha256] = model
        while len(self.validated) > 4:  # the baseline and the latest few: instant rollback
            oldest = next(iter(self.validated))
            if oldest == self.baseline.sha256:
                self.validated.move_to_end(oldest)
                oldest = next(iter(self.validated))
            self.validated.pop(oldest)
        return model

    def _refuse(self, ref: ModelRef, role: str, reason: str) -> None:
        self.refused[ref.sha256] = Refusal(ref.version, ref.sha256, role, reason, now_iso())
        while len(self.refused) > 20:
            self.refused.popitem(last=False)
        self.metrics.model_reloads.labels(result="refused").inc()
        log.error("model %s (sha256 %s) refused as %s: %s; keeping %s", ref.version, ref.sha256[:12], role, reason,
                  self.slot.scorer.model.version)

    def status(self) -> dict[str, Any]:
        st = self.clog.state
        return {
            "topic": self.topic,
            "offset": self.synced_offset,
            "failures_in_a_row": self.backoff.failures,
            "desired": {"serving": st.serving.to_dict() if st.serving else {"version": "built-in", "sha256": self.baseline.sha256},
                        "shadow": st.shadow.to_dict() if st.shadow else None},
            "in_sync": (st.serving.sha256 if st.serving else self.baseline.sha256) == self.slot.scorer.model.sha256
            and (st.shadow.sha256 if st.shadow else None) == (self.slot.shadow.model.sha256 if self.slot.shadow else None),
            "refused": [r.to_dict() for r in reversed(self.refused.values())],
            "last_validation_seconds": None if self.last_validation_s is None else round(self.last_validation_s, 4),
            "canary": self.reports.get(self.slot.scorer.model.sha256),
            "history": st.history[-HISTORY_IN_STATUS:],
        }
