"""cost: USD per call from the pinned genai-prices data; unknown models cost None, not 0."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given
from hypothesis import strategies as st

from consumer.model.cost import PRICE_SOURCE, PriceFile, PriceTable

# OpenAI's published gpt-4o-mini prices, USD per million tokens, written out by hand so the
# test does not read them back from the library it checks.
INPUT_PER_M = 0.15
CACHED_INPUT_PER_M = 0.075
OUTPUT_PER_M = 0.60


def by_hand(prompt: int, completion: int, cached: int = 0) -> float:
    return (
        (prompt - cached) * INPUT_PER_M + cached * CACHED_INPUT_PER_M + completion * OUTPUT_PER_M
    ) / 1_000_000


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable()


def test_gpt_4o_mini_one_million_of_each(prices: PriceTable) -> None:
    assert prices.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert prices.cost("gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)
    assert prices.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.075)


def test_gpt_4o_mini_typical_call(prices: PriceTable) -> None:
    # 1234 prompt tokens of which 200 cached, 567 completion tokens:
    # 1034 * 0.15 + 200 * 0.075 + 567 * 0.60 = 155.1 + 15 + 340.2 = 510.3 per million
    assert prices.cost("gpt-4o-mini", 1234, 567, 200) == pytest.approx(510.3e-6, rel=1e-9)
    assert prices.cost("gpt-4o-mini", 1234, 567, 200) == pytest.approx(by_hand(1234, 567, 200))


def test_zero_tokens_cost_zero_not_none(prices: PriceTable) -> None:
    assert prices.cost("gpt-4o-mini", 0, 0) == 0.0


@given(
    prompt=st.integers(1, 200_000),
    completion=st.integers(0, 20_000),
    data=st.data(),
)
def test_cached_tokens_are_cheaper(prompt: int, completion: int, data: st.DataObject) -> None:
    prices = PriceTable()
    cached = data.draw(st.integers(1, prompt))
    uncached_cost = prices.cost("gpt-4o-mini", prompt, completion)
    cached_cost = prices.cost("gpt-4o-mini", prompt, completion, cached)
    assert uncached_cost is not None
    assert cached_cost is not None
    assert cached_cost < uncached_cost
    assert cached_cost == pytest.approx(by_hand(prompt, completion, cached), rel=1e-9)


def test_cached_tokens_above_prompt_are_clamped(prices: PriceTable) -> None:
    """``prompt_tokens`` includes the cached ones: more cached than prompt is a bad report."""
    assert prices.cost("gpt-4o-mini", 10, 0, cached_tokens=50) == pytest.approx(by_hand(10, 0, 10))


@pytest.mark.parametrize("model", ["my-local-llama", "", "gpt-4o-mini-but-not-really"])
def test_unknown_model_costs_none(prices: PriceTable, model: str) -> None:
    assert not prices.known(model)
    assert prices.cost(model, 1000, 1000) is None


def test_price_source_names_the_pinned_package(prices: PriceTable) -> None:
    assert prices.source == PRICE_SOURCE
    assert PRICE_SOURCE.startswith("genai-prices==")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5-mini", "gpt-4.1", "o3"])
@given(
    prompt=st.integers(0, 200_000),
    completion=st.integers(0, 200_000),
    data=st.data(),
)
def test_linear_rates_agree_with_genai_prices(
    model: str, prompt: int, completion: int, data: st.DataObject
) -> None:
    """The per-token rates read off genai-prices once give what calc_price gives, at any
    count (above LINEAR_UP_TO calc_price itself is asked)."""
    cached = data.draw(st.integers(0, prompt))
    reasoning = data.draw(st.integers(0, completion))
    table = PriceTable()
    assert table.rates(model) is not None
    usage = Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cache_read_tokens=cached,
        output_reasoning_tokens=reasoning,
    )
    exact = float(calc_price(usage, model, provider_id="openai").total_price)
    assert table.cost(model, prompt, completion, cached, reasoning) == pytest.approx(
        exact, rel=1e-9, abs=1e-15
    )


def test_no_rates_for_an_unknown_or_overridden_model() -> None:
    assert PriceTable().rates("my-finetune") is None
    file = PriceFile(version="v", models={"gpt-4o-mini": {"input": 1.0, "output": 2.0}})
    overridden = PriceTable(overrides=file)
    assert overridden.rates("gpt-4o-mini") is None
    assert overridden.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(1.0)
