"""FakeConfig: environment variables, validation messages, runtime patches."""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError
from consumer.testing.fake_openai.config import FakeConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    for key in list(os.environ):
        if key.upper().startswith("MODSTREAM_FAKE_"):
            monkeypatch.delenv(key)


def test_defaults_are_a_well_behaved_server() -> None:
    config = FakeConfig.from_env()
    assert config.latency_ms == 0
    assert config.p_429 == config.p_drop == 0
    assert not config.outage
    assert config.api_key is None
    assert config.hang_s == 600
    assert config.cache_min_tokens == 1024
    assert config.request_log_size == 1000
    assert config.batch_delay_s == 1.0


def test_env_sets_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_FAKE_P_429", "0.25")
    monkeypatch.setenv("MODSTREAM_FAKE_RETRY_AFTER_MODE", "mixed")
    monkeypatch.setenv("MODSTREAM_FAKE_OUTAGE", "true")
    monkeypatch.setenv("MODSTREAM_FAKE_TPM", "50000")
    monkeypatch.setenv("MODSTREAM_FAKE_BATCH_DELAY_S", "0.05")
    config = FakeConfig.from_env()
    assert (config.p_429, config.retry_after_mode, config.outage, config.tpm) == (
        0.25, "mixed", True, 50000,
    )  # fmt: skip
    assert config.batch_delay_s == 0.05


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODSTREAM_FAKE_P_500", "1.5"),
        ("MODSTREAM_FAKE_P_HANG", "often"),
        ("MODSTREAM_FAKE_LATENCY_DIST", "gaussian"),
        ("MODSTREAM_FAKE_RPM", "0"),
        ("MODSTREAM_FAKE_LATENCY_MS", "-1"),
        ("MODSTREAM_FAKE_BATCH_DELAY_S", "-0.5"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        FakeConfig.from_env()


def test_unknown_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_FAKE_P429", "1")
    with pytest.raises(ConfigError, match="MODSTREAM_FAKE_P429"):
        FakeConfig.from_env()


def test_fault_shares_cannot_exceed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_FAKE_P_429", "0.6")
    monkeypatch.setenv("MODSTREAM_FAKE_P_DROP", "0.6")
    with pytest.raises(ConfigError, match="add up to"):
        FakeConfig.from_env()


def test_patched_validates_and_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = FakeConfig(p_500=0.1)
    monkeypatch.setenv("MODSTREAM_FAKE_P_503", "0.5")
    patched = config.patched({"outage": True})
    assert patched.outage
    assert patched.p_500 == 0.1
    assert patched.p_503 == 0  # the environment does not leak into a patch
    with pytest.raises(ValueError, match="p_500"):
        config.patched({"p_500": 2})
    with pytest.raises(ValueError, match="unknown knob"):
        config.patched({"nonsense": 1})


def test_public_masks_the_api_key() -> None:
    assert FakeConfig(api_key="sk-secret").public()["api_key"] == "***"
    assert FakeConfig().public()["api_key"] is None
