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

Workers (``worker.model_follower.ModelFollower``) read the topic from the beginning before they start consuming
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_detector.models import ModelArtifact

if TYPE_CHECKING:
    pass

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


def model_label(ref: ModelRef | None) -> str:
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
            return "applied", f"{ref.version} runs in shadow beside {model_label(state.serving)}"
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
        return "applied", f"rolled back from {model_label(before)} to {model_label(state.serving)}"
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
    return "applied", f"{ref.version} serves (was {model_label(before)})"


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
        "serving": model_label(state.serving),
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


def control_consumer(bootstrap: str) -> AIOKafkaConsumer:
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
    consumer = control_consumer(bootstrap)
    await consumer.start()
    try:
        return await catch_up(consumer, topic, ControlLog(), timeout_s)
    finally:
        await consumer.stop()


async def catch_up(consumer: AIOKafkaConsumer, topic: str, clog: ControlLog, timeout_s: float) -> ControlLog:
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
