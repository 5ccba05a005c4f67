"""Deployment artefacts: Kubernetes manifests, the Grafana dashboard, Prometheus and the compose
profile `observability`.

No cluster runs here, so the manifests are checked two ways: every built-in kind against the
Kubernetes JSON schemas that ``kubernetes-validate`` ships (offline, strict: an unknown or
misspelt field fails), and the fields that matter against modstream's own settings (probe
paths and port, grace period above the shutdown grace, KEDA bounds, the secret reference).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from consumer.ops.metrics import Metrics
from consumer.settings import Settings
from tests.unit.deploy.test_compose import _setting_env_names
from tests.unit.ops.test_metrics import exported_names

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "modstream-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"

#: Kubernetes versions the manifests must validate against: an older supported one and the
#: newest schema the validator ships.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    """Every manifest by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in _docs(path):
            assert doc["kind"] not in found, f"two {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def config(resources: dict[str, dict[str, Any]]) -> dict[str, str]:
    data = resources["ConfigMap"]["data"]
    assert isinstance(data, dict)
    return {str(k): str(v) for k, v in data.items()}


@pytest.fixture(scope="module")
def settings(config: dict[str, str]) -> Settings:
    """The settings the ConfigMap gives a pod (they must parse)."""
    values = {k.removeprefix("MODSTREAM_").lower(): v for k, v in config.items()}
    return Settings.model_validate(values)


@pytest.fixture(scope="module")
def pod(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec = resources["Deployment"]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    assert isinstance(only, dict)
    return only


def input_partitions() -> int:
    """The input topic's partitions, as the compose stack creates it (the reference setup)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    script = "\n".join(compose["services"]["topics"]["command"])
    match = re.search(rf"create {re.escape(Settings().input_topic)} (\d+)", script)
    assert match
    return int(match.group(1))


# ---- Kubernetes ----------------------------------------------------------------------------


def test_the_expected_kinds_are_there(resources: dict[str, dict[str, Any]]) -> None:
    assert set(resources) == {"ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_builtin_kinds_validate_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in _docs(path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked field by field below
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misspelt_field(resources: dict[str, dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(resources["Deployment"]))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_configmap_keys_are_settings(config: dict[str, str], settings: Settings) -> None:
    known = _setting_env_names()
    unknown = [k for k in config if k.upper() not in known]
    assert not unknown, f"not modstream settings (a typo is silently ignored): {unknown}"
    assert settings.metrics_port > 0, "the probes need the health server"
    for secret in ("OPENAI_API_KEY", "MODSTREAM_OPENAI_API_KEY", "MODSTREAM_SASL_PASSWORD"):
        assert secret not in config, f"{secret} belongs in a Secret, not the ConfigMap"


def test_probes_hit_the_health_server(
    resources: dict[str, dict[str, Any]], container: dict[str, Any], settings: Settings
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == settings.metrics_port, probe
    # The readiness check waits up to 2 s for the broker; the probe must wait longer.
    assert container["readinessProbe"]["timeoutSeconds"] > 2
    annotations = resources["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_outlasts_the_shutdown_grace(pod: dict[str, Any], settings: Settings) -> None:
    # Drain (shutdown grace) + final commit and client close must end before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= settings.shutdown_grace_s + 10


def test_runs_as_the_images_non_root_user(pod: dict[str, Any], container: dict[str, Any]) -> None:
    user = re.findall(r"^USER\s+(\d+)", DOCKERFILE.read_text(), re.MULTILINE)[-1]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == int(user) != 0
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # A read-only root still needs a writable /tmp, and the tokenizer files baked in the image.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    assert "MODSTREAM_TIKTOKEN_CACHE=/opt/modstream/tiktoken" in DOCKERFILE.read_text()


def test_resources_are_requested_and_limited(container: dict[str, Any]) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_the_api_key_comes_from_a_secret_and_no_secret_is_committed(
    container: dict[str, Any],
) -> None:
    env = {e["name"]: e for e in container["env"]}
    key = env["OPENAI_API_KEY"]
    assert "value" not in key
    assert key["valueFrom"]["secretKeyRef"]["name"]
    assert key["valueFrom"]["secretKeyRef"]["key"]
    for name, entry in env.items():
        if re.search(r"KEY|PASSWORD|SECRET|TOKEN", name):
            assert "value" not in entry, f"{name} has a literal value"
    for path in K8S.iterdir():
        text = path.read_text()
        assert "kind: Secret" not in text, f"{path.name}: Secrets are created out of band"
        assert not re.search(r"sk-[A-Za-z0-9_-]{16,}", text), f"{path.name}: an API key?"


def test_rollout_and_disruption_budget(resources: dict[str, dict[str, Any]]) -> None:
    deployment = resources["Deployment"]
    assert "replicas" not in deployment["spec"], "replicas are KEDA's to set"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0, "a surge pod beyond the partitions would never be ready"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = resources["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_keda_scales_on_group_lag_within_the_partitions(
    resources: dict[str, dict[str, Any]], settings: Settings
) -> None:
    scaled = resources["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == (
        "Deployment",
        resources["Deployment"]["metadata"]["name"],
    )
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= input_partitions()
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert int(meta["lagThreshold"]) > 0
    assert meta["consumerGroup"] == settings.group_id
    assert meta["topic"] == settings.input_topic
    assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
    assert meta["offsetResetPolicy"] == settings.auto_offset_reset
    assert meta.get("allowIdleConsumers", "false") == "false"
    for key, value in meta.items():
        assert isinstance(value, str), f"KEDA trigger metadata values are strings: {key}"


# ---- dashboard, Prometheus, compose ----------------------------------------------------------


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _referenced(exprs: list[str]) -> set[str]:
    names = set()
    for expr in exprs:
        for found in re.findall(r"\bmodstream_\w+", expr):
            base = re.sub(r"(_duration_seconds)(_bucket|_sum|_count)$", r"\1", found)
            names.add(base)
    return names


def test_dashboard_has_a_panel_for_every_metric_and_no_unknown_one() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = _referenced(_exprs(dashboard))
    exported = exported_names(Metrics())
    assert exported - used == set(), "metrics without a panel"
    assert used - exported == set(), "panels querying metrics that do not exist"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )


def test_alert_rules_query_existing_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = _referenced(exprs)
    assert used <= exported_names(Metrics())
    assert {"modstream_circuit_state", "modstream_consumer_lag"} <= used


def test_compose_observability_profile() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("kafka", "topics", "fake-openai", "modstream"):
        assert "profiles" not in services[name], f"{name} must start without a profile"
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./deploy/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in config["rule_files"]
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    port = services["modstream"]["environment"]["MODSTREAM_METRICS_PORT"]
    assert target == f"modstream:{port}"
    grafana = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    dashboards_dir = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/modstream.yml").read_text()
    )["providers"][0]["options"]["path"]
    assert grafana["./deploy/grafana/modstream-dashboard.json"].startswith(dashboards_dir + "/")
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://prometheus:")
