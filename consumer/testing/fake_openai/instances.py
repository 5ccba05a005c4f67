"""A small JSON Schema instance generator with moderation-flavoured values.

It covers what OpenAI strict structured outputs allow: objects (properties, required,
additionalProperties), ``$defs``/``$ref`` (recursion included), anyOf/oneOf/allOf, enum/const,
string/number/integer/boolean/array/null, minimum/maximum (exclusive too), minItems/maxItems and
minLength/maxLength. ``pattern`` and ``multipleOf`` are not honoured.

Values come from the content's :class:`~consumer.testing.fake_openai.heuristic.Judgement`:

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
pays one ``orjson.dumps`` and a walk, not a schema analysis.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from typing import Any

import orjson

from consumer.testing.fake_openai import values
from consumer.testing.fake_openai.heuristic import KEYS, judge, resolve_category
from consumer.testing.fake_openai.values import Context, Gen, SchemaError

__all__ = ["Context", "SchemaError", "compiled", "generate"]

#: Past this nesting depth, optional parts are left out so recursive schemas terminate.
SOFT_DEPTH = 6
_HARD_DEPTH = 64


@functools.lru_cache(maxsize=256)
def compiled(schema_json: str | bytes) -> Gen:
    """The generator for a schema given as JSON text (cached: compile once per schema)."""
    schema = json.loads(schema_json)
    return _Compiler(schema).node(schema, "", None)


def generate(schema: dict[str, Any], context: Context) -> Any:
    """An instance of ``schema`` filled from ``context``."""
    # Not sort_keys: property order is part of the reply (OpenAI answers in schema order).
    try:
        key: str | bytes = orjson.dumps(schema)  # compact, key order kept, ~10x json.dumps
    except (TypeError, orjson.JSONEncodeError):  # what only json writes: NaN, lone surrogates
        key = json.dumps(schema, separators=(",", ":"))
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
            return values.const_rationale
        if not isinstance(schema, dict):
            raise SchemaError(f"unsupported schema {schema!r}")
        category = (resolve_category(name) or category) if name else category
        if "$ref" in schema:
            return self.ref(schema["$ref"], name, category)
        if "const" in schema:
            value = schema["const"]
            return lambda ctx, depth: value
        if "enum" in schema:
            return values.enum(list(schema["enum"]))
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
            return values.number(schema, name, category, integer=kind == "integer")
        if kind == "boolean":
            return values.boolean(name, category)
        if kind == "null":
            return lambda ctx, depth: None
        if kind in ("string", None):
            return values.string(schema)
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
            return _batch(item_gen, low, None if high is None else int(high))
        if isinstance(target, dict) and "enum" in target:
            return values.category_list(list(target["enum"]), item_gen, low, high)

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


def _batch(item_gen: Gen, low: int, high: int | None) -> Gen:
    def gen(ctx: Context, depth: int) -> list[Any]:
        blocks = ctx.blocks or ((0, ""),)
        out = []
        for index, text in blocks:
            sub = replace(ctx, index=index, judgement=judge(text)) if ctx.blocks else ctx
            out.append(item_gen(sub, depth + 1))
        while len(out) < low:  # the schema wants more items than there are blocks
            out.append(item_gen(ctx, depth + 1))
        return out if high is None else out[:high]

    return gen
