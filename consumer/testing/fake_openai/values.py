"""Leaf values of the schema instance generator: numbers, booleans, strings and enums.

Each function compiles one schema node into a generator ``(context, depth) -> value`` that reads
the judged content (see :mod:`consumer.testing.fake_openai.instances` for the rules).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consumer.testing.fake_openai.heuristic import (
    FLAG_THRESHOLD,
    Judgement,
    category_key,
    resolve_category,
)

_FLAGGED_WORDS = ("block", "blocked", "flag", "flagged", "unsafe", "harmful", "reject", "deny")
_BENIGN_WORDS = ("allow", "allowed", "safe", "ok", "approve", "approved", "pass", "benign", "none")
_FLAG_BOOLS = {"flagged", "unsafe", "harmful", "violation", "violates", "is_flagged", "block"}
_SAFE_BOOLS = {"safe", "is_safe", "allowed", "allow", "benign"}
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "moderator@example.com",
    "uri": "https://example.com/",
    "hostname": "example.com",
}


@dataclass(frozen=True, slots=True)
class Context:
    """What generation reads: the judged content, its block index and all blocks."""

    judgement: Judgement
    index: int
    blocks: tuple[tuple[int, str], ...]


class SchemaError(ValueError):
    """The schema cannot be instantiated (unsupported or unsatisfiable)."""


Gen = Callable[[Context, int], Any]


def const_rationale(ctx: Context, depth: int) -> Any:
    """For the empty schema (anything goes): the rationale string."""
    return ctx.judgement.rationale


def category_list(values: list[Any], item_gen: Gen, low: int, high: Any) -> Gen:
    """An array of enum values: the flagged categories among them, padded to ``low``."""
    categories = [resolve_category(v) if isinstance(v, str) else None for v in values]

    def gen(ctx: Context, depth: int) -> list[Any]:
        flags = ctx.judgement.flags()
        out = [v for v, c in zip(values, categories, strict=True) if c and flags[c]]
        pool = [v for v in values if v not in out]
        while len(out) < low and pool:
            out.append(pool.pop(0))
        while len(out) < low:  # enum exhausted: repeat (only fails with uniqueItems)
            out.append(item_gen(ctx, depth + 1))
        return out[: int(high)] if high is not None else out

    return gen


def enum(values: list[Any]) -> Gen:
    """One enum value: the top category, else a block-like or allow-like word, else the first."""
    if not values:
        raise SchemaError("empty enum")
    lowered = [v.lower() if isinstance(v, str) else None for v in values]
    categories = [resolve_category(v) if isinstance(v, str) else None for v in values]
    flagged_pick = next(
        (v for v, lo in zip(values, lowered, strict=True) if lo in _FLAGGED_WORDS), None
    )
    benign_pick = next(
        (v for v, lo in zip(values, lowered, strict=True) if lo in _BENIGN_WORDS), None
    )

    def gen(ctx: Context, depth: int) -> Any:
        judgement = ctx.judgement
        if any(categories):
            top = judgement.top_category()
            if judgement.flagged and top in categories:
                return values[categories.index(top)]
        if judgement.flagged and flagged_pick is not None:
            return flagged_pick
        if not judgement.flagged and benign_pick is not None:
            return benign_pick
        return values[0]

    return gen


def _bounds(schema: dict[str, Any]) -> tuple[float, float, bool, bool]:
    low = float(schema.get("minimum", -math.inf))
    high = float(schema.get("maximum", math.inf))
    low_open = high_open = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    # Draft 4 spells exclusivity as a boolean beside minimum/maximum; later drafts as a number.
    if isinstance(ex_low, bool):
        low_open = ex_low
    elif ex_low is not None and float(ex_low) >= low:
        low, low_open = float(ex_low), True
    if isinstance(ex_high, bool):
        high_open = ex_high
    elif ex_high is not None and float(ex_high) <= high:
        high, high_open = float(ex_high), True
    return low, high, low_open, high_open


def number(schema: dict[str, Any], name: str, category: str | None, *, integer: bool) -> Gen:
    """A category's score, the block number for ``index``, else 0; always within the bounds."""
    low, high, low_open, high_open = _bounds(schema)
    is_index = category_key(name) == "index"
    # A category number on a wider scale (0-10, 0-100) gets the score stretched over it.
    scale = (low if low > -math.inf else 0.0, high) if high > 1 and high < math.inf else None

    if integer:
        int_low = low if math.isinf(low) else math.floor(low) + 1 if low_open else math.ceil(low)
        int_high = (
            high if math.isinf(high) else math.ceil(high) - 1 if high_open else math.floor(high)
        )
        if int_low > int_high:
            raise SchemaError(f"no integer fits the bounds of {name or 'a value'}")
    elif low > high or (low == high and (low_open or high_open)):
        raise SchemaError(f"no number fits the bounds of {name or 'a value'}")

    def fit(value: float) -> float | int:
        if integer:
            return int(min(max(round(value), int_low), int_high))
        if (
            low < value < high
            or (value == low and not low_open)
            or (value == high and not high_open)
        ):
            return value
        if low > -math.inf and high < math.inf:
            return (low + high) / 2
        if low > -math.inf:
            return low + 1 if low_open else low
        return high - 1 if high_open else high

    def gen(ctx: Context, depth: int) -> float | int:
        if is_index:
            return fit(ctx.index)
        if category is not None:
            score = ctx.judgement.scores[category]
            if scale is not None:
                score = scale[0] + score * (scale[1] - scale[0])
            return fit(score)
        return fit(0)

    return gen


def boolean(name: str, category: str | None) -> Gen:
    """A category's flag, ``flagged``/``safe``-like verdicts, else False."""
    key = category_key(name)
    if category is not None and key not in _SAFE_BOOLS:
        return lambda ctx, depth: ctx.judgement.scores[category] >= FLAG_THRESHOLD
    if key in _FLAG_BOOLS:
        return lambda ctx, depth: ctx.judgement.flagged
    if key in _SAFE_BOOLS:
        return lambda ctx, depth: not ctx.judgement.flagged
    return lambda ctx, depth: False


def string(schema: dict[str, Any]) -> Gen:
    """The rationale (or a fixed value for a known ``format``), fitted to min/maxLength."""
    fixed = _FORMATS.get(schema.get("format", ""))
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")

    def gen(ctx: Context, depth: int) -> str:
        text = fixed if fixed is not None else ctx.judgement.rationale
        if len(text) < low:
            text = text + "." * (low - len(text))
        return text[: int(high)] if high is not None else text

    return gen
