"""`stream-detector score` and `detector-train` command lines: contract output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stream_detector.dev.simulate import simulate
from tests.harness import ROOT

CLI = [sys.executable, "-m", "stream_detector.cli"]
TRAIN_CLI = [sys.executable, "-m", "training.cli"]


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=str(ROOT), timeout=300, **kw)


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = simulate(40, seed=321)
    hourly, minute = d / "hourly.csv", d / "minute.csv"
    data.write_csv(str(hourly), granularity="hour")
    data.subset(list(range(8))).write_csv(str(minute), granularity="minute")
    return data, hourly, minute, d


def _score(inp, out) -> dict[str, dict]:
    proc = run([*CLI, "score", "--input", str(inp), "--output", str(out)])
    assert proc.returncode == 0, proc.stderr
    return {d["video_id"]: d for d in map(json.loads, out.read_text().splitlines())}


def test_score_writes_one_contract_line_per_input_video(week):
    data, hourly, _, d = week
    out = _score(hourly, d / "out.jsonl")
    assert set(out) == set(data.video_ids)
    for line in out.values():
        assert set(line) == {"video_id", "score", "flagged", "windows"}
        assert 0.0 <= line["score"] <= 1.0
        assert line["flagged"] == bool(line["windows"])
        for w in line["windows"]:
            assert set(w) == {"start", "end", "score", "metrics", "patterns"}
            assert w["start"].endswith(":00:00Z") and w["end"] > w["start"]
            assert w["metrics"] and w["patterns"]


def test_any_time_granularity_gives_the_same_scores(week):
    """Raw/minute rows and hourly rows of the same engagement are the same hourly series."""
    data, hourly, minute, d = week
    by_hour = _score(hourly, d / "h.jsonl")
    by_minute = _score(minute, d / "m.jsonl")
    for vid, line in by_minute.items():
        assert line == by_hour[vid]


def test_scores_rank_fakes_above_organic(week):
    data, hourly, _, d = week
    out = _score(hourly, d / "rank.jsonl")
    fake = [out[v]["score"] for v, y in zip(data.video_ids, data.label, strict=True) if y]
    organic = [out[v]["score"] for v, y in zip(data.video_ids, data.label, strict=True) if not y]
    wins = sum(f > o for f in fake for o in organic) / (len(fake) * len(organic))
    assert wins >= 0.85, f"pairwise AUC {wins:.2f}"


@pytest.mark.parametrize(
    "content, needle",
    [
        ("video_id,ts,views,likes\nv,2026-01-05T00:00:00Z,1,1\n", "missing column"),
        ("video_id,ts,views,likes,comments,shares\nv,not-a-time,1,1,0,0\n", "unparsable ts"),
        ("video_id,ts,views,likes,comments,shares\nv,2026-01-05T00:00:00Z,-4,1,0,0\n", "negative"),
        ("video_id,ts,views,likes,comments,shares\nv,2026-01-05T00:00:00Z,abc,1,0,0\n", "bad row"),
        ("", "empty"),
    ],
)
def test_bad_input_file_is_one_line_and_exit_2(tmp_path, content, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    proc = run([*CLI, "score", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["score", "--input", "/nonexistent.csv", "--output", "/tmp/x.jsonl"],
        ["score", "--output", "/tmp/x.jsonl"],
        ["score", "--input", "x.csv", "--output", "o.jsonl", "--batch-size", "0"],
        ["score", "--input", "x.csv", "--output", "o.jsonl", "--model", "/nonexistent.onnx"],
        ["frobnicate"],
        ["demo", "--videos", "3"],
        ["replay"],
        ["score", "--input", "x.csv", "--output", "o.jsonl", "--target-fpr", "1.5"],
        ["score", "--input", "x.csv", "--output", "o.jsonl", "--target-fpr", "many"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args):
    proc = run([*CLI, *args])
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_target_fpr_picks_the_offline_operating_point(week):
    """A looser target: a lower threshold, at least as many videos flagged."""
    _, hourly, _, d = week
    counts, used = [], []
    for target in ("0.005", "0.2"):
        out = d / f"t{target}.jsonl"
        proc = run([*CLI, "score", "--input", str(hourly), "--output", str(out), "--target-fpr", target, "--explain"])
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        counts.append(sum(x["flagged"] for x in lines))
        thresholds = {x["threshold"] for x in lines}
        assert len(thresholds) == 1
        used.append(thresholds.pop())
    assert counts[0] <= counts[1] and used[0] > used[1]


@pytest.mark.parametrize("args", [["all", "--epochs", "0"], ["all", "--compare", "tcn,bogus"], ["nope"]])
def test_train_cli_bad_arguments_exit_2(args):
    proc = run([*TRAIN_CLI, *args])
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_train_cli_simulate_writes_csv_and_truth(tmp_path):
    out, truth = tmp_path / "s.csv", tmp_path / "t.jsonl"
    proc = run([*TRAIN_CLI, "simulate", "--videos", "12", "--seed", "5", "--output", str(out), "--truth", str(truth)])
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines()[0] == "video_id,ts,views,likes,comments,shares,published_at"
    assert len(truth.read_text().splitlines()) == 12


@pytest.mark.parametrize(("env", "needle"), [
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:notaport", "REDIS_URL": "redis://127.0.0.1:6379"}, "KAFKA_BOOTSTRAP_SERVERS"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
    ({"DETECTOR_INFERENCE_THREADS": "two"}, "DETECTOR_INFERENCE_THREADS"),
])
def test_a_misconfigured_worker_is_one_line_and_exit_2(env, needle):
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_") and k not in
            ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    proc = run([*CLI, "worker"], env={**base, **env})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_score_reads_only_its_own_settings(week):
    """An unrelated bad variable does not stop `score`; its own (the heap policy) is checked."""
    import os

    _, hourly, _, d = week
    ok = run([*CLI, "score", "--input", str(hourly), "--output", str(d / "o.jsonl")],
             env={**os.environ, "DETECTOR_TOPIC_PARTITIONS": "many"})
    assert ok.returncode == 0, ok.stderr
    bad = run([*CLI, "score", "--input", str(hourly), "--output", str(d / "o.jsonl")],
              env={**os.environ, "DETECTOR_HEAP_KEEP_MB": "lots"})
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "DETECTOR_HEAP_KEEP_MB" in bad.stderr
