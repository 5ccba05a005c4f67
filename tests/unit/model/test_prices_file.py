"""Prices: the pinned genai-prices data prices today's models; a prices file prices the rest;
a model nobody prices costs null, with one WARNING at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.errors import ConfigError
from consumer.model.cost import PriceTable, load_prices

TODAY = ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.1", "gpt-4.1", "gpt-4.1-mini", "o4-mini")


@pytest.mark.parametrize("model", TODAY)
def test_the_pinned_data_prices_todays_models(model: str) -> None:
    prices = PriceTable()
    assert prices.known(model)
    cost = prices.cost(model, 1_000_000, 1_000_000)
    assert cost is not None and cost > 0


def test_gpt_5_mini_costs_its_list_price() -> None:
    # $0.25 per 1M input, $2.00 per 1M output (OpenAI's list price, in genai-prices 0.2.3)
    assert PriceTable().cost("gpt-5-mini", 1_000_000, 1_000_000) == pytest.approx(2.25)


@given(prompt=st.integers(0, 10**6), completion=st.integers(0, 10**6), share=st.floats(0, 1))
def test_reasoning_tokens_are_billed_as_completion_tokens(
    prompt: int, completion: int, share: float
) -> None:
    reasoning = int(completion * share)
    prices = PriceTable()
    with_reasoning = prices.cost("gpt-5-mini", prompt, completion, 0, reasoning)
    assert with_reasoning == prices.cost("gpt-5-mini", prompt, completion)


def write(tmp_path: Path, text: str, name: str = "prices.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_prices_file_prices_a_self_hosted_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: gpu-2026-01\nmodels:\n"
        "  llama3.1:8b: {input: 0.10, output: 0.40, cached_input: 0.05}\n"
        "  free-model: {input: 0, output: 0}\n",
    )
    prices = PriceTable(overrides=load_prices(path))
    cost = prices.cost("llama3.1:8b", 1_000_000, 500_000, 200_000)
    assert cost == pytest.approx(0.8 * 0.10 + 0.2 * 0.05 + 0.5 * 0.40)
    assert prices.cost("free-model", 1000, 1000) == 0.0
    assert prices.source_for("llama3.1:8b") == "prices file gpu-2026-01"
    assert prices.source_for("gpt-4o").startswith("genai-prices==")
    assert prices.cost("gpt-4o", 1000, 1000) == PriceTable().cost("gpt-4o", 1000, 1000)


def test_a_json_prices_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, '{"version": "v1", "models": {"m": {"input": 1, "output": 2}}}', "p.json"
    )
    assert PriceTable(overrides=load_prices(path)).cost("m", 1_000_000, 0) == 1.0


BAD = {
    "negative": ("version: v\nmodels:\n  m: {input: -1, output: 1}\n", "models.m.input"),
    "missing output": ("version: v\nmodels:\n  m: {input: 1}\n", "models.m.output"),
    "unknown key": ("version: v\nmodels:\n  m: {input: 1, output: 1, per: 1k}\n", "per"),
    "no version": ("models:\n  m: {input: 1, output: 1}\n", "version"),
    "no models": ("version: v\nmodels: {}\n", "models"),
    "not yaml": ("version: [\n", "cannot read it"),
    "a list": ("- 1\n", "file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_prices_file_is_a_config_error_naming_the_field(tmp_path: Path, case: str) -> None:
    text, field = BAD[case]
    with pytest.raises(ConfigError) as caught:
        load_prices(write(tmp_path, text))
    assert "MODSTREAM_PRICES_FILE" in str(caught.value)
    assert field in str(caught.value)


def test_a_missing_prices_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MODSTREAM_PRICES_FILE"):
        load_prices(tmp_path / "absent.yaml")


def test_an_unknown_model_costs_null_with_one_warning() -> None:
    prices = PriceTable()
    with capture_logs() as logs:
        assert prices.warn_unknown("llama3.1:8b")
        assert not prices.warn_unknown("gpt-5-mini")
    assert prices.cost("llama3.1:8b", 100, 100) is None
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [w["model"] for w in warnings] == ["llama3.1:8b"]


async def test_start_up_warns_once_for_an_unpriced_model_and_reads_the_prices_file(
    tmp_path: Path,
) -> None:
    from openai import AsyncOpenAI  # noqa: PLC0415

    from consumer.model.build import model_stages  # noqa: PLC0415
    from consumer.settings import load_settings  # noqa: PLC0415

    client = AsyncOpenAI(base_url="http://localhost:11434/v1", api_key="unused")
    unpriced = load_settings(model="llama3.1:8b", openai_base_url="http://localhost:11434/v1")
    with capture_logs() as logs:
        classifier, _ = model_stages(unpriced, client)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["model"] == "llama3.1:8b"
    assert classifier.ledger.prices.cost("llama3.1:8b", 10, 10) is None

    path = write(tmp_path, "version: v\nmodels:\n  llama3.1:8b: {input: 1, output: 1}\n")
    priced = load_settings(
        model="llama3.1:8b", openai_base_url="http://localhost:11434/v1", prices_file=path
    )
    with capture_logs() as logs:
        classifier, _ = model_stages(priced, client)
    assert [e for e in logs if e["log_level"] == "warning"] == []
    assert classifier.ledger.prices.cost("llama3.1:8b", 10**6, 0) == 1.0
    await client.close()
