"""The monitoring contract, live: a real Prometheus scrapes a real worker under load.

One worker runs on the session's embedded broker and Redis; a Prometheus server (Debian's
``prometheus`` package) on loopback scrapes it every second with the job name the dashboard
and the alert rules select, and loads ``monitoring/alerts.yml``. A simulated stream is
produced in two phases a few scrapes apart (the second one with invalid and late events), so
counters move between scrapes and ``rate()`` windows see increases. Then:

* every metric name a dashboard query or an alert expression reads is exported by the
  worker (or is Prometheus' own ``up``);
* every dashboard query returns data (``$__rate_interval`` is 15 s here, against a 1 s
  scrape); a query with ``offset`` (yesterday's flags) cannot have data on a fresh server,
  so it must evaluate, and return data once the offset is removed;
* under load, every dashboard query shows a number (not only NaN) at some point;
* every counter series exists from the first scrape (rate() misses the first increment of
  a series that appears with it), and each Redis operation the worker times has its error
  counter;
* every alert expression evaluates without error and each of its vector selectors returns
  data (alerts are empty while they do not fire); Prometheus' rule manager evaluates every
  rule with health "ok".

Without the ``prometheus`` binary the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from stream_detector.dev.simulate import simulate
from tests import deploy_queries as dq
from tests.harness import ROOT, Deployment, WorkerProcess, free_port

PROMETHEUS_CONFIG = ROOT / "monitoring" / "prometheus.yml"
SCRAPE_S = 1.0
RATE_INTERVAL = "15s"
VIDEOS = 40
SEED = 20260105
DEADLINE_S = 90.0  # everything the fixture waits for, in total

_OFFSET = re.compile(r"\s+offset\s+-?(?:\d+(?:ms|[smhdwy]))+")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus is not installed (apt-get install -y prometheus)"
        if _in_ci():
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return path


def _worker_job_name() -> str:
    """The job name the shipped scrape config gives the workers (a contract with the queries)."""
    jobs = [c["job_name"] for c in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]]
    workers = [j for j in jobs if j != "prometheus"]
    assert len(workers) == 1, f"expected one worker job in {PROMETHEUS_CONFIG}: {jobs}"
    return workers[0]


def _without_offsets(expr: str) -> str:
    return _OFFSET.sub("", expr)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, what: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"out of time before: {what}")
        return left


# --------------------------------------------------------------------------------------
# A Prometheus server on loopback


class PrometheusServer:
    def __init__(self, binary: str, workdir: Path, *, job: str, target: str) -> None:
        self.port = free_port()
        self.job = job
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_S:g}s",
                "scrape_timeout": f"{SCRAPE_S:g}s",
                "evaluation_interval": f"{SCRAPE_S:g}s",
            },
            "rule_files": [str(dq.ALERTS)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(workdir),
        )

    def log_tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def api(self, path: str, **params: str) -> object:
        status, body = self._get(f"/api/v1/{path}", params)
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise PromQLError(f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float) -> list[dict]:
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert isinstance(data, dict)
        if data["resultType"] == "scalar":  # e.g. a bare number: one sample, not a vector
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1s")
        assert isinstance(data, dict)
        return data["result"]

    def wait_ready(self, deadline: Deadline) -> None:
        while True:
            deadline.left(f"Prometheus ready\n{self.log_tail()}")
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self._get("/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr, time.time())
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, deadline: Deadline) -> None:
        """Until ``expr`` (one sample) equals ``expected``, then three more scrapes."""
        last = None
        while True:
            deadline.left(f"Prometheus to see {expr} == {expected} (last {last})\n{self.log_tail()}")
            last = self.scalar(expr)
            if last is not None and last == expected:
                break
            time.sleep(SCRAPE_S / 4)
        time.sleep(3 * SCRAPE_S + 0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()


class PromQLError(Exception):
    pass


# --------------------------------------------------------------------------------------
# The load


def _encode(e: dict) -> tuple[str, bytes]:
    return e["video_id"], json.dumps(e, separators=(",", ":")).encode()


def _invalid_and_late(video_id: str, first_ts: int) -> list[tuple[str, bytes]]:
    """A few records for the dead-letter topic, one per common reason, plus one late event."""
    return [
        (video_id, b"{not json"),
        (video_id, b"[1, 2, 3]"),
        (video_id, json.dumps({"ts": first_ts, "views": 1}).encode()),
        (video_id, json.dumps({"video_id": video_id, "ts": first_ts, "views": -3}).encode()),
        (video_id, json.dumps({"video_id": video_id, "ts": "yesterday", "views": 1}).encode()),
        # Far behind the partition's watermark after phase 1: dead-lettered as late.
        (video_id, json.dumps({"video_id": video_id, "ts": first_ts, "views": 2}).encode()),
    ]


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Before the broker and Redis fixtures, so a skip starts neither."""
    return _prometheus_binary()


def _with_accounts(events: list[dict]) -> list[dict]:
    """The week plus, for the user level's panels (event 1.1), one like per account event: 60
    accounts each liking several videos, in time order with the rest."""
    import zlib

    extra = []
    for k, e in enumerate([e for e in events if e.get("likes")][:3000]):
        extra.append({"video_id": e["video_id"], "ts": e["ts"], "likes": 1, "user_id": f"acc-{k % 60}",
                      "channel_id": f"ch-{zlib.crc32(e['video_id'].encode()) % 7}"})
    return sorted(events + extra, key=lambda e: e["ts"])


@pytest.fixture(scope="module")
def live(prometheus_binary, kafka_bootstrap, redis_url, tmp_path_factory):
    binary = prometheus_binary
    job = _worker_job_name()
    workdir = tmp_path_factory.mktemp("monitoring-live")
    deadline = Deadline(DEADLINE_S)

    data = simulate(VIDEOS, seed=SEED)
    events = _with_accounts(list(data.iter_events()))
    half = len(events) // 2
    phase1 = [_encode(e) for e in events[:half]]
    phase2 = [_encode(e) for e in events[half:]]
    bad = _invalid_and_late(events[0]["video_id"], int(events[0]["ts"]))

    dep = Deployment(kafka_bootstrap, redis_url)
    dep.create_topics()
    worker = WorkerProcess(dep, workdir)
    prometheus = None
    try:
        worker.wait_ready(timeout_s=deadline.left("worker ready"))
        prometheus = PrometheusServer(binary, workdir, job=job, target=f"127.0.0.1:{worker.port}")
        prometheus.wait_ready(deadline)
        sel = f'{{job="{job}"}}'
        prometheus.wait_for(f"sum(up{sel})", 1.0, deadline)
        load_start = time.time()

        # Phase 1: half the week, then a few scrapes of the drained state.
        dep.produce(phase1)
        worker.wait_drained(timeout_s=deadline.left("phase 1 drained"))
        consumed = worker.metrics()["detector_events_consumed_total"]
        prometheus.wait_for(f"sum(detector_events_consumed_total{sel})", consumed, deadline)

        # Phase 2: the rest, with invalid and late events, so dead-letter series move too.
        dep.produce(phase2 + bad)
        worker.wait_drained(timeout_s=deadline.left("phase 2 drained"))
        exported = worker.metrics()
        prometheus.wait_for(
            f"sum(detector_events_consumed_total{sel}) + sum(detector_events_invalid_total{sel})",
            exported["detector_events_consumed_total"] + exported["detector_events_invalid_total"],
            deadline,
        )
        yield {
            "prometheus": prometheus,
            "worker": worker,
            "job": job,
            "exported": exported,
            "names": {key.split("{", 1)[0] for key in exported},
            "bad": len(bad),
            "start": load_start,
            "at": time.time(),
        }
    finally:
        if prometheus is not None:
            prometheus.stop()
        worker.terminate()


def _evaluate(prometheus: PrometheusServer, expr: str, at: float) -> tuple[list[dict] | None, str]:
    try:
        return prometheus.query(expr, at), ""
    except PromQLError as exc:
        return None, str(exc)


def _report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n" + "\n".join(f"  - {p}" for p in problems)


# --------------------------------------------------------------------------------------
# Tests


def test_the_load_reached_prometheus(live):
    """Sanity: the scraped numbers are the worker's, and the load moved what it should."""
    p, at, ex = live["prometheus"], live["at"], live["exported"]
    sel = f'{{job="{live["job"]}"}}'
    seen = {
        name: float(p.query(f"sum({name}{sel})", at)[0]["value"][1])
        for name in (
            "detector_events_consumed_total",
            "detector_events_invalid_total",
            "detector_events_late_total",
            "detector_flags_total",
            "detector_end_to_end_latency_seconds_count",
            "detector_inference_latency_seconds_count",
        )
    }
    for name, value in seen.items():
        assert value == ex[name], f"{name}: Prometheus has {value}, the worker {ex[name]}"
    assert seen["detector_events_consumed_total"] > 10_000
    assert seen["detector_events_invalid_total"] == live["bad"]
    assert seen["detector_events_late_total"] == 1
    assert seen["detector_flags_total"] > 0, "the simulated week has fakes: flags must exist"
    assert seen["detector_end_to_end_latency_seconds_count"] > 0
    assert p.query(f"detector_ready{sel} == 1", at), "the worker was not ready when scraped"


def test_every_queried_metric_name_is_exported_by_the_worker(live):
    exported = live["names"] | {"up"}
    missing = sorted(
        f"{q.source} {q.name!r}: {name}"
        for q in dq.all_queries(rate_interval=RATE_INTERVAL)
        for name in dq.metric_names(q.expr)
        if name not in exported
    )
    assert not missing, _report(missing, "metric names are not exported by the worker")


def test_every_dashboard_query_returns_data(live):
    p, at = live["prometheus"], live["at"]
    queries = dq.dashboard_queries(rate_interval=RATE_INTERVAL)
    assert len(queries) >= 20
    problems = []
    for q in queries:
        result, error = _evaluate(p, q.expr, at)
        if error:
            problems.append(f"{q.name}: error {error} in {q.expr}")
            continue
        if _without_offsets(q.expr) != q.expr:
            # Data from a day ago cannot exist on a fresh server: check the same query now.
            result, error = _evaluate(p, _without_offsets(q.expr), at)
            if error:
                problems.append(f"{q.name}: error {error} without its offset")
                continue
        if not result:
            problems.append(f"{q.name}: no data for {q.expr}")
    assert not problems, _report(problems, "dashboard queries return no data")


def test_every_dashboard_query_shows_a_number_under_load(live):
    """A panel that only ever shows NaN (e.g. a quantile of a histogram nothing observes) is
    as useless as an empty one: over the load, each query has at least one finite value."""
    p = live["prometheus"]
    problems = []
    for q in dq.dashboard_queries(rate_interval=RATE_INTERVAL):
        series = p.query_range(_without_offsets(q.expr), live["start"], live["at"])
        values = [float(v) for s in series for _, v in s["values"]]
        if not any(math.isfinite(v) for v in values):
            problems.append(f"{q.name}: {len(values)} samples, none finite, for {q.expr}")
    assert not problems, _report(problems, "dashboard queries never show a number")


def test_labelled_counters_exist_before_their_first_increment(live):
    """rate() and increase() miss a counter's first increment when its series appears with
    it, so panels and alerts (Redis errors, dead letters, flags) would miss it: every counter
    series must already exist at the first scrape, and every Redis operation the worker
    times must have its error counter."""
    p, job = live["prometheus"], live["job"]

    def series(expr: str, at: float) -> set[tuple]:
        return {tuple(sorted(s["metric"].items())) for s in p.query(expr, at)}

    counters = f'{{__name__=~"detector_.+_total", job="{job}"}}'
    late = series(counters, live["at"]) - series(counters, live["start"])
    problems = [f"{dict(s)} appeared after the first scrape" for s in sorted(late)]
    sel = f'{{job="{job}"}}'
    timed = {s["metric"]["operation"] for s in p.query(f"detector_redis_latency_seconds_count{sel}", live["at"])}
    counted = {s["metric"]["operation"] for s in p.query(f"detector_redis_errors_total{sel}", live["at"])}
    problems += [
        f'detector_redis_errors_total{{operation="{op}"}} is missing (the operation is timed)'
        for op in sorted(timed - counted)
    ]
    assert not problems, _report(problems, "counter series are not created before use")


def test_every_alert_expression_evaluates_and_its_selectors_return_data(live):
    p, at = live["prometheus"], live["at"]
    queries = dq.alert_queries()
    assert len(queries) >= 8
    problems = []
    for q in queries:
        _, error = _evaluate(p, q.expr, at)
        if error:
            problems.append(f"{q.name}: error {error}")
        selectors = dq.vector_selectors(q.expr)
        if not selectors:
            problems.append(f"{q.name}: no vector selector found in {q.expr!r}")
        for sel in selectors:
            result, error = _evaluate(p, sel, at)
            if error:
                problems.append(f"{q.name}: selector {sel}: error {error}")
            elif not result:
                problems.append(f"{q.name}: selector {sel} has no data")
    assert not problems, _report(problems, "alert expressions fail or read missing series")


def test_prometheus_evaluates_every_alert_rule_without_error(live):
    p = live["prometheus"]
    expected = {q.name for q in dq.alert_queries()}
    deadline = Deadline(15.0)
    while True:
        rules = [r for g in p.api("rules", type="alert")["groups"] for r in g["rules"]]
        evaluated = [r for r in rules if not r.get("lastEvaluation", "").startswith("0001-")]
        if {r["name"] for r in evaluated} >= expected:
            break
        deadline.left(f"every rule evaluated; so far {sorted(r['name'] for r in evaluated)}")
        time.sleep(SCRAPE_S)
    assert {r["name"] for r in rules} == expected
    bad = [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok"]
    assert not bad, _report(bad, "alert rules do not evaluate in Prometheus")
