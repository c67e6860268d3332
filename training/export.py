"""Export a trained model as a self-describing ONNX artifact (the "Model artifact" contract).

The file has one input ``features`` float32 ``[batch, C, W]`` (dynamic batch axis) and one
output ``hour_score`` float32 ``[batch, W]``. Every metadata entry is written to the ONNX
``metadata_props``: ``str`` values verbatim, everything else JSON-encoded (strict JSON: NaN
and infinities are refused). A worker needs nothing but the file and onnxruntime to score.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from stream_detector.models import INPUT_NAME, OUTPUT_NAME
from stream_detector.models import REQUIRED_METADATA as CONTRACT_METADATA
from training.onnx_layout import conv2d_graph

DEFAULT_OPSET = 17

# The contract lives with the runtime that enforces it; export adds the creation time.
REQUIRED_METADATA: tuple[str, ...] = (*CONTRACT_METADATA, "created_at")
"""Keys every artifact must carry (values are filled in by the training pipeline)."""

JSON_METADATA: frozenset[str] = frozenset(
    {"window_hours", "channels", "normalization", "threshold", "combiner", "metrics"}
)
"""Required keys whose value is JSON (decoded by ``read_onnx_metadata(decode=True)``)."""


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _encode(key: str, value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=_json_default, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata {key!r} cannot be encoded as strict JSON: {e}") from e


def _as_json(key: str, value: object) -> object:
    """The JSON value of a metadata entry given either as an object or as its JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"metadata {key!r} must be JSON, got {value!r}") from e
    return json.loads(_encode(key, value))


def _validate(metadata: Mapping[str, object], in_channels: int, window: int) -> dict[str, str]:
    missing = [k for k in REQUIRED_METADATA if k not in metadata or metadata[k] is None]
    if missing:
        raise ValueError(f"metadata is missing required keys: {missing}")
    for k in metadata:
        if not isinstance(k, str) or not k:
            raise ValueError(f"metadata keys must be non-empty strings, got {k!r}")

    channels = _as_json("channels", metadata["channels"])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ValueError("metadata 'channels' must be a list of channel names")
    if len(channels) != in_channels:
        raise ValueError(f"metadata 'channels' has {len(channels)} names, model has {in_channels}")
    wh = _as_json("window_hours", metadata["window_hours"])
    if isinstance(wh, bool) or not isinstance(wh, (int, float)) or wh != window:
        raise ValueError(f"metadata 'window_hours' is {wh!r}, export window is {window}")
    thr = _as_json("threshold", metadata["threshold"])
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise ValueError(f"metadata 'threshold' must be a finite number, got {thr!r}")
    norm = _as_json("normalization", metadata["normalization"])
    if not isinstance(norm, dict):
        raise ValueError("metadata 'normalization' must be a JSON object")
    for stat in ("mean", "std"):  # checked only when given in the per-channel list form
        if isinstance(norm.get(stat), list) and len(norm[stat]) != in_channels:
            raise ValueError(
                f"metadata normalization[{stat!r}] has {len(norm[stat])} values, "
                f"model has {in_channels} channels"
            )
    return {k: _encode(k, v) for k, v in metadata.items()}


def _to_onnx_proto(model: nn.Module, in_channels: int, window: int, opset: int) -> onnx.ModelProto:
    dummy = torch.randn(2, in_channels, window, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is deprecated upstream but needs no onnxscript and
        # handles every op used here (LSTM included); silence its deprecation chatter.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # Shape-dependent Python branches (autoencoder padding, nn.LSTM's own checks) are
        # constant for the fixed window W; _verify() re-checks the trace at other batch sizes.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM.*")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    # Pin the declared I/O shapes to the contract: [batch, C, W] -> [batch, W]. (The tracer
    # can leave W symbolic when a model slices by its input length, e.g. the autoencoder.)
    for value, dims in (
        (proto.graph.input[0], ("batch", in_channels, window)),
        (proto.graph.output[0], ("batch", window)),
    ):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            if isinstance(d, str):
                shape.dim.add().dim_param = d
            else:
                shape.dim.add().dim_value = d
    return proto


def _verify(model: nn.Module, data: bytes, in_channels: int, window: int, tol: float) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (1, 5):
        x = rng.standard_normal((n, in_channels, window)).astype(np.float32)
        (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        if got.shape != (n, window):
            raise RuntimeError(f"exported model outputs {got.shape}, expected {(n, window)}")
        worst = max(worst, float(np.max(np.abs(got - want))))
    if not worst <= tol:
        raise RuntimeError(f"onnxruntime disagrees with torch: max abs diff {worst:.3g} > {tol}")
    return worst


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    in_channels: int,
    window: int,
    metadata: Mapping[str, str | dict | list | float | int],
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    tolerance: float = 1e-4,
) -> str:
    """Write ``model`` to ``path`` as ONNX with ``metadata`` in metadata_props; return sha256.

    Raises ValueError when a required metadata key is missing or inconsistent with the model
    (channel count, window length, non-finite threshold). With ``verify`` (default) the file is
    loaded by onnxruntime and checked against torch on random inputs before it is written;
    the write is atomic (temporary file + rename), so a failed export leaves no artifact.
    """
    if opset < 17:
        raise ValueError("opset must be >= 17")
    props = _validate(metadata, in_channels, window)

    m = copy.deepcopy(model).cpu().float().eval()
    proto = _to_onnx_proto(m, in_channels, window, opset)
    proto = conv2d_graph(proto) or proto  # the layout onnxruntime runs fastest (onnx_layout.py)
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "stream-detector-training"
    proto.doc_string = f"{props['name']} {props['version']} ({props['architecture']})"
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    if verify:
        _verify(m, data, in_channels, window, tolerance)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; workers may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def read_onnx_metadata(path: str | os.PathLike, *, decode: bool = False) -> dict[str, object]:
    """metadata_props of an ONNX file, read with onnxruntime alone (as the service does).

    Values are the stored strings; with ``decode`` the JSON-valued required keys
    (``JSON_METADATA``) are decoded.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta: dict[str, object] = dict(sess.get_modelmeta().custom_metadata_map)
    if decode:
        for k in JSON_METADATA & meta.keys():
            meta[k] = json.loads(meta[k])  # type: ignore[arg-type]
    return meta
