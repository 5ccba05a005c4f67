"""cost: USD per call from the pinned genai-prices data; unknown models cost None, not 0."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.cost import PRICE_SOURCE, PriceTable

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
