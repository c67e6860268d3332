"""The worker's model follower: keeps the model slot equal to the registry's state.

It reads the control topic (``registry``) from the beginning before the worker consumes an
event, then follows it; every model is validated by the worker itself (``canary``, in a
thread, off the scoring path) before the slot serves it; a refused model never serves.
Failures to follow are retried with the worker's one retry policy and shown
(``detector_model_registry_failing``, ``/model``), while the current model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_detector.canary import validate_bytes
from stream_detector.dependencies import Backoff
from stream_detector.models import ModelArtifact, ModelError
from stream_detector.registry import (
    HISTORY_IN_STATUS,
    ControlLog,
    ModelRef,
    catch_up,
    control_consumer,
    ensure_control_topic,
    model_label,
    now_iso,
)

if TYPE_CHECKING:
    from stream_detector.config import Settings
    from stream_detector.metrics import Metrics
    from stream_detector.worker.model_slot import ModelSlot

log = logging.getLogger("stream_detector.model_follower")

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
        self.consumer = control_consumer(self.settings.kafka_bootstrap_servers)
        await self.consumer.start()
        await catch_up(self.consumer, self.topic, self.clog, timeout_s=60)
        await self.reconcile()
        self.synced_offset = self.clog.next_offset
        log.info("model registry %s read to offset %d: serving %s, shadow %s", self.topic, self.clog.next_offset,
                 model_label(self.clog.state.serving), model_label(self.clog.state.shadow) if self.clog.state.shadow else "none")
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
