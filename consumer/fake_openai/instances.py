"""A small JSON Schema instance generator with moderation-flavoured values.

It covers what OpenAI strict structured outputs allow: objects (properties, required,
additionalProperties), ``$defs``/``$ref`` (recursion included), anyOf/oneOf/allOf, enum/const,
string/number/integer/boolean/array/null, minimum/maximum (exclusive too), minItems/maxItems and
minLength/maxLength. ``pattern`` and ``multipleOf`` are not honoured.

Values come from the content's :class:`~consumer.fake_openai.heuristic.Judgement`:

- a number under a property named like a category (``violence``, ``violence_score``, or any
  number inside a property so named) is that category's score;
- an integer property named ``index`` is the number of the content block being judged;
- a boolean named like a category is its flag; ``flagged``-like booleans say whether any is;
- string enums pick the moderation-looking value (``block`` for flagged content, ``allow`` for
  benign, the top category when the values are category names); other strings get the
  rationale;
- an array of objects that have an ``index`` property is the batch form: one item per
  ``<content index="N">`` block of the user message (one item, index 0, when there is none).

A schema is compiled once into a tree of closures and cached by its JSON text, so a request
pays one ``json.dumps`` and a walk, not a schema analysis.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from consumer.fake_openai.heuristic import (
    FLAG_THRESHOLD,
    KEYS,
    Judgement,
    category_key,
    judge,
    resolve_category,
)

#: Past this nesting depth, optional parts are left out so recursive schemas terminate.
SOFT_DEPTH = 6
_HARD_DEPTH = 64

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


@functools.lru_cache(maxsize=256)
def compiled(schema_json: str) -> Gen:
    """The generator for a schema given as JSON text (cached: compile once per schema)."""
    schema = json.loads(schema_json)
    return _Compiler(schema).node(schema, "", None)


def generate(schema: dict[str, Any], context: Context) -> Any:
    """An instance of ``schema`` filled from ``context``."""
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    try:
        return compiled(key)(context, 0)
    except RecursionError as exc:  # pathological schemas must not kill the server
        raise SchemaError("schema nests too deeply") from exc


class _Compiler:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.refs: dict[tuple[str, str, str | None], Gen] = {}

    def resolve(self, schema: Any) -> Any:
        """Follow ``$ref`` chains (local pointers only)."""
        seen = set()
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                raise SchemaError(f"$ref cycle at {ref}")
            seen.add(ref)
            schema = self.pointer(ref)
        return schema

    def pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref is supported, got {ref!r}")
        target: Any = self.root
        for raw in filter(None, ref[1:].split("/")):
            part = raw.replace("~1", "/").replace("~0", "~")
            try:
                target = target[int(part)] if isinstance(target, list) else target[part]
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise SchemaError(f"unresolvable $ref {ref!r}") from exc
        return target

    def node(self, schema: Any, name: str, category: str | None) -> Gen:
        """Compile ``schema`` found under property ``name`` within ``category`` (if any)."""
        if schema is True or schema == {}:
            return _const_rationale
        if not isinstance(schema, dict):
            raise SchemaError(f"unsupported schema {schema!r}")
        category = (resolve_category(name) or category) if name else category
        if "$ref" in schema:
            return self.ref(schema["$ref"], name, category)
        if "const" in schema:
            value = schema["const"]
            return lambda ctx, depth: value
        if "enum" in schema:
            return _enum(list(schema["enum"]))
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self.resolve(part))
            return self.node(merged, name, category)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.choice(schema[key], name, category)
        kind = schema.get("type")
        if isinstance(kind, list):
            branches = [{**schema, "type": t} for t in kind]
            return self.choice(branches, name, category)
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object(schema, category)
        if kind == "array" or (kind is None and "items" in schema):
            return self.array(schema, name, category)
        if kind in ("number", "integer"):
            return _number(schema, name, category, integer=kind == "integer")
        if kind == "boolean":
            return _boolean(name, category)
        if kind == "null":
            return lambda ctx, depth: None
        if kind in ("string", None):
            return _string(schema)
        raise SchemaError(f"unsupported type {kind!r}")

    def ref(self, ref: str, name: str, category: str | None) -> Gen:
        key = (ref, name, category)
        if key not in self.refs:
            cell: list[Gen] = []

            # Placeholder first, so a recursive $ref compiles to a call through the cell.
            def forward(ctx: Context, depth: int) -> Any:
                return cell[0](ctx, depth)

            self.refs[key] = forward
            cell.append(self.node(self.pointer(ref), name, category))
        return self.refs[key]

    def choice(self, branches: list[Any], name: str, category: str | None) -> Gen:
        if not branches:
            raise SchemaError("empty anyOf/oneOf")
        gens = [self.node(branch, name, category) for branch in branches]
        nulls = [i for i, b in enumerate(branches) if self.resolve(b) == {"type": "null"}]
        # Prefer a real value; deep inside a recursive schema prefer null to stop recursing.
        preferred = next((g for i, g in enumerate(gens) if i not in nulls), gens[0])
        fallback = gens[nulls[0]] if nulls else gens[-1]
        return lambda ctx, depth: (preferred if depth <= SOFT_DEPTH else fallback)(ctx, depth)

    def object(self, schema: dict[str, Any], category: str | None) -> Gen:
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        fields = [(k, k in required, self.node(v, k, category)) for k, v in props.items()]
        extra = schema.get("additionalProperties")
        extra_kind = self.resolve(extra).get("type") if isinstance(extra, dict) else None
        # A free-form map of numbers or booleans is read as "category -> score/flag".
        as_categories = not props and extra_kind in ("number", "integer", "boolean")
        extra_gens = {k: self.node(extra, k, k) for k in KEYS} if as_categories else {}

        def gen(ctx: Context, depth: int) -> Any:
            if depth > _HARD_DEPTH:
                raise SchemaError("schema requires unbounded nesting")
            out = {k: g(ctx, depth + 1) for k, req, g in fields if req or depth <= SOFT_DEPTH}
            out.update((k, g(ctx, depth + 1)) for k, g in extra_gens.items())
            return out

        return gen

    def array(self, schema: dict[str, Any], name: str, category: str | None) -> Gen:
        items = schema.get("items", {})
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        target = self.resolve(items)
        item_gen = self.node(items, name, category)
        if isinstance(target, dict) and "index" in (target.get("properties") or {}):
            return _batch(item_gen)
        if isinstance(target, dict) and "enum" in target:
            return _category_list(list(target["enum"]), item_gen, low, high)

        def gen(ctx: Context, depth: int) -> list[Any]:
            count = max(low, 1 if depth <= SOFT_DEPTH else 0)
            count = min(count, int(high)) if high is not None else count
            return [item_gen(ctx, depth + 1) for _ in range(count)]

        return gen


def _merge(a: dict[str, Any], b: Any) -> dict[str, Any]:
    if not isinstance(b, dict):
        return a
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out


def _const_rationale(ctx: Context, depth: int) -> Any:
    return ctx.judgement.rationale


def _batch(item_gen: Gen) -> Gen:
    def gen(ctx: Context, depth: int) -> list[Any]:
        blocks = ctx.blocks or ((0, ""),)
        out = []
        for index, text in blocks:
            sub = replace(ctx, index=index, judgement=judge(text)) if ctx.blocks else ctx
            out.append(item_gen(sub, depth + 1))
        return out

    return gen


def _category_list(values: list[Any], item_gen: Gen, low: int, high: Any) -> Gen:
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


def _enum(values: list[Any]) -> Gen:
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


def _number(schema: dict[str, Any], name: str, category: str | None, *, integer: bool) -> Gen:
    low, high, low_open, high_open = _bounds(schema)
    is_index = category_key(name) == "index"
    # A category number on a wider scale (0-10, 0-100) gets the score stretched over it.
    scale = (low if low > -math.inf else 0.0, high) if high > 1 and high < math.inf else None

    def fit(value: float) -> float | int:
        if integer:
            value = round(value)
            lo = math.floor(low) + 1 if low_open and low == math.floor(low) else math.ceil(low)
            hi = math.ceil(high) - 1 if high_open and high == math.ceil(high) else math.floor(high)
            if lo > hi:
                raise SchemaError(f"no integer fits the bounds of {name or 'a value'}")
            return int(min(max(value, lo), hi))
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


def _boolean(name: str, category: str | None) -> Gen:
    key = category_key(name)
    if category is not None and key not in _SAFE_BOOLS:
        return lambda ctx, depth: ctx.judgement.scores[category] >= FLAG_THRESHOLD
    if key in _FLAG_BOOLS:
        return lambda ctx, depth: ctx.judgement.flagged
    if key in _SAFE_BOOLS:
        return lambda ctx, depth: not ctx.judgement.flagged
    return lambda ctx, depth: False


def _string(schema: dict[str, Any]) -> Gen:
    fixed = _FORMATS.get(schema.get("format", ""))
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")

    def gen(ctx: Context, depth: int) -> str:
        text = fixed if fixed is not None else ctx.judgement.rationale
        if len(text) < low:
            text = text + "." * (low - len(text))
        return text[: int(high)] if high is not None else text

    return gen
