"""docker-compose.yml cannot run here (no Docker), so check what can drift: names and wiring.

Every ``MODSTREAM_*`` variable it sets must be a real setting (a typo would be silently ignored
by pydantic-settings), and the topics it creates must be the ones modstream uses by default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from consumer.settings import Settings
from consumer.testing.fake_openai.config import ENV_PREFIX as FAKE_PREFIX
from consumer.testing.fake_openai.config import FakeConfig

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "NAME=value" form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _default(value: str) -> str:
    """``${VAR:-default}`` -> default; anything else unchanged."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def _setting_env_names() -> set[str]:
    """Every variable name Settings reads, upper-cased (it is case-insensitive)."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        names.add(f"MODSTREAM_{field_name}".upper())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
    return names


def test_services_and_images(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "topics", "fake-openai", "modstream"} <= set(services)
    kafka_image = services["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:4\.0\.\d+", kafka_image), kafka_image
    assert services["topics"]["image"] == kafka_image, "topics must use the broker's own tools"
    for name in ("fake-openai", "modstream"):
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/docker/Dockerfile"
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_kafka_is_single_node_kraft_with_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    for internal in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG"):
        assert env[f"KAFKA_{internal}_REPLICATION_FACTOR"] == "1"
    assert "kafka-broker-api-versions.sh" in str(kafka["healthcheck"]["test"])


def test_dependencies_wait_for_health_and_topics(services: dict[str, dict[str, Any]]) -> None:
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    deps = services["modstream"]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["topics"]["condition"] == "service_completed_successfully"
    assert deps["fake-openai"]["condition"] == "service_healthy"
    assert "healthcheck" in services["fake-openai"]


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services["modstream"]["command"] == ["consume"]
    fake = services["fake-openai"]["command"]
    assert fake[0] == "fake-openai"
    assert fake[fake.index("--host") + 1] == "0.0.0.0"
    assert fake[fake.index("--port") + 1] == "8400"


def test_modstream_env_names_are_settings(services: dict[str, dict[str, Any]]) -> None:
    known = _setting_env_names()
    fake_fields = {f"{FAKE_PREFIX}{name}".upper() for name in FakeConfig.model_fields}
    used = 0
    for service_name, service in services.items():
        for name in _env(service):
            upper = name.upper()
            if upper.startswith(FAKE_PREFIX):
                assert upper in fake_fields, f"{service_name}: {name} is not a FakeConfig field"
            elif upper.startswith("MODSTREAM_") or upper.startswith("OPENAI_"):
                assert upper in known, f"{service_name}: {name} is not a Settings field"
                used += 1
    assert used >= 5


def test_modstream_reaches_the_fake_and_the_internal_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    env = _env(services["modstream"])
    assert _default(env["OPENAI_BASE_URL"]) == "http://fake-openai:8400/v1"
    assert "OPENAI_API_KEY" in env
    bootstrap = env["MODSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
    advertised = _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert bootstrap in advertised, (bootstrap, advertised)
    # Values that reach Settings must parse (compose's ${VAR:-default} resolved to its default).
    values = {
        k.removeprefix("MODSTREAM_").lower(): _default(v)
        for k, v in env.items()
        if k.startswith("MODSTREAM_")
    }
    settings = Settings.model_validate(values)
    assert settings.kafka_bootstrap_servers == bootstrap


def test_topics_match_the_settings_defaults(services: dict[str, dict[str, Any]]) -> None:
    script = "\n".join(services["topics"]["command"])
    created = dict(re.findall(r"^\s*create\s+(\S+)\s+(\d+)\s*$", script, re.MULTILINE))
    defaults = {
        name: Settings.model_fields[name].default
        for name in ("input_topic", "verdict_topic", "usage_topic", "dlq_topic")
    }
    assert set(created) == set(defaults.values())
    assert created[defaults["input_topic"]] == "6"
    assert "kafka-topics.sh" in script and "--if-not-exists" in script
    # The consumer's configured topics are those created.
    env = _env(services["modstream"])
    for field, default in defaults.items():
        assert env.get(f"MODSTREAM_{field.upper()}", default) == default


def test_dockerfile_is_multi_stage_non_root_with_modstream_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) >= 2 and all(f.startswith("python:3.11-slim") for f in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["modstream"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["consume"\]$', text, re.MULTILINE)


def test_the_observability_profile_has_jaeger_and_modstream_exports_to_it(
    services: dict[str, dict[str, Any]],
) -> None:
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["observability"]
    assert re.fullmatch(r"jaegertracing/all-in-one:\d+\.\d+\.\d+", jaeger["image"])
    assert _env(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"
    assert {"4318:4318", "16686:16686"} <= set(jaeger["ports"])  # OTLP/HTTP in, the UI
    env = _env(services["modstream"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_SERVICE_NAME"] == "modstream"
    # Off unless asked for: without the profile there is no Jaeger to export to.
    assert re.fullmatch(r"\$\{MODSTREAM_TRACING:-off\}", env["MODSTREAM_TRACING"])
    assert Settings.model_validate({"tracing": _default(env["MODSTREAM_TRACING"])}).tracing == "off"
    # Every other observability service sits in the same profile, beside it.
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]


def test_the_registry_profile_runs_the_apicurio_version_the_tests_build() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    registry = services["schema-registry"]
    assert registry["profiles"] == ["registry"]
    pom = (COMPOSE.parent / "deploy" / "registry" / "pom.xml").read_text()
    version = registry["image"].rsplit(":", 1)[1]
    assert registry["image"].startswith("apicurio/apicurio-registry-mem:")
    assert f"<apicurio.version>{version}</apicurio.version>" in pom
    # modstream reaches it on the compose network, and uses it only when a format asks.
    env = _env(services["modstream"])
    internal = registry["ports"][0].split(":")[-1]
    assert env["MODSTREAM_SCHEMA_REGISTRY_URL"] == (
        f"http://schema-registry:{internal}/apis/ccompat/v6"
    )
    formats = {
        name: _default(env[f"MODSTREAM_{name.upper()}"])
        for name in ("input_format", "output_format")
    }
    assert formats == {"input_format": "json", "output_format": "json"}
    Settings.model_validate(formats)  # valid values, and JSON needs no registry
