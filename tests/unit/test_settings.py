"""Settings come from MODSTREAM_* variables; bad ones fail early and clearly, never leak secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.settings import (
    Compatibility,
    Delivery,
    InputFormat,
    OutputFormat,
    Settings,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment with no modstream or OpenAI settings in it."""
    for name in list(os.environ):
        if name.upper().startswith(("MODSTREAM_", "OPENAI_")):
            monkeypatch.delenv(name)


def test_defaults_are_the_documented_topics() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert (
        settings.input_topic,
        settings.verdict_topic,
        settings.usage_topic,
        settings.dlq_topic,
    ) == (
        "moderation.requests",
        "moderation.verdicts",
        "moderation.usage",
        "moderation.dead-letters",
    )
    assert settings.delivery is Delivery.AT_LEAST_ONCE
    assert settings.openai_api_key.get_secret_value() == ""


def test_env_values_are_parsed_into_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "8")
    monkeypatch.setenv("MODSTREAM_MAX_IN_FLIGHT", "64")
    monkeypatch.setenv("MODSTREAM_REQUEST_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MODSTREAM_DELIVERY", "exactly_once")
    monkeypatch.setenv("MODSTREAM_INPUT_FORMAT", "text")
    monkeypatch.setenv("MODSTREAM_REDACT_DEAD_LETTERS", "true")
    monkeypatch.setenv("MODSTREAM_TPM", "150000")
    monkeypatch.setenv("modstream_group_id", "lower-case-works")  # names are case-insensitive

    settings = load_settings()

    assert settings.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert (settings.concurrency, settings.max_in_flight) == (8, 64)
    assert settings.request_timeout_s == 2.5
    assert settings.delivery is Delivery.EXACTLY_ONCE
    assert settings.input_format is InputFormat.TEXT
    assert settings.redact_dead_letters is True
    assert settings.tpm == 150_000
    assert settings.rpm is None
    assert settings.group_id == "lower-case-works"


def test_openai_sdk_variables_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-sdk-var")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://fake-openai:8400/v1")
    settings = load_settings()
    assert settings.openai_api_key.get_secret_value() == "sk-from-sdk-var"
    assert settings.openai_base_url == "http://fake-openai:8400/v1"


def test_modstream_prefixed_key_wins_over_sdk_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sdk")
    monkeypatch.setenv("MODSTREAM_OPENAI_API_KEY", "sk-modstream")
    assert load_settings().openai_api_key.get_secret_value() == "sk-modstream"


def test_secrets_never_appear_in_repr_str_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-key")
    monkeypatch.setenv("MODSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MODSTREAM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MODSTREAM_SASL_USERNAME", "svc")
    monkeypatch.setenv("MODSTREAM_SASL_PASSWORD", "hunter2-password")
    settings = load_settings()

    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == "hunter2-password"
    for shown in (repr(settings), str(settings), settings.model_dump_json(), f"{settings}"):
        assert "sk-very-secret-key" not in shown
        assert "hunter2-password" not in shown
    assert "**********" in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODSTREAM_CONCURRENCY", "abc"),
        ("MODSTREAM_CONCURRENCY", "0"),
        ("MODSTREAM_MAX_IN_FLIGHT", "-5"),
        ("MODSTREAM_REQUEST_TIMEOUT_S", "soon"),
        ("MODSTREAM_DELIVERY", "twice"),
        ("MODSTREAM_AUTO_OFFSET_RESET", "middle"),
        ("MODSTREAM_SECURITY_PROTOCOL", "CARRIER_PIGEON"),
        ("MODSTREAM_LOG_LEVEL", "LOUD"),
        ("MODSTREAM_TEMPERATURE", "3"),
        ("MODSTREAM_METRICS_PORT", "70000"),
        ("MODSTREAM_REDACT_DEAD_LETTERS", "perhaps"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert repr(value) in message  # the offending value is shown (it is not a secret)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "many")
    monkeypatch.setenv("MODSTREAM_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MODSTREAM_CONCURRENCY" in str(caught.value)
    assert "MODSTREAM_LOG_FORMAT" in str(caught.value)


def test_config_error_is_fatal_not_retriable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.fatal is True
    assert caught.value.retriable is False


def test_concurrency_cannot_exceed_max_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "65")
    monkeypatch.setenv("MODSTREAM_MAX_IN_FLIGHT", "64")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "MODSTREAM_CONCURRENCY (65) cannot exceed MODSTREAM_MAX_IN_FLIGHT (64)" in message
    assert "Value error" not in message
    # The boundary itself is allowed.
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "64")
    assert load_settings().concurrency == 64


def test_max_tokens_must_fit_the_context_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_CONTEXT_WINDOW", "1000")
    monkeypatch.setenv("MODSTREAM_MAX_TOKENS", "1000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MODSTREAM_MAX_TOKENS (1000) must be smaller than MODSTREAM_CONTEXT_WINDOW (1000)" in (
        str(caught.value)
    )


@pytest.mark.parametrize(
    "missing", ["MODSTREAM_SASL_MECHANISM", "MODSTREAM_SASL_USERNAME", "MODSTREAM_SASL_PASSWORD"]
)
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_needs_mechanism_username_and_password(
    monkeypatch: pytest.MonkeyPatch, protocol: str, missing: str
) -> None:
    complete = {
        "MODSTREAM_SECURITY_PROTOCOL": protocol,
        "MODSTREAM_SASL_MECHANISM": "PLAIN",
        "MODSTREAM_SASL_USERNAME": "svc",
        "MODSTREAM_SASL_PASSWORD": "pw-must-not-leak",
    }
    for name, value in complete.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"MODSTREAM_SECURITY_PROTOCOL={protocol} needs" in str(caught.value)
    assert str(caught.value).endswith(f"not set: {missing}")
    assert "pw-must-not-leak" not in str(caught.value)

    monkeypatch.setenv(missing, complete[missing])
    settings = load_settings()
    assert settings.security_protocol == protocol


def test_unknown_sasl_mechanism_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ConfigError, match="MODSTREAM_SASL_MECHANISM"):
        load_settings()


def test_overrides_take_precedence_and_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_MODEL", "from-env")
    settings = load_settings(model="from-override")
    assert settings.model == "from-override"
    with pytest.raises(ValueError, match="frozen"):
        settings.model = "changed"  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_readme_documents_every_setting() -> None:
    """The configuration table in README.md lists every variable Settings reads."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [
        f"MODSTREAM_{name.upper()}"
        for name in Settings.model_fields
        if f"`MODSTREAM_{name.upper()}`" not in readme
    ]
    assert not missing, f"add these to the configuration table in README.md: {missing}"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {
                "MODSTREAM_AZURE_ENDPOINT": "https://r.openai.azure.com",
                "OPENAI_BASE_URL": "http://x",
            },
            "set MODSTREAM_AZURE_ENDPOINT (or AZURE_OPENAI_ENDPOINT) or OPENAI_BASE_URL",
        ),
        (
            {"MODSTREAM_WORKERS": "4", "MODSTREAM_RPM": "3"},
            "MODSTREAM_RPM (3) is below MODSTREAM_WORKERS (4)",
        ),
        (
            {"MODSTREAM_BATCH_SIZE": "20", "MODSTREAM_CONTEXT_WINDOW": "8000"},
            "a full batch (MODSTREAM_BATCH_SIZE 20 x (MODSTREAM_BATCH_MAX_TOKENS 200 + "
            "MODSTREAM_MAX_TOKENS 400)) does not fit MODSTREAM_CONTEXT_WINDOW (8000)",
        ),
    ],
)
def test_a_check_across_variables_names_them_without_pydantics_prefix(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    # The line is the check's own words: no "Value error, " and no "settings: " before it.
    assert str(caught.value).splitlines()[1].startswith("  " + problem)


def test_a_misspelt_variable_is_refused_with_the_name_it_meant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODSTREAM_CONCURENCY", "5")
    monkeypatch.setenv("modstream_deliverry", "exactly_once")  # any case, as the settings read
    monkeypatch.setenv("MODSTREAM_NOTHING_LIKE_IT", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).splitlines() == [
        "invalid configuration:",
        "  MODSTREAM_CONCURENCY: unknown variable (did you mean MODSTREAM_CONCURRENCY?)",
        "  MODSTREAM_NOTHING_LIKE_IT: unknown variable",
        "  modstream_deliverry: unknown variable (did you mean MODSTREAM_DELIVERY?)",
        "  (the README's Configuration section lists every MODSTREAM_* setting)",
    ]


def test_unknown_variables_are_reported_with_the_bad_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODSTREAM_CONCURENCY", "5")
    monkeypatch.setenv("MODSTREAM_MAX_IN_FLIGHT", "many")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert lines[1].startswith("  MODSTREAM_CONCURENCY: unknown variable")
    assert lines[2].startswith("  MODSTREAM_MAX_IN_FLIGHT: Input should be a valid integer")


def test_variables_read_outside_the_settings_are_not_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "MODSTREAM_FAKE_SEED",
        "MODSTREAM_TEST_KAFKA_PORT",
        "MODSTREAM_TIKTOKEN_CACHE",
        "MODSTREAM_WORKER_INDEX",
        "MODSTREAM_WORKER_REPORT_FD",
        "MODSTREAM_OPENAI_API_KEY",  # an alias's MODSTREAM_ spelling
    ):
        monkeypatch.setenv(name, "1")
    assert load_settings().openai_api_key.get_secret_value() == "1"


def test_registry_output_needs_the_registry_and_says_which_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODSTREAM_OUTPUT_FORMAT", "avro")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MODSTREAM_OUTPUT_FORMAT=avro needs MODSTREAM_SCHEMA_REGISTRY_URL" in str(caught.value)
    monkeypatch.setenv("MODSTREAM_SCHEMA_REGISTRY_URL", "http://registry:8081")
    settings = load_settings()
    assert settings.output_format is OutputFormat.AVRO
    assert settings.schema_compatibility is Compatibility.BACKWARD


def test_an_unknown_compatibility_level_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_SCHEMA_COMPATIBILITY", "SIDEWAYS")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MODSTREAM_SCHEMA_COMPATIBILITY" in str(caught.value)
    assert "'BACKWARD'" in str(caught.value)
