"""The tile rule: OpenAI's published examples, and its properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.model.image_tokens import (
    MAX_TILES,
    image_tokens,
    tile_cost,
    tiles,
    unknown_size_tokens,
)

MODELS = ("gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4.1")
side = st.integers(min_value=1, max_value=20_000)
model = st.sampled_from(MODELS)


@pytest.mark.parametrize(
    ("width", "height", "model", "expected"),
    [
        # OpenAI's own worked examples (vision guide, "Calculating costs").
        (1024, 1024, "gpt-4o", 765),  # 768 x 768: 4 tiles
        (2048, 4096, "gpt-4o", 1105),  # 1024 x 2048, then 768 x 1536: 6 tiles
        (4096, 8192, "gpt-4o", 1105),  # fitted into 2048 first: the same picture
        (1024, 1024, "gpt-4o-mini", 2833 + 4 * 5667),
        (512, 512, "gpt-4o", 85 + 170),
        (513, 512, "gpt-4o", 85 + 2 * 170),
    ],
)
def test_published_examples(width: int, height: int, model: str, expected: int) -> None:
    assert image_tokens(width, height, model) == expected


def test_costs_per_model_family() -> None:
    assert (tile_cost("gpt-4o").base, tile_cost("gpt-4o").per_tile) == (85, 170)
    assert tile_cost("gpt-4o-mini-2024-07-18") == tile_cost("gpt-4o-mini")
    assert (tile_cost("gpt-4o-mini").base, tile_cost("gpt-4o-mini").per_tile) == (2833, 5667)
    assert tile_cost("llava-13b") == tile_cost("gpt-4o")  # unknown: the default rule


@given(width=side, height=side, model=model)
def test_every_image_costs_between_one_tile_and_the_maximum(
    width: int, height: int, model: str
) -> None:
    cost = tile_cost(model)
    assert 1 <= tiles(width, height) <= MAX_TILES
    tokens = image_tokens(width, height, model)
    assert cost.base + cost.per_tile <= tokens <= unknown_size_tokens(model)
    assert unknown_size_tokens(model) == cost.base + MAX_TILES * cost.per_tile


@given(width=st.integers(1, 512), height=st.integers(1, 512), model=model)
def test_a_tiny_image_is_one_tile_and_low_detail_is_the_base_alone(
    width: int, height: int, model: str
) -> None:
    cost = tile_cost(model)
    # At high detail even 1 x 1 is one tile: "base only" is detail=low, whatever the size.
    assert image_tokens(width, height, model) == cost.base + cost.per_tile
    assert image_tokens(width, height, model, detail="low") == cost.base
    assert image_tokens(width * 40, height * 40, model, detail="low") == cost.base


@given(width=side, height=side, factor=st.integers(1, 50), model=model)
def test_the_same_picture_at_a_higher_resolution_never_costs_less(
    width: int, height: int, factor: int, model: str
) -> None:
    assert image_tokens(width * factor, height * factor, model) >= image_tokens(
        width, height, model
    )


@given(width=side, height=side)
def test_symmetric_in_its_sides(width: int, height: int) -> None:
    assert tiles(width, height) == tiles(height, width)


def test_growing_one_side_alone_can_cost_less() -> None:
    # Documented in the module: the shortest-side scaling makes a wider picture smaller.
    assert tiles(768, 2048) == MAX_TILES
    assert tiles(1536, 2048) == 4


def test_the_largest_cost_is_reached() -> None:
    assert image_tokens(768, 2048, "gpt-4o") == unknown_size_tokens("gpt-4o") == 1445


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-1, 5)])
def test_no_pixels_is_an_error(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="at least 1 x 1"):
        tiles(width, height)
