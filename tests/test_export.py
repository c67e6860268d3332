"""Models, training loop and ONNX export: shapes, torch/onnxruntime parity, metadata contract,
size budget, and that fit() actually learns to find planted anomalies."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from training.export import (  # noqa: E402
    INPUT_NAME,
    OUTPUT_NAME,
    REQUIRED_METADATA,
    export_onnx,
    read_onnx_metadata,
)
from training.models import (  # noqa: E402
    ARCHITECTURES,
    build_model,
    count_parameters,
    is_supervised,
)
from training.models.fit import fit, predict  # noqa: E402

torch.set_num_threads(1)

C, W = 13, 168
ARCHS = sorted(ARCHITECTURES)


def _metadata(arch: str, channels: int = C, window: int = W) -> dict:
    return {
        "name": "test-model",
        "version": "0.0.1",
        "architecture": arch,
        "window_hours": window,
        "channels": [f"ch{i}" for i in range(channels)],
        "normalization": {"mean": [0.0] * channels, "std": [1.0] * channels},
        "threshold": 0.73,
        "combiner": {"kind": "max", "top_k": 3},
        "training_data_fingerprint": "sha256:deadbeef",
        "metrics": {"roc_auc": 0.97, "pr_auc": 0.9},
        "created_at": "2026-11-25T12:00:00Z",
        "feature_version": "1",
        "extra_note": "kept verbatim",
    }


def _model(arch: str, channels: int = C, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, channels, **kw).eval()


def _structured(n: int, channels: int, window: int, seed: int = 0) -> np.ndarray:
    """Smooth decaying curves with daily seasonality, noise, a spike and unobserved zeros."""
    rng = np.random.default_rng(seed)
    t = np.arange(window)
    x = np.zeros((n, channels, window), np.float32)
    for i in range(n):
        pub = int(rng.integers(0, window // 3))
        decay = np.exp(-np.clip(t - pub, 0, None) / rng.uniform(10, 80)) * rng.uniform(1, 5)
        season = 0.5 * np.sin(2 * np.pi * (t + rng.integers(24)) / 24)
        xi = decay[None] * rng.uniform(0.5, 2, (channels, 1)) + season[None]
        xi += rng.normal(0, 0.05, (channels, window))
        s = int(rng.integers(pub, window))
        xi[int(rng.integers(channels)), s : s + 2] += rng.uniform(5, 50)  # implausible spike
        xi[:, :pub] = 0.0
        x[i] = xi
    return x


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    arch = request.param
    model = _model(arch)
    path = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
    sha = export_onnx(model, path, in_channels=C, window=W, metadata=_metadata(arch))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return arch, model, path, sha, sess


# --------------------------------------------------------------------------- models


def test_registry():
    assert set(ARCHITECTURES) == {"tcn", "autoencoder", "lstm"}
    assert is_supervised("tcn") and is_supervised("lstm") and not is_supervised("autoencoder")
    with pytest.raises(ValueError):
        build_model("transformer", C)
    with pytest.raises(ValueError):
        is_supervised("transformer")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n", [1, 3, 64])
@pytest.mark.parametrize("window", [W, 50, 170])
def test_output_shape(arch, n, window):
    model = _model(arch)
    with torch.no_grad():
        y = model(torch.randn(n, C, window))
    assert y.shape == (n, window) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_are_a_parameter(arch):
    model = _model(arch, channels=5)
    with torch.no_grad():
        assert model(torch.randn(2, 5, W)).shape == (2, W)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_is_small(arch):
    model = _model(arch)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weight_bytes < 1_000_000
    assert count_parameters(model) < 250_000


def test_tcn_receptive_field_covers_two_days():
    model = _model("tcn", dropout=0.0)
    assert model.receptive_field > 48
    # Empirically: an impulse at hour 84 moves the scores of hours more than 24 h away.
    # (The window-level context is off so only the convolutional reach is measured.)
    model = _model("tcn", dropout=0.0, context=False)
    x = torch.zeros(1, C, W)
    x2 = x.clone()
    x2[0, :, 84] = 10.0
    with torch.no_grad():
        d = (model(x2) - model(x)).abs()[0]
    assert d[84 - 30] > 0 and d[84 + 30] > 0  # centred: both sides see it
    assert d[84 - 70] == 0 and d[84 + 70] == 0  # and it is bounded


def test_autoencoder_reconstruct_and_score():
    model = _model("autoencoder")
    x = torch.randn(4, C, 170)  # not a multiple of 4
    with torch.no_grad():
        r = model.reconstruct(x)
        s = model(x)
    assert r.shape == x.shape
    expected = torch.log1p((r - x).pow(2).mean(dim=1))
    assert torch.allclose(s, expected) and (s >= 0).all()


# --------------------------------------------------------------------------- export


def test_export_graph_contract(exported):
    arch, _, path, sha, _ = exported
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    idims = inp.type.tensor_type.shape.dim
    odims = out.type.tensor_type.shape.dim
    assert idims[0].dim_param and not idims[0].dim_value  # dynamic batch
    assert [d.dim_value for d in idims[1:]] == [C, W]
    assert odims[0].dim_param and odims[1].dim_value == W
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert path.stat().st_size < 1_000_000


@pytest.mark.parametrize("n", [1, 300])
def test_parity_random(exported, n):
    _, model, _, _, sess = exported
    x = np.random.default_rng(n).standard_normal((n, C, W)).astype(np.float32)
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    want = predict(model, x)
    assert got.shape == (n, W)
    assert np.max(np.abs(got - want)) < 1e-4


@pytest.mark.parametrize("n", [1, 7, 300])
def test_parity_structured(exported, n):
    _, model, _, _, sess = exported
    x = _structured(n, C, W, seed=n)
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    want = predict(model, x)
    assert got.shape == (n, W)
    assert np.max(np.abs(got - want)) < 1e-4


def test_metadata_round_trip(exported):
    arch, _, path, _, _ = exported
    meta = _metadata(arch)
    raw = read_onnx_metadata(path)
    assert set(raw) == set(meta)
    for k, v in meta.items():
        if isinstance(v, str):
            assert raw[k] == v
        else:
            assert json.loads(raw[k]) == v
    decoded = read_onnx_metadata(path, decode=True)
    assert decoded["channels"] == meta["channels"]
    assert decoded["threshold"] == pytest.approx(0.73)
    assert decoded["window_hours"] == W
    assert decoded["version"] == "0.0.1"  # plain strings are never JSON-decoded


def test_metadata_accepts_numpy_and_json_strings(tmp_path):
    meta = _metadata("tcn")
    meta["threshold"] = np.float32(0.5)
    meta["normalization"] = {"mean": np.zeros(C), "std": np.ones(C, np.float32)}
    meta["channels"] = json.dumps(meta["channels"])  # already-encoded JSON text is fine
    export_onnx(_model("tcn"), tmp_path / "m.onnx", in_channels=C, window=W, metadata=meta)
    dec = read_onnx_metadata(tmp_path / "m.onnx", decode=True)
    assert dec["threshold"] == 0.5 and dec["normalization"]["std"] == [1.0] * C
    assert dec["channels"] == [f"ch{i}" for i in range(C)]


@pytest.mark.parametrize("key", REQUIRED_METADATA)
def test_missing_metadata_key_refused(tmp_path, key):
    meta = _metadata("tcn")
    del meta[key]
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=key):
        export_onnx(_model("tcn"), path, in_channels=C, window=W, metadata=meta)
    assert not path.exists()


@pytest.mark.parametrize(
    "key,value",
    [
        ("channels", ["a", "b"]),  # wrong channel count
        ("window_hours", 24),  # window mismatch
        ("threshold", float("nan")),
        ("threshold", "high"),
        ("normalization", {"mean": [0.0], "std": [1.0]}),
        ("metrics", {"roc_auc": float("nan")}),  # not strict JSON
        ("name", None),
    ],
)
def test_inconsistent_metadata_refused(tmp_path, key, value):
    meta = _metadata("tcn")
    meta[key] = value
    with pytest.raises(ValueError):
        export_onnx(_model("tcn"), tmp_path / "m.onnx", in_channels=C, window=W, metadata=meta)
    assert not (tmp_path / "m.onnx").exists()


def test_export_does_not_change_model_mode(tmp_path):
    model = _model("tcn").train()
    export_onnx(model, tmp_path / "m.onnx", in_channels=C, window=W, metadata=_metadata("tcn"))
    assert model.training


# --------------------------------------------------------------------------- fit


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def _planted(n: int, channels: int, window: int, rng: np.random.Generator):
    """Organic-looking windows (decay, daily rhythm, noise, and smooth all-channel surges as
    hard negatives); half get a short spike on channel 0 only, labelled hour by hour.
    Hours before publication are zero and masked out."""
    t = np.arange(window)
    X = np.zeros((n, channels, window), np.float32)
    Y = np.zeros((n, window), np.float32)
    M = np.zeros((n, window), np.float32)
    planted = rng.permutation(np.arange(n) < n // 2)
    spans: list[tuple[int, int] | None] = []
    for i in range(n):
        pub = int(rng.integers(0, 60))
        base = np.exp(-np.clip(t - pub, 0, None) / rng.uniform(20, 80)) * rng.uniform(1, 2)
        season = 0.3 * np.sin(2 * np.pi * (t + rng.integers(24)) / 24)
        x = base[None] + season[None] + rng.normal(0, 0.1, (channels, window))
        if rng.random() < 0.5:  # viral surge: bigger than the spike, but smooth and joint
            mu = int(rng.integers(pub + 10, window - 5))
            x += rng.uniform(2, 3) * np.exp(-0.5 * ((t - mu) / 4) ** 2)[None]
        span = None
        if planted[i]:
            s, length = int(rng.integers(pub + 5, window - 3)), int(rng.integers(1, 3))
            x[0, s : s + length] += rng.uniform(1.5, 2.5)
            Y[i, s : s + length] = 1.0
            span = (s, s + length)
        x[:, :pub] = 0.0
        M[i, pub:] = 1.0
        X[i] = x
        spans.append(span)
    return X, Y, M, planted, spans


def _detection(model, X, M, planted, spans) -> tuple[float, float]:
    """(window AUC of max observed hour score, share of planted windows whose top hour is in
    the planted span)."""
    s = np.where(M > 0, predict(model, X), -np.inf)
    auc = _auc(s.max(1)[planted], s.max(1)[~planted])
    top = s.argmax(1)
    hits = [a <= top[i] < b for i, sp in enumerate(spans) if sp for a, b in [sp]]
    return auc, float(np.mean(hits))


@pytest.mark.parametrize(
    "arch,epochs,lr",
    [("tcn", 8, 2e-3), ("lstm", 20, 5e-3), ("autoencoder", 30, 5e-3)],
)
def test_fit_learns_planted_spikes(arch, epochs, lr):
    rng = np.random.default_rng(1)
    ch = 4
    Xtr, Ytr, Mtr, Ptr, _ = _planted(256, ch, W, rng)
    Xte, _, Mte, Pte, Ste = _planted(200, ch, W, rng)
    model = _model(arch, channels=ch)
    auc0, _ = _detection(model, Xte, Mte, Pte, Ste)
    if is_supervised(arch):
        hist = fit(
            model, Xtr, Ytr, Mtr, arch=arch, epochs=epochs, batch_size=32, lr=lr, seed=0, log=None
        )
    else:  # organic windows only, no labels
        hist = fit(
            model,
            Xtr[~Ptr],
            None,
            Mtr[~Ptr],
            arch=arch,
            epochs=epochs,
            batch_size=32,
            lr=lr,
            seed=0,
            log=None,
        )
    assert hist["epochs_run"] == epochs and len(hist["train_loss"]) == epochs
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["windows_per_second"] > 0
    auc, loc = _detection(model, Xte, Mte, Pte, Ste)
    # The untrained model is fooled by the (larger) organic surges; the trained one is not.
    assert auc0 < 0.7
    assert auc > 0.95, (auc0, auc)
    assert loc > 0.9, loc
    assert not model.training


def test_fit_is_deterministic():
    rng = np.random.default_rng(2)
    X, Y, M, _, _ = _planted(64, 3, W, rng)
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # initialisation is the caller's; fit() seeds the training
        model = build_model("tcn", 3)
        fit(model, X, Y, M, arch="tcn", epochs=2, batch_size=16, seed=7, log=None)
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_fit_validation_and_early_stopping():
    rng = np.random.default_rng(3)
    X, Y, M, _, _ = _planted(96, 3, W, rng)
    model = _model("tcn", channels=3)
    logs: list[str] = []
    hist = fit(
        model,
        X[:64],
        Y[:64],
        M[:64],
        arch="tcn",
        epochs=40,
        batch_size=32,
        lr=2e-2,
        seed=0,
        X_val=X[64:],
        Y_val=Y[64:],
        M_val=M[64:],
        log=logs.append,
        patience=2,
    )
    assert len(hist["val_loss"]) == hist["epochs_run"] == len(logs) - hist["stopped_early"]
    assert hist["best_val_loss"] == min(hist["val_loss"])
    assert 1 <= hist["best_epoch"] <= hist["epochs_run"]
    if hist["stopped_early"]:
        assert hist["epochs_run"] - hist["best_epoch"] == 2


def test_fit_input_validation():
    X = np.zeros((4, 3, W), np.float32)
    with pytest.raises(ValueError):
        fit(_model("tcn", channels=3), X, None, None, arch="tcn", epochs=1, seed=0, log=None)
    with pytest.raises(ValueError):
        fit(
            _model("tcn", channels=3),
            X,
            np.zeros((4, W - 1)),
            None,
            arch="tcn",
            epochs=1,
            seed=0,
            log=None,
        )
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        fit(
            _model("autoencoder", channels=3),
            bad,
            None,
            None,
            arch="autoencoder",
            epochs=1,
            seed=0,
            log=None,
        )


def test_predict_matches_forward_and_batches():
    model = _model("tcn")
    x = _structured(37, C, W)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = predict(model, x, batch_size=8)
    assert got.dtype == np.float32 and got.shape == (37, W)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_tcn_is_exported_with_2d_convolutions_and_the_others_as_traced(exported):
    arch, _, path, _, sess = exported
    proto = onnx.load(str(path))
    kernels = [next(a.ints for a in n.attribute if a.name == "kernel_shape") for n in proto.graph.node
               if n.op_type == "Conv"]
    if arch == "tcn":
        assert kernels and all(len(k) == 2 and k[0] == 1 for k in kernels)  # onnxruntime's NCHWc path
    x = np.random.default_rng(5).standard_normal((3, C, W)).astype(np.float32)
    (y,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    assert y.shape == (3, W)  # the contract's shapes whatever the layout inside


@pytest.mark.parametrize("arch", ARCHS)
def test_conv2d_graph_gives_the_traced_graphs_scores_or_leaves_it_alone(arch):
    from training.export import _to_onnx_proto
    from training.onnx_layout import conv2d_graph

    model = _model(arch).eval()
    traced = _to_onnx_proto(model, C, W, 17)
    lifted = conv2d_graph(traced)
    if arch != "tcn":
        assert lifted is None  # an LSTM, a transposed convolution: not rewritten
        return
    onnx.checker.check_model(lifted, full_check=True)
    x = np.random.default_rng(6).standard_normal((40, C, W)).astype(np.float32) * 2

    def run(proto):
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    np.testing.assert_allclose(run(lifted), run(traced), atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(run(lifted), model(torch.from_numpy(x)).numpy(), atol=1e-4)
    assert conv2d_graph(lifted) is None  # a lifted graph is left alone
    assert len(lifted.graph.input) == 1 and len(lifted.graph.input[0].type.tensor_type.shape.dim) == 3
