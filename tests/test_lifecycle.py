"""Model lifecycle: push, validation, hot reload on every worker, shadow, promote, rollback.

Unit tests check each refusal reason and the registry fold without a broker; the rest run
real worker processes against the session's real broker and Redis (tests/harness.py).
Test models are the shipped artifact with rewritten metadata or an extra graph tail
(NaN, inf, constant or inverted output), built with the ``onnx`` package.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis.asyncio as aioredis
from onnx import helper, numpy_helper

from stream_detector import keys
from stream_detector.canary import auc, check_model, load_canary, validate_bytes
from stream_detector.cli import main as cli_main
from stream_detector.config import DEFAULT_MODEL_PATH
from stream_detector.dev.simulate import simulate
from stream_detector.models import ModelArtifact, ModelError
from stream_detector.registry import ModelRef, Registry, fold
from stream_detector.windows import WindowStore
from tests.harness import ROOT, Deployment, WorkerProcess

SHIPPED = Path(DEFAULT_MODEL_PATH)
BUILT_IN = "1.1.0"  # version of the shipped model the workers start with


# --------------------------------------------------------------------------- test models

def _tail(graph: onnx.GraphProto, ops: list[tuple[str, float | None]]) -> None:
    """Append ops after the model's output: hour_score := op_n(...op_1(raw)...)."""
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == "hour_score":
                node.output[i] = "raw_hour_score"
    prev = "raw_hour_score"
    for j, (op, const) in enumerate(ops):
        out = "hour_score" if j == len(ops) - 1 else f"tail_{j}"
        inputs = [prev]
        if const is not None:
            name = f"tail_const_{j}"
            graph.initializer.append(numpy_helper.from_array(np.array(const, dtype=np.float32), name))
            inputs.append(name)
        graph.node.append(helper.make_node(op, inputs, [out]))
        prev = out


TAILS = {
    "nan": [("Abs", None), ("Add", 1.0), ("Neg", None), ("Sqrt", None)],  # sqrt(-(|x|+1))
    "inf": [("Mul", 0.0), ("Reciprocal", None)],  # 1/0
    "constant": [("Mul", 0.0)],
    "inverted": [("Neg", None)],
}


def _slice_hours(graph: onnx.GraphProto, hours: int) -> None:
    """hour_score := raw[:, :hours] (a real output-shape change, not just a declared one)."""
    _tail(graph, [("Identity", None)])
    node = graph.node[-1]
    node.op_type = "Slice"
    for name, value in (("starts", 0), ("ends", hours), ("axes", 1)):
        graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.int64), f"slice_{name}"))
        node.input.append(f"slice_{name}")
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = hours


def make_model(version: str, *, meta: dict | None = None, drop: tuple[str, ...] = (), tail: str | None = None,
               output_hours: int | None = None) -> bytes:
    m = onnx.load(str(SHIPPED))
    props = {p.key: p.value for p in m.metadata_props}
    props["version"] = version
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()})
    for k in drop:
        props.pop(k)
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    if tail:
        _tail(m.graph, TAILS[tail])
    if output_hours is not None:
        _slice_hours(m.graph, output_hours)
    return m.SerializeToString()


# kind -> (model bytes factory, substring of the refusal reason)
BAD_MODELS = {
    "not_onnx": (lambda v: b"this is not an onnx model" * 10, "not a valid ONNX model"),
    "missing_field": (lambda v: make_model(v, drop=("threshold",)), "missing contract field(s): threshold"),
    "window_mismatch": (lambda v: make_model(v, meta={"window_hours": 24}), "does not match [batch, 12, 24]"),
    "feature_mismatch": (lambda v: make_model(v, meta={"feature_version": 1}), "feature version 1"),
    "output_shape": (lambda v: make_model(v, output_hours=24), "output shape"),
    "nan_output": (lambda v: make_model(v, tail="nan"), "NaN/inf on the canary batch"),
    "inf_output": (lambda v: make_model(v, tail="inf"), "NaN/inf on the canary batch"),
    "constant_output": (lambda v: make_model(v, tail="constant"), "output is constant"),
    "inverted_fails_canary": (lambda v: make_model(v, tail="inverted"), "below the model's canary.min_auc"),
    "own_canary_threshold": (lambda v: make_model(v, meta={"canary": {"min_auc": 0.9999}}), "is below the model's canary.min_auc 0.9999"),
}


# ------------------------------------------------------------------ unit: validation reasons

@pytest.mark.parametrize("kind", list(BAD_MODELS))
def test_validation_refuses_each_bad_model_with_its_reason(kind):
    factory, reason = BAD_MODELS[kind]
    with pytest.raises(ModelError) as exc:
        validate_bytes(factory(f"9.9.9-{kind}"), window_hours=168)
    assert reason in str(exc.value), str(exc.value)


def test_validation_passes_the_shipped_model_and_a_retagged_copy():
    model, report = validate_bytes(SHIPPED.read_bytes(), window_hours=168)
    assert model.version == BUILT_IN
    meta_auc = json.loads(model.metadata["canary"])["min_auc"]
    assert report.auc >= meta_auc and report.min_auc == meta_auc
    assert report.videos == 200 and 0 < report.fakes < 200
    other, _ = validate_bytes(make_model("1.0.1"), window_hours=168)
    assert other.sha256 != model.sha256 and other.version == "1.0.1"


def test_validation_refuses_a_model_whose_window_differs_from_the_deployment():
    model = ModelArtifact.load(SHIPPED)
    with pytest.raises(ModelError, match="this deployment keeps 336 h windows"):
        check_model(model, window_hours=336)


def test_canary_set_covers_every_pattern_and_hard_negative():
    canary = load_canary()
    doc = json.loads((ROOT / "stream_detector" / "canary.json").read_text())
    assert len(canary.series) == 200 and 40 <= canary.fakes <= 100
    assert set(doc["pattern"]) - {""} == {"spike", "offpeak_burst", "decay_violation", "lockstep", "ratio_anomaly"}
    assert {"viral", "news", "other_timezone", "seasonal", "sparse"} <= set(doc["organic_kind"])


def test_canary_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # with ties
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


# ------------------------------------------------------------------ unit: registry fold

def _change(action, **kw):
    return {"action": action, "by": "alice@host", "at": "2026-01-01T00:00:00Z", **kw}


def _push(version, sha, shadow=False):
    return _change("push", model={"name": "m", "version": version, "sha256": sha}, shadow=shadow)


def test_fold_push_shadow_promote_rollback_and_history():
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    log = [_push("1.1", a)]
    st = fold(log)
    assert st.serving.version == "1.1" and st.rollback == [None] and st.rollback_target() == {"version": "built-in"}
    log.append(_push("1.2", b, shadow=True))
    st = fold(log)
    assert st.serving.version == "1.1" and st.shadow.version == "1.2"
    log.append(_change("promote", version="1.2"))
    st = fold(log)
    assert st.serving.version == "1.2" and st.shadow is None and st.rollback_target()["version"] == "1.1"
    log.append(_push("1.3", c))
    log.append(_change("rollback"))
    st = fold(log)
    assert st.serving.version == "1.2"
    log += [_change("rollback"), _change("rollback")]
    st = fold(log)
    assert st.serving is None, "the last rollback returns to each worker's built-in model"
    log.append(_change("rollback"))
    st = fold(log)
    assert st.history[-1]["result"] == "rejected" and "nothing to roll back" in st.history[-1]["detail"]
    assert [h["result"] for h in st.history] == ["applied"] * 7 + ["rejected"]
    assert all(h["by"] == "alice@host" and h["at"] for h in st.history), "who and when of every change"


def test_fold_rejects_conflicts_and_ignores_no_ops():
    a, b = "a" * 64, "b" * 64
    st = fold([_push("2.0", a), _push("2.0", b), _change("promote", version="7.7"), _push("2.0", a),
               _change("unshadow"), _push("2.0", a, shadow=True)])
    results = [(h["result"], h["detail"]) for h in st.history]
    assert results[1][0] == "rejected" and "already registered with other bytes" in results[1][1]
    assert results[2][0] == "rejected" and "no model with version '7.7'" in results[2][1]
    assert results[3][0] == "noop" and "already serving" in results[3][1]
    assert results[4][0] == "noop" and results[5][0] == "noop"
    assert st.serving.sha256 == a and st.shadow is None and st.rollback == [None]


# ------------------------------------------------------------------ unit: CLI without broker

def test_registry_commands_need_the_broker(monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    for argv in (["model", "list"], ["model", "rollback"], ["model", "push", str(SHIPPED)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "KAFKA_BOOTSTRAP_SERVERS" in err[0], err


def test_push_refuses_a_bad_model_before_touching_the_broker(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    bad = tmp_path / "nan.onnx"
    bad.write_bytes(make_model("6.6.6", tail="nan"))
    assert cli_main(["model", "push", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "NaN/inf" in err[0], err
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    assert cli_main(["model", "push", "--dry-run", str(SHIPPED)]) == 0
    assert "passes: canary AUC" in capsys.readouterr().out


# ------------------------------------------------------------------ helpers (real services)

def _items(data):
    for e in data.iter_events():
        yield e["video_id"], json.dumps(e, separators=(",", ":")).encode()


def _cli(dep: Deployment, *args: str, module: str = "stream_detector.cli") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *(["model"] if module == "stream_detector.cli" else []), *args]
    return subprocess.run(cmd, env=dep.env(0), capture_output=True, text=True, cwd=str(ROOT), timeout=120)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _model(w: WorkerProcess) -> dict:
    status, body = w.get_json("/model")
    assert status == 200
    return body


def _wait_model(workers, pred, what: str, timeout_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while True:
        states = [_model(w) for w in workers]
        if all(pred(s) for s in states):
            return
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not every worker shows {what} after {timeout_s:.0f}s: "
                                 + json.dumps([{k: s.get(k) for k in ("version", "shadow", "registry")} for s in states])[:3000])
        time.sleep(0.2)


def _serving(version: str):
    return lambda s: s["version"] == version and "pending" not in s


def _assert_windows_exact(dep: Deployment, datasets) -> None:
    async def read(ids):
        r = aioredis.from_url(dep.redis_url)
        try:
            return await WindowStore(r, window_hours=168, ttl_seconds=3600, prefix=dep.run_id).read(ids)
        finally:
            await r.aclose()

    for data in datasets:
        got = asyncio.run(read(data.video_ids))
        for i, vid in enumerate(data.video_ids):
            want = data.counts[i]
            if vid not in got:
                assert want.sum() == 0, f"{vid}: no window although it had events"
                continue
            g = got[vid]
            offset = data.start_hour - g.start_hour
            aligned = np.zeros_like(want)
            for t in range(want.shape[1]):
                if 0 <= offset + t < g.hours:
                    aligned[:, t] = g.counts[:, offset + t]
            assert np.array_equal(aligned, want), f"{vid}: window counts differ (an event was lost or doubled)"


def _info(metrics: dict[str, float], name: str) -> set[str]:
    """Versions named by an Info metric's samples."""
    return {k.split('version="', 1)[1].split('"', 1)[0] for k in metrics if k.startswith(name + "{")}


def _flags(dep: Deployment, topic: str) -> list[dict]:
    return [json.loads(r.value) for r in dep.read_topic(topic, idle_s=2.0)]


def _force_push(dep: Deployment, data: bytes, version: str) -> None:
    """A client that skips validation: only the workers' own checks stand in the way."""
    ref = ModelRef(version, hashlib.sha256(data).hexdigest(), "forced")
    asyncio.run(Registry(dep.bootstrap, dep.models, who="test@forced").publish(data, ref))


# ------------------------------------------------------------------ end to end

def test_push_mid_stream_reaches_every_worker_loses_nothing_and_rollback_restores(kafka_bootstrap, redis_url, tmp_path):
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    new = tmp_path / "candidate.onnx"
    new.write_bytes(make_model("2.0.0"))
    stream = simulate(80, seed=11)  # ~48k events at 2,000/s: the stream outlasts the push on a busy machine
    later = simulate(24, seed=12, start_hour=stream.start_hour + 168)  # the week after: not late
    workers = [WorkerProcess(dep, tmp_path), WorkerProcess(dep, tmp_path)]
    late = None
    try:
        for w in workers:
            w.wait_ready()
        _wait_model(workers, _serving(BUILT_IN), "the built-in model")
        producer = threading.Thread(target=dep.produce, args=(list(_items(stream)),), kwargs={"rate": 2000.0})
        producer.start()
        t0 = time.monotonic()
        while sum(w.metrics().get("detector_consume_batch_size_sum", 0.0) for w in workers) < 3000:
            assert time.monotonic() - t0 < 60, "the stream did not start"
            time.sleep(0.2)
        out = _ok(_cli(dep, "push", str(new), module="training.cli"))  # `detector-train push`
        assert "2.0.0 serves (was built-in)" in out
        _wait_model(workers, _serving("2.0.0"), "2.0.0", timeout_s=30)
        assert producer.is_alive(), "the push did not happen during the stream (producer already done)"
        producer.join()
        dep.produce(list(_items(later)))  # new videos, produced after every worker switched
        workers[0].wait_drained()

        _assert_windows_exact(dep, [stream, later])
        assert not dep.read_topic(dep.dlq, idle_s=1.0), "no event was dead-lettered"
        flags = _flags(dep, dep.flags)
        assert len({f["flag_id"] for f in flags}) == len(flags), "a flag was repeated"
        assert {f["model"]["version"] for f in flags} <= {BUILT_IN, "2.0.0"}
        later_flags = [f for f in flags if f["video_id"] in set(later.video_ids)]
        assert later_flags, "the later videos contain fakes: they must be flagged"
        assert {f["model"]["version"] for f in later_flags} == {"2.0.0"}
        assert all(f["model"]["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest() for f in later_flags)
        for w in workers:
            m = w.metrics()
            assert m['detector_model_reloads_total{result="loaded"}'] == 1.0
            assert m['detector_model_reloads_total{result="refused"}'] == 0.0
            assert _info(m, "detector_model_info") == {"2.0.0"}
            assert m["detector_model_validation_seconds_count"] == 2.0  # the built-in at startup, then 2.0.0

        # a worker started after the push serves the current model from its first batch
        late = WorkerProcess(dep, tmp_path)
        late.wait_ready()
        status = _model(late)
        assert status["version"] == "2.0.0" and status["registry"]["in_sync"], status

        # one command rolls every worker back to the previous version (here: the built-in model)
        out = _ok(_cli(dep, "rollback"))
        assert "rolled back from 2.0.0 to built-in" in out
        _wait_model([*workers, late], _serving(BUILT_IN), "the rolled-back model", timeout_s=30)
        current = json.loads(_ok(_cli(dep, "current")))
        assert current["serving"] is None and current["rollback_to"] is None
        assert [h["action"] for h in current["history"]] == ["push", "rollback"]
        assert all(h["by"] and h["at"] for h in current["history"])
    finally:
        for w in [*workers, *([late] if late else [])]:
            w.terminate()


def test_bad_models_are_refused_by_every_gate_and_the_old_model_serves_on(kafka_bootstrap, redis_url, tmp_path):
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    w = WorkerProcess(dep, tmp_path)
    try:
        w.wait_ready()
        # the CLI gate: refused before anything is published
        for kind in ("not_onnx", "inverted_fails_canary"):
            factory, reason = BAD_MODELS[kind]
            path = tmp_path / f"{kind}.onnx"
            path.write_bytes(factory(f"3.0.0-{kind}"))
            proc = _cli(dep, "push", str(path))
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and reason in lines[0], proc.stderr
        assert json.loads(_ok(_cli(dep, "current")))["history"] == []

        # the worker gate (defence in depth): a client that skips validation
        for i, (kind, (factory, reason)) in enumerate(BAD_MODELS.items(), start=1):
            version = f"3.0.{i}-{kind}"
            _force_push(dep, factory(version), version)
            _wait_model([w], lambda s, v=version: s["registry"]["refused"] and s["registry"]["refused"][0]["version"] == v,
                        f"the refusal of {version}", timeout_s=30)
            status = _model(w)
            refusal = status["registry"]["refused"][0]
            assert reason in refusal["reason"] and refusal["role"] == "serving", refusal
            assert status["version"] == BUILT_IN and not status["registry"]["in_sync"]
            assert w.metrics()['detector_model_reloads_total{result="refused"}'] == i
        # the built-in version with other bytes: the CLI cannot know what workers have built in
        _force_push(dep, make_model(BUILT_IN, meta={"threshold": 0.25}), BUILT_IN)
        _wait_model([w], lambda s: s["registry"]["refused"][0]["version"] == BUILT_IN, "the refusal of a reused version")
        assert "built-in model with other bytes" in _model(w)["registry"]["refused"][0]["reason"]
        assert w.metrics()['detector_model_reloads_total{result="loaded"}'] == 0

        # the old model serves on: flags of a stream after all that name it
        data = simulate(24, seed=21)
        dep.produce(list(_items(data)))
        w.wait_drained()
        flags = _flags(dep, dep.flags)
        assert flags and {f["model"]["version"] for f in flags} == {BUILT_IN}

        # a good model after the bad ones serves; pushing the same bytes again is refused
        good = tmp_path / "good.onnx"
        good.write_bytes(make_model("3.1.0"))
        _ok(_cli(dep, "push", str(good)))
        _wait_model([w], _serving("3.1.0"), "3.1.0", timeout_s=30)
        again = _cli(dep, "push", str(good))
        assert again.returncode == 2 and "same bytes" in again.stderr and "3.1.0" in again.stderr, again.stderr
        assert _model(w)["registry"]["in_sync"]
    finally:
        w.terminate()


async def _ttls(redis_url: str, names: list[str]) -> list[int]:
    r = aioredis.from_url(redis_url)
    try:
        return [await r.ttl(k) for k in names]
    finally:
        await r.aclose()


def test_shadow_flags_go_to_the_shadow_topic_only_then_promote_and_rollback(kafka_bootstrap, redis_url, tmp_path):
    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    candidate = tmp_path / "shadow.onnx"
    candidate.write_bytes(make_model("1.7.0", meta={"threshold": 0.2}))  # flags more than the serving model
    w = WorkerProcess(dep, tmp_path)
    try:
        w.wait_ready()
        out = _ok(_cli(dep, "push", "--shadow", str(candidate)))
        assert "1.7.0 runs in shadow beside built-in" in out
        _wait_model([w], lambda s: (s["shadow"] or {}).get("version") == "1.7.0" and s["version"] == BUILT_IN, "shadow 1.7.0")

        data = simulate(30, seed=31)
        dep.produce(list(_items(data)))
        w.wait_drained()
        flags = _flags(dep, dep.flags)
        shadow_flags = _flags(dep, dep.shadow_flags)
        assert flags and {f["model"]["version"] for f in flags} == {BUILT_IN}, "shadow flags leaked to moderation"
        assert shadow_flags and {f["model"]["version"] for f in shadow_flags} == {"1.7.0"}
        assert len({f["video_id"] for f in shadow_flags}) >= len({f["video_id"] for f in flags})

        m = w.metrics()
        compared = sum(v for k, v in m.items() if k.startswith("detector_shadow_comparisons_total{"))
        assert compared == m["detector_videos_scored_total"] > 0, "the shadow scores the same batches"
        assert m["detector_shadow_flags_total"] == len(shadow_flags)
        assert m["detector_flags_total"] == len(flags)
        assert m["detector_shadow_score_delta_count"] == compared
        assert _info(m, "detector_shadow_model_info") == {"1.7.0"}
        shadow = _model(w)["shadow"]
        assert shadow["videos_compared"] == compared and 0.0 <= shadow["agreement"] <= 1.0
        assert shadow["shadow_flag_rate"] >= shadow["serving_flag_rate"]
        status, doc = w.get_json(f"/score/{data.video_ids[0]}")
        assert status == 200 and doc["shadow"]["model"]["version"] == "1.7.0"
        both = sorted({f["video_id"] for f in flags} & {f["video_id"] for f in shadow_flags})
        sha = hashlib.sha256(candidate.read_bytes()).hexdigest()
        ttls = asyncio.run(_ttls(dep.redis_url, [keys.flag_state(dep.run_id, both[0]),
                                                 keys.shadow_flag_state(dep.run_id, both[0], sha)]))
        assert ttls[0] > 8 * 86400 and abs(ttls[0] - ttls[1]) < 600, f"serving and shadow state live alike: {ttls}"

        out = _ok(_cli(dep, "promote", "1.7.0"))
        assert "1.7.0 serves (was built-in)" in out
        _wait_model([w], lambda s: s["version"] == "1.7.0" and s["shadow"] is None, "1.7.0 promoted", timeout_s=30)
        assert _info(w.metrics(), "detector_shadow_model_info") == {"none"}
        _ok(_cli(dep, "rollback"))
        _wait_model([w], _serving(BUILT_IN), "the rolled-back model", timeout_s=30)
        listing = _ok(_cli(dep, "list"))
        assert "1.7.0" in listing and "rollback target" not in listing
    finally:
        w.terminate()
