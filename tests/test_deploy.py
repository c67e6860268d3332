"""Static checks of the deployment and monitoring assets (issue 4). Offline and quick.

- Kubernetes: every manifest of k8s/base, and the `kustomize build` of the base and each
  overlay, validates against the pinned Kubernetes schema (kubernetes-validate, strict);
  the CRDs (ServiceMonitor, PrometheusRule, ScaledObject) against minimal schemas here.
- docker-compose.yml validates against the Compose Specification schema
  (tests/data/compose-spec.json, vendored from the PyPI package check-jsonschema 0.39.0,
  Apache-2.0: tests/data/LICENSE.compose-spec) and wires the stack together.
- promtool (Debian package `prometheus`): rules, config, the alert unit tests in
  monitoring/alerts_test.yml and the syntax of every dashboard query.
- Dockerfile: installs exactly pyproject's runtime dependencies, no torch, no compiler in
  the final stage, non-root, HEALTHCHECK on /healthz.
- Every metric name in the dashboard and alerts exists in stream_detector.metrics.Metrics.

External tools (promtool; kubectl or kustomize) are skipped when absent, except under
CI=true, where their absence fails the test.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

try:
    import deploy_queries as dq
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import deploy_queries as dq

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
MONITORING = ROOT / "monitoring"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

# Kubernetes version the manifests must be valid for (kubernetes-validate ships its schemas).
K8S_VERSION = "1.32.0"
OVERLAYS = ["base", "overlays/production", "overlays/keda"]
NAMESPACE = "stream-detector"
APP = "stream-detector"
WEB_PORT = 6066
EVENTS_TOPIC = "engagement-events"
TOPICS = {"engagement-events", "engagement-flags", "engagement-events-dlq"}
MODEL_TOPICS = {"engagement-flags-shadow", "engagement-models"}  # shadow flags, model registry
ACCOUNT_TOPICS = {"engagement-account-flags"}  # the user level's flags
MODERATION_TOPICS = {"engagement-verdicts", "engagement-flags-review"}  # verdicts in, review out
CONSUMER_GROUP = "stream-detector"
BUILD_ONLY_PACKAGES = {"gcc", "g++", "make", "build-essential", "libc6-dev", "clang", "cmake"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_tool(name: str, how: str) -> None:
    message = f"{name} is not installed ({how})"
    if _in_ci():
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


# --------------------------------------------------------------------------------------
# Helpers: YAML documents, kustomize


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _base_files() -> list[Path]:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [K8S / "base" / r for r in kust["resources"]]


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


_BUILD_CACHE: dict[str, list[dict[str, Any]]] = {}


def _kustomize_build(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _BUILD_CACHE:
        cmd = _kustomize_command()
        if cmd is None:
            _require_tool("kustomize", "kubectl (which embeds kustomize) or kustomize")
        proc = subprocess.run(
            [*cmd, str(K8S / overlay)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"kustomize build {overlay} failed:\n{proc.stderr}"
        _BUILD_CACHE[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _BUILD_CACHE[overlay]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------------------
# Minimal schemas of the custom resources (Kubernetes' schemas do not have them)

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": _STR_MAP},
}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": _STR_MAP},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "properties": {
                            "matchNames": {"type": "array", "items": {"type": "string"}}
                        },
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "oneOf": [
                                            {"required": ["alert"]},
                                            {"required": ["record"]},
                                        ],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": _STR_MAP,
                                            "annotations": _STR_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "advanced": {"type": "object"},
                    "fallback": {"type": "object"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                # KEDA reads trigger metadata as strings only.
                                "metadata": _STR_MAP,
                                "authenticationRef": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _validate_resource(doc: dict[str, Any], where: str) -> None:
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[key])
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{where}: {e.message} (add a minimal schema to CRD_SCHEMAS)")


# --------------------------------------------------------------------------------------
# Kubernetes


def test_kubernetes_validator_is_not_vacuous():
    import kubernetes_validate

    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    typo = _one(_docs(K8S / "base" / "deployment.yaml"), "Deployment")
    typo = json.loads(json.dumps(typo))
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", _base_files(), ids=lambda p: p.name)
def test_base_manifest_validates(path: Path):
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        _validate_resource(doc, str(path.relative_to(ROOT)))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_build_validates(overlay: str):
    docs = _kustomize_build(overlay)
    for doc in docs:
        _validate_resource(doc, f"kustomize build k8s/{overlay}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Service") == 2
    for kind in (
        "Namespace",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ServiceAccount",
    ):
        assert kind in kinds, f"{overlay} lacks a {kind}"
    autoscalers = [k for k in kinds if k in ("HorizontalPodAutoscaler", "ScaledObject")]
    expected = ["ScaledObject"] if overlay.endswith("keda") else ["HorizontalPodAutoscaler"]
    assert autoscalers == expected, f"{overlay}: exactly one autoscaler, got {autoscalers}"
    has_secret = "Secret" in kinds
    assert has_secret == (not overlay.endswith("production")), (
        "production must not ship the placeholder Secret; base and keda do"
    )


def test_overlay_files_exist_and_patch_base_objects():
    base_ids = {(d["kind"], d["metadata"]["name"]) for p in _base_files() for d in _docs(p)}
    for overlay in OVERLAYS[1:]:
        directory = K8S / overlay
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for res in kust.get("resources", []):
            assert (directory / res).exists(), f"{overlay}: missing resource {res}"
        for patch in kust.get("patches", []):
            docs = (
                _docs(directory / patch["path"])
                if "path" in patch
                else [yaml.safe_load(patch["patch"])]
            )
            for doc in docs:
                ident = (doc["kind"], doc["metadata"]["name"])
                assert ident in base_ids, f"{overlay}: patch targets {ident}, not in k8s/base"


def _base(kind: str, name: str | None = None) -> dict[str, Any]:
    return _one([d for p in _base_files() for d in _docs(p)], kind, name)


def test_deployment_security_probes_and_resources():
    dep = _base("Deployment", APP)
    pod = dep["spec"]["template"]["spec"]
    assert (
        dep["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    (container,) = pod["containers"]
    csc = container["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert not csc["capabilities"].get("add")
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": WEB_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Writable paths under the read-only root: /tmp and the image's WORKDIR, both emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]]
    workdir = _dockerfile_final_stage_value("WORKDIR")
    assert workdir in mounts and "emptyDir" in volumes[mounts[workdir]]
    # Image user and pod user agree.
    assert _dockerfile_final_stage_value("USER").split(":")[0] == str(psc["runAsUser"])
    # Settings: ConfigMap via envFrom, Redis URL from the Secret.
    assert container["envFrom"] == [{"configMapRef": {"name": "stream-detector-config"}}]
    (redis_env,) = [e for e in container["env"] if e["name"] == "REDIS_URL"]
    ref = redis_env["valueFrom"]["secretKeyRef"]
    secret = _base("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    assert container["image"] == "stream-detector"
    images = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
    assert [i["name"] for i in images] == ["stream-detector"]


def test_namespace_enforces_restricted_pod_security():
    ns = _base("Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _settings_env_names() -> set[str]:
    from stream_detector.config import Settings

    return set(Settings.env_names().values())


def _assert_settings(env: dict[str, Any], where: str) -> None:
    from stream_detector.config import Settings

    unknown = set(env) - _settings_env_names()
    assert not unknown, f"{where}: not a setting of stream_detector/config.py: {sorted(unknown)}"
    Settings.from_env({k: str(v) for k, v in env.items()})  # every value parses


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_real_settings_and_scaling_fits_partitions(overlay: str):
    docs = _kustomize_build(overlay)
    data = _one(docs, "ConfigMap", "stream-detector-config")["data"]
    _assert_settings(data, f"{overlay} ConfigMap")
    assert "REDIS_URL" not in data, "REDIS_URL belongs in the Secret"
    assert data["DETECTOR_EVENTS_TOPIC"] == EVENTS_TOPIC
    assert data["DETECTOR_CONSUMER_GROUP"] == CONSUMER_GROUP
    assert int(data["DETECTOR_WEB_PORT"]) == WEB_PORT and data["DETECTOR_WEB_HOST"] == "0.0.0.0"
    partitions = int(data["DETECTOR_TOPIC_PARTITIONS"])
    dep = _one(docs, "Deployment", APP)
    if overlay.endswith("keda"):
        so = _one(docs, "ScaledObject", APP)
        assert so["spec"]["scaleTargetRef"]["name"] == APP
        assert so["spec"]["minReplicaCount"] >= 2, "keep two workers for availability"
        assert so["spec"]["maxReplicaCount"] <= partitions, "replicas beyond partitions idle"
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["topic"] == data["DETECTOR_EVENTS_TOPIC"]
        assert meta["consumerGroup"] == data["DETECTOR_CONSUMER_GROUP"]
        assert meta["bootstrapServers"] == data["KAFKA_BOOTSTRAP_SERVERS"]
        assert int(meta["lagThreshold"]) > 0
        assert meta.get("allowIdleConsumers", "false") == "false"
    else:
        hpa = _one(docs, "HorizontalPodAutoscaler", APP)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": APP,
        }
        assert (
            2 <= hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
        )
        assert hpa["spec"]["maxReplicas"] <= partitions, "replicas beyond partitions idle"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
    pdb = _one(docs, "PodDisruptionBudget", APP)
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_services_and_servicemonitor_select_the_workers():
    dep = _base("Deployment", APP)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    services = [d for p in _base_files() for d in _docs(p) if d["kind"] == "Service"]
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
        assert [(p["name"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("http", "http")]
    sm = _base("ServiceMonitor", APP)
    selected = [
        s
        for s in services
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, "the ServiceMonitor must select exactly one Service"
    (metrics_svc,) = selected
    # Unready workers must still be scraped (detector_ready == 0 alert).
    assert metrics_svc["spec"].get("publishNotReadyAddresses") is True
    # job label = the Service's label named by jobLabel = what dashboard and alerts select.
    assert metrics_svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "stream-detector"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"


def test_prometheusrule_is_generated_from_alerts_yml():
    text = (K8S / "base" / "prometheusrule.yaml").read_text()
    regenerate = "regenerate: .venv/bin/python tests/deploy_queries.py prometheusrule > k8s/base/prometheusrule.yaml"
    (doc,) = _docs(K8S / "base" / "prometheusrule.yaml")
    assert doc["spec"]["groups"] == dq.load_alert_groups(), (
        f"PrometheusRule differs from monitoring/alerts.yml; {regenerate}"
    )
    assert text == dq.prometheus_rule_yaml(), (
        f"PrometheusRule is not the generator's output; {regenerate}"
    )


# --------------------------------------------------------------------------------------
# docker compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_validates_against_compose_spec():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # and the schema is not vacuous
    bad = {"services": {"x": {"image": "a", "ports": {"not": "a list"}, "restart_policy": 1}}}
    assert list(validator.iter_errors(bad))


def test_compose_stack_is_wired():
    compose = _compose()
    services = compose["services"]
    assert {
        "kafka",
        "kafka-init",
        "redis",
        "worker-1",
        "worker-2",
        "prometheus",
        "grafana",
        "replay",
    } <= services.keys()

    # Every image pinned to a version (the locally built one excepted).
    for name, svc in services.items():
        image = svc.get("image", "")
        if "build" in svc:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:7")

    # Kafka: KRaft single node, healthcheck.
    kenv = services["kafka"]["environment"]
    assert kenv["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in kenv["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "healthcheck" in services["kafka"] and "healthcheck" in services["redis"]

    # Topics: created by kafka-init; events partitions == the workers' setting.
    script = "\n".join(services["kafka-init"]["command"])
    created = dict(re.findall(r"^\s*create\s+(\S+)\s+(\d+)", script, re.M))
    assert set(created) == TOPICS | MODEL_TOPICS | ACCOUNT_TOPICS | MODERATION_TOPICS
    # ...and exactly the topics the worker itself would create (stream_detector.topics)
    from stream_detector.config import Settings
    from stream_detector.topics import deployment_topics

    assert set(created) == {spec.name for spec in deployment_topics(Settings())}
    assert re.search(r"^\s*create\s+engagement-models\s+1\s+cleanup\.policy=compact", script, re.M), (
        "the model registry must be one compacted partition"
    )
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"

    # Two workers in one consumer group, waiting for healthy deps and created topics.
    workers = [services["worker-1"], services["worker-2"]]
    bootstrap = (
        f"kafka:{kenv['KAFKA_ADVERTISED_LISTENERS'].split('PLAINTEXT://kafka:')[1].split(',')[0]}"
    )
    for w in workers:
        env = w["environment"]
        _assert_settings(env, "compose worker")
        assert env["DETECTOR_CONSUMER_GROUP"] == CONSUMER_GROUP
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DETECTOR_WEB_HOST"] == "0.0.0.0"
        assert int(env["DETECTOR_TOPIC_PARTITIONS"]) == int(created[env["DETECTOR_EVENTS_TOPIC"]])
        assert {
            env["DETECTOR_EVENTS_TOPIC"],
            env["DETECTOR_FLAGS_TOPIC"],
            env["DETECTOR_DLQ_TOPIC"],
        } == TOPICS
        assert {env["DETECTOR_SHADOW_FLAGS_TOPIC"], env["DETECTOR_CONTROL_TOPIC"]} == MODEL_TOPICS
        assert {env["DETECTOR_ACCOUNT_FLAGS_TOPIC"]} == ACCOUNT_TOPICS
        assert {env["DETECTOR_VERDICTS_TOPIC"], env["DETECTOR_REVIEW_TOPIC"]} == MODERATION_TOPICS
        deps = w["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["kafka-init"]["condition"] == "service_completed_successfully"
        assert w["build"]["context"] == "." and w.get("command") is None  # image CMD: worker
    assert len({json.dumps(w["environment"], sort_keys=True) for w in workers}) == 1

    # Replay: optional profile, the agreed command.
    replay = services["replay"]
    assert replay["profiles"] == ["replay"]
    assert replay["command"] == ["replay", "--simulate", "500", "--rate", "2000"]
    assert replay["healthcheck"] == {"disable": True}

    # Bind mounts point at files in the repo.
    for name in ("prometheus", "grafana"):
        for vol in services[name]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"


def test_prometheus_scrapes_the_compose_workers():
    compose = _compose()["services"]
    cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "stream-detector"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {
        f"{n}:{compose[n]['environment']['DETECTOR_WEB_PORT']}" for n in ("worker-1", "worker-2")
    }
    assert targets == expected
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert cfg["rule_files"] == ["alerts.yml"]
    mounts = compose["prometheus"]["volumes"]
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_grafana_provisioning_matches_compose():
    compose = _compose()["services"]
    ds = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    prom_port = compose["prometheus"]["ports"][0].split(":")[-1]
    assert source["url"] == f"http://prometheus:{prom_port}"
    prov = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/stream-detector.yml").read_text()
    )
    (provider,) = prov["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/stream-detector.json"


# --------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_stages() -> list[dict[str, Any]]:
    """[{name, base, instructions: [(INSTR, args)]}] with continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[dict[str, Any]] = []
    args: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if instr == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(
                {"name": parts[2] if len(parts) > 2 else None, "base": base, "instructions": []}
            )
            continue
        stages[-1]["instructions"].append((instr, rest))
    return stages


def _dockerfile_final_stage_value(instr: str) -> str:
    values = [a for i, a in _dockerfile_stages()[-1]["instructions"] if i == instr]
    assert values, f"final stage has no {instr}"
    return values[-1]


def _runtime_dependencies() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]


def test_dockerfile_final_stage_is_slim_non_root_and_has_no_build_tools():
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build"
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final["base"]), final["base"]
    instructions = final["instructions"]
    for instr, args in instructions:
        if instr == "RUN":
            assert "pip install" not in args, "the final stage installs nothing with pip"
            assert "apt-get install" not in args, f"no packages in the final stage: {args}"
            words = set(re.findall(r"[\w+.-]+", args))
            assert not words & BUILD_ONLY_PACKAGES, f"build tools in the final stage: {args}"
        if instr == "COPY" and "--from=" in args:
            src = shlex.split(args)
            assert src[0] == "--from=builder" and src[1:] == ["/opt/venv", "/opt/venv"], args
    user = _dockerfile_final_stage_value("USER").split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "numeric non-root USER (runAsNonRoot)"
    assert json.loads(_dockerfile_final_stage_value("ENTRYPOINT")) == ["stream-detector"]
    assert json.loads(_dockerfile_final_stage_value("CMD")) == ["worker"]
    health = _dockerfile_final_stage_value("HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert _dockerfile_final_stage_value("EXPOSE") == str(WEB_PORT)
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "stream-detector" in scripts


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in _dockerfile_stages()[-1]["instructions"]:
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_dockerfile_env_defaults_are_settings():
    env = {
        k: v
        for k, v in _dockerfile_env().items()
        if k.startswith("DETECTOR_") or k in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
    }
    _assert_settings(env, "Dockerfile ENV")
    assert env["DETECTOR_WEB_HOST"] == "0.0.0.0"
    assert env["DETECTOR_WEB_PORT"] == str(WEB_PORT)
    # The shipped model is package data: the image must not point elsewhere (a path into a
    # COPY of the repository's models/ was a symlink target once, dangling in the image).
    assert "DETECTOR_MODEL_PATH" not in env


def test_shipped_model_and_flag_schema_are_package_data():
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["stream_detector"]
    package = ROOT / "stream_detector"
    for path in (package / "models" / "default.onnx", package / "models" / "MODEL_CARD.md",
                 package / "flag.schema.json"):
        assert path.is_file() and not path.is_symlink(), path
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in package_data), f"{rel} is not package data"
    from stream_detector.config import DEFAULT_MODEL_PATH
    from stream_detector.flags import SCHEMA_PATH

    assert (package / "models" / "default.onnx").resolve() == DEFAULT_MODEL_PATH
    assert (package / "flag.schema.json").resolve() == SCHEMA_PATH
    # one copy of each: the repository's documented paths are links to the package's files
    assert (ROOT / "schemas" / "flag.schema.json").resolve() == SCHEMA_PATH
    assert (ROOT / "models" / "default.onnx").resolve() == DEFAULT_MODEL_PATH


def test_dockerfile_copies_exist_and_pass_dockerignore():
    ignore = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore is an allow-list"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    sources = []
    for stage in _dockerfile_stages():
        for instr, args in stage["instructions"]:
            if instr == "COPY" and "--from" not in args:
                sources += [s.rstrip("/") for s in shlex.split(args)[:-1]]
    assert set(sources) == allowed, "the .dockerignore allow-list must equal the COPY sources"
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"Dockerfile copies {src}, which is not in the repo"
        if path.is_dir():
            assert any(path.iterdir()), f"{src}/ is empty (git does not keep empty folders)"
    assert not {"training", "tests", ".venv", "bench"} & allowed


def test_dockerfile_installs_exactly_the_runtime_dependencies():
    builder = _dockerfile_stages()[0]
    runs = [a for i, a in builder["instructions"] if i == "RUN"]
    # 1) Requirements come from pyproject: run the Dockerfile's own extraction snippet.
    (snippet_run,) = [r for r in runs if "tomllib" in r]
    m = re.search(r'python -c "([^"]+)"', snippet_run)
    assert m, snippet_run
    out = subprocess.run(
        [sys.executable, "-c", m.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    deps = _runtime_dependencies()
    assert [d.replace(" ", "") for d in deps] == out
    assert "'project']['dependencies']" in m.group(1), "only [project].dependencies, no extras"
    # 2) Every pip install is one of: pip itself, that requirements file, the package w/o deps.
    allowed = {
        ("--upgrade", "pip"),
        ("-r", "/tmp/requirements.txt"),
        ("--no-deps", "."),
    }
    installs = [
        tuple(shlex.split(cmd.split("pip install", 1)[1]))
        for r in runs
        for cmd in r.split("&&")
        if "pip install" in cmd
    ]
    assert installs, "the builder installs with pip"
    for args in installs:
        assert args in allowed, (
            f"unexpected pip install {args} (install only pyproject's runtime deps)"
        )
    assert ("-r", "/tmp/requirements.txt") in installs and ("--no-deps", ".") in installs
    # 3) No torch: not a runtime dependency, and the build asserts it is not installed.
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & {"torch", "onnx", "matplotlib", "scikit-learn"}, "training deps in runtime"
    assert any("find_spec('torch') is not None" in r for r in runs)
    assert any("pip check" in r for r in runs)
    assert all("torch" not in r.replace("find_spec('torch')", "") for r in runs)


# --------------------------------------------------------------------------------------
# Prometheus: promtool


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        _require_tool("promtool", "apt-get install -y prometheus")
    return path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_promtool_check_rules():
    proc = _run([_promtool(), "check", "rules", "alerts.yml"], MONITORING)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config():
    proc = _run([_promtool(), "check", "config", "prometheus.yml"], MONITORING)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests(tmp_path: Path):
    # promtool compares annotations as well; test the firing logic on a copy without them.
    groups = dq.load_alert_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(MONITORING / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = _run([_promtool(), "test", "rules", "alerts_test.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname:\s*(\w+)", (MONITORING / "alerts_test.yml").read_text()))
    assert tested == {q.name for q in dq.alert_queries()}, "every alert has a unit test"


def test_dashboard_queries_are_valid_promql(tmp_path: Path):
    queries = dq.dashboard_queries()
    rules = [{"record": f"dashboard_check_{i}", "expr": q.expr} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _run([_promtool(), "check", "rules", str(path)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------
# Metric names: dashboard and alerts use only what the worker exports


def _exported_names() -> set[str]:
    from stream_detector.metrics import Metrics

    suffixes = {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "info": ["_info"],
    }
    names = set()
    for family in Metrics().registry.collect():
        for suffix in suffixes[family.type]:
            names.add(family.name + suffix)
    return names


def test_metric_name_extraction():
    expr = (
        'sum by (le, operation) (rate(a_bucket{x="y"}[5m])) / ignoring(z) group_left(w) '
        'b offset 1d > bool 1e-3 and on() absent(c) or {__name__="d"} unless '
        'count_values("e", f) and topk(3, g[10m:1m]) and label_replace(h, "i", "$1", "j", "(.*)")'
    )
    assert dq.metric_names(expr) == {"a_bucket", "b", "c", "d", "f", "g", "h"}
    assert dq.render_grafana('rate(x{i=~"$instance"}[$__rate_interval])') == 'rate(x{i=~".*"}[1m])'


def test_every_query_uses_exported_metric_names():
    exported = _exported_names() | {"up"}
    used: set[str] = set()
    for q in dq.all_queries():
        names = dq.metric_names(q.expr)
        assert names, f"{q.source} {q.name}: no metric in {q.expr!r}"
        unknown = names - exported
        assert not unknown, (
            f"{q.source} {q.name}: {sorted(unknown)} not exported by stream_detector/metrics.py"
        )
        used |= names
    # and the dashboard shows every metric the worker exports
    families = {re.sub(r"_(total|bucket|sum|count|info|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count|info|created)$", "", n) for n in used}
    assert families - {"up"} <= shown, f"metrics on no panel: {sorted(families - shown)}"


def test_dashboard_structure():
    dash = dq.load_dashboard()
    assert dash["uid"] == "stream-detector"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource"
        and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    panels = dq.dashboard_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert 'job="stream-detector"' in t["expr"] and "$instance" in t["expr"], (
                p["title"],
                t["expr"],
            )
    joined = " ".join(q.raw for q in dq.dashboard_queries())
    for needle in (
        "detector_events_consumed_total",
        "detector_consumer_lag_messages",
        "histogram_quantile(0.99, sum by (le) (rate(detector_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(detector_inference_latency_seconds_bucket",
        "sum by (reason) (rate(detector_events_invalid_total",
        "detector_events_late_total",
        "sum by (severity) (rate(detector_flags_total",
        "sum by (pattern) (rate(detector_flag_patterns_total",
        "detector_redis_errors_total",
        "histogram_quantile(0.99, sum by (le, operation) (rate(detector_redis_latency_seconds_bucket",
        "detector_model_info",
        'count(up{job="stream-detector"',
        "detector_active_videos",
        "detector_inference_batch_size",
        "detector_consume_batch_size",
        "detector_ready",
    ):
        assert needle in joined, f"dashboard lacks {needle}"


def test_alerts_have_runbooks_and_cover_the_issue():
    rules = dq.alert_rules()
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), rule["alert"]
        assert len(ann.get("runbook", "").splitlines()) >= 3, f"{rule['alert']}: runbook text"
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert (
        "deriv(sum(max by (topic, partition) (detector_consumer_lag_messages))[10m:"
        in exprs["DetectorConsumerLagGrowing"]
    )
    assert "detector_events_invalid_total" in exprs["DetectorDeadLetterRateHigh"]
    assert (
        "offset 1d" in exprs["DetectorFlagsStopped"]
        and "offset 1d" in exprs["DetectorFlagsExploding"]
    )
    assert (
        "histogram_quantile(0.99" in exprs["DetectorEndToEndLatencyHigh"]
        and "> 1" in exprs["DetectorEndToEndLatencyHigh"]
    )
    assert "detector_redis_errors_total" in exprs["DetectorRedisErrors"]
    assert 'result="refused"' in exprs["DetectorModelReloadRefused"]
    assert "up{" in exprs["DetectorWorkerDown"] and "absent(" in exprs["DetectorNoWorkers"]
    assert "detector_ready == 0" in exprs["DetectorNotReady"]
