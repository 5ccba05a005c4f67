"""Secrets (the API key, the SASL password) never show: not in reprs, dumps, config errors,
logs, events or dead letters. Redacted dead letters keep only the payload's hash.

The end-to-end scan of everything a real run wrote is in tests/e2e/test_hostile.py (PLAINTEXT)
and tests/integration/test_kafka_sasl.py (over SASL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from consumer.errors import ConfigError, DecodeError, InvalidReply
from consumer.kafka.client import kafka_options
from consumer.ops.logs import configure_logging, secret_values
from consumer.pipeline.dead_letter import dead_letter
from consumer.pipeline.source import Envelope
from consumer.settings import LogFormat, Settings, load_settings

API_KEY = "sk-unit-canary-0f9e8d7c6b5a"
PASSWORD = "pw-unit-canary-1a2b3c4d5e6f"
KEY_PASSWORD = "keypw-unit-canary-9z8y7x"
SECRETS = (API_KEY, PASSWORD, KEY_PASSWORD)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("MODSTREAM_", "OPENAI_")):
            monkeypatch.delenv(name)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text


def sasl_settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_username": "svc",
        "sasl_password": PASSWORD,
        "ssl_key_password": KEY_PASSWORD,
    }
    return load_settings(**(values | extra))


# ---- the settings object -------------------------------------------------------------------


def test_secret_fields_are_secretstr() -> None:
    for name in ("openai_api_key", "sasl_password", "ssl_key_password", "schema_registry_password"):
        assert "SecretStr" in str(Settings.model_fields[name].annotation)
    settings = sasl_settings()
    assert isinstance(settings.openai_api_key, SecretStr)
    assert isinstance(settings.sasl_password, SecretStr)
    assert isinstance(settings.ssl_key_password, SecretStr)


def test_the_registry_password_is_masked_in_logs() -> None:
    settings = load_settings(
        openai_api_key="sk-test-not-a-real-key",
        schema_registry_url="http://registry:8081",
        schema_registry_username="svc",
        schema_registry_password="registry-secret-7",
    )
    assert "registry-secret-7" in secret_values(settings)
    assert "registry-secret-7" not in repr(settings)


@pytest.mark.parametrize("source", ["kwargs", "env", "sdk-env"])
def test_secrets_never_render(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    if source == "kwargs":
        settings = sasl_settings()
    else:
        monkeypatch.setenv(
            "OPENAI_API_KEY" if source == "sdk-env" else "MODSTREAM_OPENAI_API_KEY", API_KEY
        )
        monkeypatch.setenv("MODSTREAM_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
        monkeypatch.setenv("MODSTREAM_SASL_MECHANISM", "PLAIN")
        monkeypatch.setenv("MODSTREAM_SASL_USERNAME", "svc")
        monkeypatch.setenv("MODSTREAM_SASL_PASSWORD", PASSWORD)
        monkeypatch.setenv("MODSTREAM_SSL_KEY_PASSWORD", KEY_PASSWORD)
        settings = load_settings()
    assert settings.openai_api_key.get_secret_value() == API_KEY
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == PASSWORD
    for shown in (
        repr(settings),
        str(settings),
        f"{settings}",
        settings.model_dump_json(),
        str(settings.model_dump()),
        json.dumps(settings.model_dump(mode="json")),
        repr(settings.model_copy()),
    ):
        assert_clean(shown)


# ---- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "openai_api_key",
        "OPENAI_API_KEY",
        "MODSTREAM_OPENAI_API_KEY",
        "sasl_password",
        "ssl_key_password",
    ],
)
@pytest.mark.parametrize(
    "bad", [[API_KEY, PASSWORD], {"k": API_KEY + PASSWORD}, (API_KEY, PASSWORD)]
)
def test_a_bad_secret_value_is_named_but_not_echoed(field: str, bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{field: bad})
    message = caught.value.message
    assert_clean(message)
    assert field.upper().removeprefix("MODSTREAM_") in message


def test_secrets_stay_out_of_errors_about_other_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("MODSTREAM_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("MODSTREAM_SECURITY_PROTOCOL", "SASL_PLAINTEXT")  # no mechanism, no user
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "lots")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MODSTREAM_CONCURRENCY" in caught.value.message
    assert_clean(caught.value.message)
    monkeypatch.setenv("MODSTREAM_CONCURRENCY", "4")
    with pytest.raises(ConfigError) as caught:  # the cross-field check: input is the whole dict
        load_settings()
    assert "not set: MODSTREAM_SASL_MECHANISM" in caught.value.message
    assert_clean(caught.value.message)


# ---- the Kafka options: the password in clear only where aiokafka needs it ------------------


def test_kafka_options_hold_the_password_only_as_the_sasl_argument() -> None:
    options = kafka_options(sasl_settings(ssl_key_password=None))
    assert options["sasl_plain_password"] == PASSWORD
    rest = {k: v for k, v in options.items() if k != "sasl_plain_password"}
    assert_clean(repr(rest))


# ---- logs ----------------------------------------------------------------------------------


@pytest.fixture
def reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", [LogFormat.JSON, LogFormat.CONSOLE])
@pytest.mark.usefixtures("reset_logging")
def test_logs_mask_credentials_even_when_passed_by_mistake(
    capsys: pytest.CaptureFixture[str], fmt: LogFormat
) -> None:
    settings = sasl_settings(log_format=fmt, log_level="DEBUG")
    configure_logging(settings)
    log = structlog.get_logger("test_secrets")
    log.info("settings", settings=settings)  # rendered through repr: SecretStr masks itself
    log.info("oops", api_key=API_KEY, sasl_password=PASSWORD, authorization=f"Bearer {API_KEY}")
    log.info("options", openai_api_key=settings.openai_api_key, password=PASSWORD)
    log.info("tls", detail=f"could not decrypt the key with {KEY_PASSWORD}")
    log.debug("dump", config=settings.model_dump(mode="json"))
    logging.getLogger("aiokafka").warning("connect with sasl_plain_password=%s", PASSWORD)
    try:
        raise RuntimeError(f"failed with key {API_KEY}")
    except RuntimeError:
        log.exception("traceback")
    output = capsys.readouterr().err
    for event in ("oops", "dump", "connect with", "traceback", "RuntimeError"):
        assert event in output
    assert_clean(output)


# ---- events and dead letters ---------------------------------------------------------------


def envelope(value: bytes) -> Envelope:
    return Envelope(
        topic="in",
        partition=0,
        offset=5,
        key=b"k",
        value=value,
        headers=(("trace", b"t-1"),),
        timestamp_ms=None,
    )


@pytest.mark.parametrize("redact", [False, True])
def test_dead_letter_redaction_keeps_only_the_hash(redact: bool) -> None:
    value = b'{"id": "x", "text": "my card is 4111 1111 1111 1111"'
    dead = dead_letter(
        envelope(value),
        DecodeError("value is not valid JSON: Expecting ',' delimiter at line 1, column 50"),
        stage="decode",
        policy_version="p1",
        redact=redact,
    )
    assert dead.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert dead.payload_redacted is redact
    shown = dead.model_dump_json()
    if redact:
        assert dead.payload_b64 is None
        assert "4111" not in shown
        assert all(b"4111" not in chunk for chunk in _decoded_strings(shown))
    else:
        assert dead.payload_b64 is not None
        assert base64.b64decode(dead.payload_b64) == value


def test_redacted_dead_letter_drops_the_models_reply_too() -> None:
    reply = '{"scores": "the user said: my card is 4111 1111 1111 1111"}'
    error = InvalidReply("reply invalid after one repair: scores: not an object", reply=reply)
    dead = dead_letter(envelope(b"{}"), error, stage="classify", policy_version="p1", redact=True)
    assert dead.reply is None
    assert "4111" not in dead.model_dump_json()
    kept = dead_letter(envelope(b"{}"), error, stage="classify", policy_version="p1")
    assert kept.reply == reply


def _decoded_strings(text: str) -> list[bytes]:
    """Every JSON string of ``text`` that is valid base64, decoded (the headers, say)."""
    out = []
    for part in text.split('"'):
        try:
            out.append(base64.b64decode(part, validate=True))
        except ValueError:
            continue
    return out
