"""The shipped model: loadable with onnxruntime alone, contract metadata, floor targets on unseen data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.dev.simulate import simulate
from stream_detector.features import CHANNELS, FEATURE_VERSION
from stream_detector.models import REQUIRED_METADATA, ModelArtifact
from stream_detector.scoring import Scorer
from training.calibrate import localisation
from training.evaluate import classification

UNSEEN_SEED = 8_675_309  # never used by training, validation or the report


def test_runtime_scores_without_torch():
    code = (
        "import sys; from stream_detector.models import ModelArtifact; from stream_detector.scoring import Scorer;"
        "from stream_detector.dev.simulate import simulate;"
        "d = simulate(5, seed=1); s = Scorer(ModelArtifact.load(sys.argv[1])).score(list(d.iter_series()));"
        "assert len(s) == 5; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(DEFAULT_MODEL_PATH)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_metadata_carries_the_contract():
    session = ort.InferenceSession(str(DEFAULT_MODEL_PATH), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    for key in REQUIRED_METADATA:
        assert key in meta, key
    assert json.loads(meta["channels"]) == list(CHANNELS)
    assert int(meta["feature_version"]) == FEATURE_VERSION
    assert int(meta["window_hours"]) == 168
    assert 0 < float(meta["threshold"]) < 1
    norm = json.loads(meta["normalization"])
    assert len(norm["mean"]) == len(CHANNELS) == len(norm["std"])
    assert len(meta["training_data_fingerprint"]) == 64
    metrics = json.loads(meta["metrics"])
    assert {"auc", "precision", "recall", "f1", "fpr"} <= set(metrics)
    inp = session.get_inputs()[0]
    assert inp.name == "features" and inp.shape[1:] == [len(CHANNELS), 168]
    assert not isinstance(inp.shape[0], int), "batch axis must be dynamic"
    assert DEFAULT_MODEL_PATH.stat().st_size < 4 * 1024 * 1024


def test_operating_points_map_a_target_to_a_threshold_and_scores_to_rates():
    model = ModelArtifact.load(DEFAULT_MODEL_PATH)
    assert model.stream_curve is not None and model.offline_curve is not None
    assert model.decision["confirm_hours"] >= 1
    loose, default, strict = (model.publish_threshold(t) for t in (0.05, None, 0.01))
    assert 0 < loose <= default <= strict < 1
    assert model.publish_threshold() == pytest.approx(model.stream_threshold)
    rates = [model.organic_rate(s) for s in (0.1, 0.5, 0.9, 0.999)]
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True)), rates
    assert model.organic_rate(default) <= model.default_target_fpr + 1e-9


@pytest.fixture(scope="module")
def unseen():
    from stream_detector.dev.texture import RealTexture

    # held-out texture pool: real-world organic texture the model never trained on
    data = simulate(1200, seed=UNSEEN_SEED, texture=RealTexture("test"))
    scorer = Scorer(ModelArtifact.load(DEFAULT_MODEL_PATH))
    scores = scorer.score(list(data.iter_series()))
    return data, scores, scorer


def test_floor_targets_on_an_unseen_seed(unseen):
    """The product brief's floor: AUC 0.85, precision 0.80, recall 0.75, F1 0.77, FPR 0.10."""
    data, scores, scorer = unseen
    s = np.array([v.score for v in scores])
    m = classification(s, np.asarray(data.label), scorer.model.threshold)
    assert m["auc"] >= 0.85, m
    assert m["precision"] >= 0.80, m
    assert m["recall"] >= 0.75, m
    assert m["f1"] >= 0.77, m
    assert m["fpr"] <= 0.10, m


def test_fake_hours_are_localised_within_an_hour(unseen):
    data, scores, scorer = unseen
    hour_p = np.stack([v.hour_probability for v in scores])
    flagged = np.array([v.flagged for v in scores])
    loc = localisation(hour_p, flagged, scorer.model.combiner.hour_threshold, scorer.model.threshold, data.hour_fake)
    assert loc["hours_localised_flagged"] >= 0.75, loc
    assert loc["flagged_hour_precision"] >= 0.6, loc
