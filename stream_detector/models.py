"""The model artifact: one ONNX file that carries everything a worker needs to score.

Loading validates the artifact against the contract (DESIGN.md "Model artifact") so a
malformed model is refused with a reason before it can serve; onnxruntime only, no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stream_detector.features import CHANNELS, FEATURE_VERSION
from stream_detector.operating_points import DEFAULT_TARGET_FPR, OperatingCurve, OperatingPointError
from stream_detector.patterns import PATTERNS

REQUIRED_METADATA: tuple[str, ...] = (
    "name",
    "version",
    "architecture",
    "window_hours",
    "channels",
    "normalization",
    "threshold",
    "combiner",
    "training_data_fingerprint",
    "metrics",
    "feature_version",
)
INPUT_NAME = "features"
OUTPUT_NAME = "hour_score"
LEGACY_PATTERNS = ("spike", "offpeak_burst", "decay_violation", "lockstep", "ratio_anomaly")  # combiner 1.0


def inference_threads() -> int:
    """onnxruntime intra-op threads (``DETECTOR_INFERENCE_THREADS``, default 1). A second
    thread shortens a batch (44 against 58 us a window when the other core is idle, 52 against
    59 when it is busy) but costs 43 % more CPU (83 against 58 us a window): the worker runs two
    scoring processes beside its consume loop and Redis, so CPU is what runs out."""
    from stream_detector.config import setting

    return max(1, setting("inference_threads"))


class ModelError(ValueError):
    """The artifact cannot serve; the message says why."""


@dataclass
class Combiner:
    """Per-hour logistic combination of the model's hour score and the pattern evidence,
    fitted on the validation split: p(hour is fake) = sigmoid(bias + a*model + sum w_p*e_p)."""

    bias: float
    model_weight: float
    pattern_weights: list[float]
    hour_threshold: float

    @classmethod
    def from_dict(cls, d: dict) -> Combiner:
        """Weights are matched to the detectors by name: a model fitted before a detector existed
        gives it weight 0 (it scores as it did); one naming a detector this runtime lacks is
        refused. Artifacts without names carry the first five, in order."""
        weights = [float(w) for w in d["pattern_weights"]]
        names = list(d.get("patterns") or LEGACY_PATTERNS)
        if len(weights) != len(names):
            raise ModelError(f"combiner has {len(weights)} pattern weights for {len(names)} patterns")
        unknown = sorted(set(names) - set(PATTERNS))
        if unknown:
            raise ModelError(f"combiner weighs pattern detectors this runtime does not have: {', '.join(unknown)}")
        by_name = dict(zip(names, weights, strict=True))
        return cls(float(d["bias"]), float(d["model_weight"]), [by_name.get(p, 0.0) for p in PATTERNS],
                   float(d["hour_threshold"]))

    def to_dict(self) -> dict:
        return {
            "bias": self.bias,
            "model_weight": self.model_weight,
            "pattern_weights": self.pattern_weights,
            "patterns": list(PATTERNS),
            "hour_threshold": self.hour_threshold,
        }

    def hour_probability(self, model_score: np.ndarray, evidence: np.ndarray) -> np.ndarray:
        """model_score (N, W), evidence (N, len(PATTERNS), W) -> (N, W) in [0, 1]."""
        z = self.bias + self.model_weight * model_score
        z = z + np.einsum("p,npw->nw", np.asarray(self.pattern_weights), evidence)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


@dataclass
class ModelArtifact:
    path: str
    sha256: str
    name: str
    version: str
    architecture: str
    window_hours: int
    threshold: float
    stream_threshold: float  # publish threshold in the stream at the default target (see operating_points.py)
    normalization: dict
    combiner: Combiner
    metadata: dict[str, str] = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    stream_curve: OperatingCurve | None = field(default=None, repr=False)  # stream process, per video ever
    offline_curve: OperatingCurve | None = field(default=None, repr=False)  # one decision per series
    decision: dict = field(default_factory=dict, repr=False)  # decision parameters calibrated with the curve
    default_target_fpr: float = DEFAULT_TARGET_FPR
    data: bytes = field(default=b"", repr=False)  # the artifact's bytes (a scoring process loads them)

    def publish_threshold(self, target_fpr: float | None = None) -> float:
        """The stream's publish threshold for an organic flag rate (None: the model's default)."""
        if self.stream_curve is None:
            return self.stream_threshold
        return self.stream_curve.threshold_for(target_fpr or self.default_target_fpr)

    def offline_threshold(self, target_fpr: float | None = None) -> float:
        """The offline CLI's threshold for a target organic flag rate (None: the model's default
        target, the stream's too): both curves are measured on the same validation videos, so a
        target means the same share of organic videos in the CLI (one decision per video) and in
        the stream (ever flagged). A model without an offline curve has its calibrated
        ``threshold`` only."""
        if self.offline_curve is None:
            return self.threshold
        return self.offline_curve.threshold_for(target_fpr or self.default_target_fpr)

    def organic_rate(self, score: float, *, stream: bool = True) -> float | None:
        """Estimated share of organic videos flagged at a threshold equal to ``score``."""
        curve = self.stream_curve if stream else self.offline_curve
        return None if curve is None else curve.rate_at(score)

    @classmethod
    def load(cls, path: str | Path) -> ModelArtifact:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<bytes>") -> ModelArtifact:
        sha = hashlib.sha256(data).hexdigest()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = inference_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # idle intra-op threads sleep instead of spinning: spinning burnt a third more CPU than
        # the inference itself, on the cores the consume loop needs (bench/sustained.py)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelError(f"not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise ModelError(f"model metadata is missing contract field(s): {', '.join(missing)}")
        try:
            channels = json.loads(meta["channels"])
            normalization = json.loads(meta["normalization"])
            combiner = Combiner.from_dict(json.loads(meta["combiner"]))
            window = int(meta["window_hours"])
            threshold = float(meta["threshold"])
            feature_version = int(meta["feature_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"model metadata is malformed: {exc}") from None
        stream_curve = offline_curve = None
        decision: dict = {}
        default_target = DEFAULT_TARGET_FPR
        if "operating_points" in meta:
            try:
                ops = json.loads(meta["operating_points"])
                stream_curve = OperatingCurve.from_points(ops["stream"])
                offline_curve = OperatingCurve.from_points(ops["offline"]) if ops.get("offline") else None
                decision = dict(ops.get("decision", {}))
                default_target = float(ops.get("default_target_fpr", DEFAULT_TARGET_FPR))
                stream_curve.threshold_for(default_target)
            except (ValueError, KeyError, TypeError, OperatingPointError) as exc:
                raise ModelError(f"model metadata 'operating_points' is malformed: {exc}") from None
        if feature_version != FEATURE_VERSION or list(channels) != list(CHANNELS):
            raise ModelError(
                f"model was trained on feature version {feature_version} with channels {channels}; "
                f"this worker computes version {FEATURE_VERSION} with {list(CHANNELS)}"
            )
        if not 0.0 < threshold < 1.0:
            raise ModelError(f"threshold {threshold} is not in (0, 1)")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelError(f"model must have one input named {INPUT_NAME!r}")
        if not outputs or outputs[0].name != OUTPUT_NAME:
            raise ModelError(f"model must have an output named {OUTPUT_NAME!r}")
        shape = inputs[0].shape
        if len(shape) != 3 or shape[1] != len(CHANNELS) or shape[2] not in (window, None) and not isinstance(shape[2], str):
            raise ModelError(f"model input shape {shape} does not match [batch, {len(CHANNELS)}, {window}]")
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or out_shape[1] not in (window, None) and not isinstance(out_shape[1], str):
            raise ModelError(f"model output shape {out_shape} does not match [batch, {window}]")
        return cls(
            path=path,
            sha256=sha,
            name=meta["name"],
            version=meta["version"],
            architecture=meta["architecture"],
            window_hours=window,
            threshold=threshold,
            stream_threshold=(stream_curve.threshold_for(default_target) if stream_curve is not None
                              else max(threshold, float(meta.get("stream_threshold", threshold)))),
            normalization=normalization,
            combiner=combiner,
            metadata=meta,
            session=session,
            stream_curve=stream_curve,
            offline_curve=offline_curve,
            decision=decision,
            default_target_fpr=default_target,
            data=data,
        )

    def run(self, x: np.ndarray) -> np.ndarray:
        """Normalised features (N, C, W) -> hour scores (N, W)."""
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float64)

    def info(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "architecture": self.architecture,
            "threshold": f"{self.threshold:.4f}",
            "stream_threshold": f"{self.stream_threshold:.4f}",
            "window_hours": str(self.window_hours),
        }
