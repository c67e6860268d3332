"""The models a worker serves: the serving one, a pending swap, an optional shadow.

The registry follower (``registry.ModelFollower``) puts validated models here; the scoring
loop takes them out between two scoring batches (``take``), so no batch is scored by two
models. Each model's stream decision (its publish threshold for this deployment's
``DETECTOR_TARGET_FPR``) is derived once and cached; a model that cannot meet the target is
refused with a ``ModelError`` before it can serve.
"""

from __future__ import annotations

import logging
import time

from stream_detector.accounts import suspicion_threshold
from stream_detector.config import Settings
from stream_detector.decision import StreamDecision, Thresholds
from stream_detector.flags import iso
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact, ModelError
from stream_detector.operating_points import OperatingPointError
from stream_detector.scoring import Scorer, VideoScore

log = logging.getLogger("stream_detector.model_slot")


def decision_of(model: ModelArtifact, target_fpr: float | None) -> StreamDecision:
    """The stream decision of ``model`` at a target organic flag rate (None: its default)."""
    try:
        publish = model.publish_threshold(target_fpr)
    except OperatingPointError as exc:
        raise ModelError(f"DETECTOR_TARGET_FPR={target_fpr:g}: {exc}") from None
    return StreamDecision(Thresholds.from_artifact(publish, model.decision, model.combiner.hour_threshold,
                                                   suspicion_threshold(model.stream_curve)))


class ModelSlot:
    def __init__(self, settings: Settings, model: ModelArtifact, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._decisions: dict[str, StreamDecision] = {}
        self.decision_for(model)  # refuse a target FPR the model cannot meet before starting
        self.scorer = Scorer(model)
        self._next_scorer: Scorer | None = None
        self.shadow: Scorer | None = None
        self._next_shadow: tuple[Scorer | None] | None = None
        self.shadow_stats: dict[str, float] = {}
        self.since = time.time()
        self.swaps = 0
        self._shadow_error_logged = 0.0
        self.metrics.model_info.info(model.info())

    def decision_for(self, model: ModelArtifact) -> StreamDecision:
        cached = self._decisions.get(model.sha256)
        if cached is None:
            cached = self._decisions[model.sha256] = decision_of(model, self.settings.target_fpr or None)
        return cached

    @property
    def decision(self) -> StreamDecision:
        return self.decision_for(self.scorer.model)

    # -- what the registry follower calls ----------------------------------------------------
    def swap_model(self, model: ModelArtifact) -> None:
        """Serve ``model`` (validated already) from the next scoring batch on; ``ModelError``
        when it cannot meet this deployment's target organic flag rate."""
        self.decision_for(model)
        self._next_scorer = Scorer(model)

    def set_shadow(self, model: ModelArtifact | None) -> None:
        """Run ``model`` beside the serving one on the same batches (None: stop)."""
        self._next_shadow = (Scorer(model) if model is not None else None,)

    @property
    def serving_sha(self) -> str:
        """sha256 of the model serving from the next batch on (pending swap included)."""
        return (self._next_scorer or self.scorer).model.sha256

    @property
    def shadow_sha(self) -> str | None:
        shadow = self._next_shadow[0] if self._next_shadow is not None else self.shadow
        return shadow.model.sha256 if shadow is not None else None

    # -- what the scoring loop calls ---------------------------------------------------------
    def take(self) -> tuple[Scorer, Scorer | None]:
        """Apply pending swaps; the (serving, shadow) pair for one scoring batch."""
        if self._next_scorer is not None:
            t0 = time.perf_counter()
            old = self.scorer.model
            self.scorer, self._next_scorer = self._next_scorer, None
            self.metrics.model_info.info(self.scorer.model.info())
            self.since = time.time()
            self.swaps += 1
            log.info("model swap %s %s -> %s %s in %.0f us (between scoring batches)", old.name, old.version,
                     self.scorer.model.name, self.scorer.model.version, 1e6 * (time.perf_counter() - t0))
        if self._next_shadow is not None:
            (self.shadow,), self._next_shadow = self._next_shadow, None
            self.shadow_stats = {"since": time.time(), "videos": 0, "agree": 0, "serving_flagged": 0,
                                 "shadow_flagged": 0, "flags_published": 0, "errors": 0, "abs_delta_sum": 0.0}
            info = self.shadow.model.info() if self.shadow else {"name": "none", "version": "none", "sha256": "none"}
            self.metrics.shadow_model_info.info(info)
        return self.scorer, self.shadow

    def shadow_score(self, shadow: Scorer, present: list, scores: list[VideoScore]) -> list[VideoScore] | None:
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

    # -- /model ------------------------------------------------------------------------------
    def status(self) -> dict:
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
            "since": iso(self.since),
            "swaps": self.swaps,
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
