"""Image tokens: OpenAI's tile rule, a pure function of the image's size and the model.

Source: OpenAI's vision guide ("Images and vision", section "Calculating costs", the table of
tile-based models), as published in 2025. At ``detail: high`` (and ``auto`` on a large image)
an image is

1. scaled down to fit in a 2048 x 2048 square (never up),
2. then scaled down so that its shortest side is 768 px (never up),
3. and cut into 512 px tiles: ``ceil(w / 512) * ceil(h / 512)`` of them.

It costs ``base + tiles * per_tile`` prompt tokens. ``detail: low`` costs ``base`` alone.
gpt-4o, gpt-4.1 and gpt-4.5 use 85 + 170 per tile; gpt-4o-mini 2,833 + 5,667 per tile (its
token price is about 1/33 of gpt-4o's, so an image costs about as many dollars on either).
Any other model is counted with the 85/170 rule: close for the tile-based models OpenAI lists
(o1/o3 and gpt-5 are a little cheaper), an approximation for the patch-based ones
(gpt-4.1-mini/nano, o4-mini) and for self-hosted vision models.

modstream sends no ``detail`` (the provider's ``auto``), so it counts ``high``: never fewer
tokens than the provider bills, which is what a budget and a limiter need.

Two properties the tests check, and one the rule does not have:

- an image costs at least ``base + per_tile`` (one tile; a 1 x 1 image is one tile) and at most
  ``base + 8 * per_tile`` (768 x 2048 after scaling: 2 x 4 tiles), which is what an image of
  unknown size (a URL) is counted at;
- scaling an image up (the same aspect ratio) never costs fewer tokens;
- but growing one side alone can: 768 x 2048 is 8 tiles, 1536 x 2048 is scaled to 768 x 1024,
  4 tiles. So "larger" means the same picture at a higher resolution, not any larger image.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = ["MAX_TILES", "TileCost", "image_tokens", "tile_cost", "tiles", "unknown_size_tokens"]

#: The square an image is first fitted in, the shortest side it is then brought down to, and
#: the tile size.
_FIT = 2048
_SHORT_SIDE = 768
_TILE = 512

#: The most tiles an image can take: 768 x 2048 after scaling is 2 x 4.
MAX_TILES = 8

Detail = Literal["high", "low"]


@dataclass(frozen=True, slots=True)
class TileCost:
    """A model's image price in prompt tokens: ``base`` once, ``per_tile`` for each tile."""

    base: int
    per_tile: int


#: The default rule (gpt-4o, gpt-4.1, gpt-4.5 and every model not listed).
_DEFAULT = TileCost(base=85, per_tile=170)

#: Models with their own multipliers, matched by name prefix (a dated snapshot, e.g.
#: ``gpt-4o-mini-2024-07-18``, takes its family's).
_COSTS: tuple[tuple[str, TileCost], ...] = (("gpt-4o-mini", TileCost(base=2833, per_tile=5667)),)


def tile_cost(model: str) -> TileCost:
    """The image price of ``model`` (see the module docstring for the source)."""
    for prefix, cost in _COSTS:
        if model.startswith(prefix):
            return cost
    return _DEFAULT


def tiles(width: int, height: int) -> int:
    """The 512 px tiles of a ``width`` x ``height`` image after OpenAI's two scalings."""
    if width < 1 or height < 1:
        raise ValueError(f"an image is at least 1 x 1 pixels, got {width} x {height}")
    # Exact arithmetic: a float scale can put a side a hair over a tile boundary.
    scale = min(Fraction(1), Fraction(_FIT, max(width, height)))
    scale *= min(Fraction(1), Fraction(_SHORT_SIDE) / (min(width, height) * scale))
    w, h = width * scale, height * scale
    return _ceil_div(w, _TILE) * _ceil_div(h, _TILE)


def image_tokens(width: int, height: int, model: str, detail: Detail = "high") -> int:
    """Prompt tokens of one image of ``width`` x ``height`` pixels sent to ``model``."""
    cost = tile_cost(model)
    if detail == "low":
        return cost.base
    return cost.base + tiles(width, height) * cost.per_tile


def unknown_size_tokens(model: str) -> int:
    """Prompt tokens counted for an image whose size is not known (an ``https`` URL the
    provider fetches): the most any image can cost, so a budget is never exceeded."""
    cost = tile_cost(model)
    return cost.base + MAX_TILES * cost.per_tile


def _ceil_div(value: Fraction, unit: int) -> int:
    return -(-value.numerator // (value.denominator * unit))
