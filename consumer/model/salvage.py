"""Salvage, the repair ladder's second rung: a good reply value out of the wrapping around it.

A chat reply should be exactly one JSON value that the reply model (:mod:`consumer.model.policy`)
validates. Models and servers often send a good value in wrapping that is no part of it;
:func:`salvage` removes the wrapping, locally and at no cost:

- a Markdown code fence around the value (```` ```json … ``` ````) is removed;
- the first complete JSON value that looks like the reply is taken; text before or after it
  (prose, a second value) is ignored, and the notes say so;
- object keys the schema does not have are dropped, at any depth.

What is left is validated exactly as a valid reply is; when it passes, it is used (usage outcome
``salvaged``). Nothing is invented, converted or clamped: every value kept is the very value the
text held at that place. A reply whose values are wrong (out of range, missing, of the wrong
type) or whose JSON is broken or cut off is not salvaged: the ladder's other rungs
(:mod:`consumer.model.ladder`) ask the model for a repair. Everything here is pure: text and
schemas in, values and reasons out, no I/O, no state.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

__all__ = [
    "ANY",
    "MAX_STARTS",
    "Fix",
    "Salvaged",
    "Shape",
    "Unsalvageable",
    "reply_shape",
    "resolve_ref",
    "salvage",
    "shape_of",
]

#: How many ``{`` (or ``[``) positions are tried as the start of the value: a reply is short,
#: and a text full of braces that never parse must not cost a quadratic scan.
MAX_STARTS = 64

#: Dropped keys named in a note, at most (the count is always given).
_NAMED_KEYS = 8

# Text before the value that is a fence opening (```json, ``` or ~~~), after optional prose.
_FENCE_OPEN = re.compile(r"(?s)(?P<prose>.*?)(?:```|~~~)[A-Za-z0-9_+.-]*[ \t]*\r?\n?\s*")
# Text after the value that starts with a fence closing.
_FENCE_CLOSE = re.compile(r"(?s)\s*(?:```|~~~)(?P<rest>.*)")


class Fix(StrEnum):
    """What :func:`salvage` removed; the ``fix`` label of the salvage metric."""

    CODE_FENCE = "code_fence"
    EXTRA_TEXT = "extra_text"
    UNKNOWN_KEYS = "unknown_keys"


@dataclass(frozen=True)
class Shape:
    """The keys a JSON Schema allows, as far as salvage needs them.

    ``keys``: an object whose properties are these (and no others); ``items``: an array whose
    items have this shape. Neither: anything (a leaf, or a schema salvage does not prune).
    """

    keys: dict[str, Shape] | None = None
    items: Shape | None = None


ANY = Shape()


@dataclass(frozen=True, slots=True)
class Salvaged:
    """A JSON value recovered from a reply text, with only the schema's keys."""

    #: The value, its unknown keys dropped; every value in it is the text's own.
    value: Any
    #: Where the value was in the text: ``text[start:end]`` is its JSON.
    span: tuple[int, int]
    #: What was removed, each kind once, in the order found.
    fixes: tuple[Fix, ...]
    #: The same in words, for logs and the repair request.
    notes: tuple[str, ...]

    @property
    def json(self) -> str:
        """The value as JSON text, to validate exactly as an untouched reply is."""
        return json.dumps(self.value, ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Unsalvageable:
    """No JSON value that looks like the reply is in the text: a model call must fix it."""

    reason: str


def shape_of(schema: Mapping[str, Any]) -> Shape:
    """The :class:`Shape` of a JSON Schema (local ``$ref`` to ``$defs`` or ``definitions``).

    Only objects that forbid other keys (``additionalProperties: false``) are pruned: where
    the schema allows any key, no key is unknown. Combinators (``anyOf`` ...) are not pruned.
    """
    return _shape(schema, schema, frozenset())


def resolve_ref(ref: str, root: Mapping[str, Any]) -> Any:
    """The node a local reference (``#/$defs/Scores``) points to in ``root``; None if none."""
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, Mapping) else None
    return target


def _shape(node: Any, root: Mapping[str, Any], refs: frozenset[str]) -> Shape:
    if not isinstance(node, Mapping):
        return ANY
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in refs or not ref.startswith("#/"):
            return ANY  # a recursive or remote schema: do not prune below here
        return _shape(resolve_ref(ref, root), root, refs | {ref})
    properties = node.get("properties")
    if isinstance(properties, Mapping) and node.get("additionalProperties") is False:
        return Shape(keys={str(k): _shape(v, root, refs) for k, v in properties.items()})
    if node.get("type") == "array" and "items" in node:
        return Shape(items=_shape(node["items"], root, refs))
    return ANY


@functools.cache
def reply_shape(model: type[BaseModel]) -> Shape:
    """The shape of a pydantic reply model's JSON (by alias), computed once per model."""
    return shape_of(model.model_json_schema(by_alias=True))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):  # which of the two values is meant? not ours to guess
        raise ValueError("duplicate key")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique)


def _looks_like(value: Any, shape: Shape) -> bool:
    """Whether a decoded value may be the reply: the schema's type, and for an object at least
    one of its keys (so an inner object of a broken reply is never taken for the reply)."""
    if shape.keys is not None:
        return isinstance(value, dict) and (not shape.keys or any(k in shape.keys for k in value))
    if shape.items is not None:
        return isinstance(value, list)
    return isinstance(value, dict | list)


_OPENERS = {"{": re.compile(r"\{"), "[": re.compile(r"\["), "": re.compile(r"[{\[]")}


def _opener(shape: Shape) -> str:
    return "{" if shape.keys is not None else "[" if shape.items is not None else ""


def _first_value(text: str, shape: Shape) -> tuple[Any, int, int] | None:
    for tried, match in enumerate(_OPENERS[_opener(shape)].finditer(text)):
        if tried == MAX_STARTS:
            return None
        start = match.start()
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # broken or cut here, or absurdly deep
            continue
        if _looks_like(value, shape):
            return value, start, end
    return None


def _prune(value: Any, shape: Shape, path: str, dropped: list[str]) -> Any:
    if shape.keys is not None and isinstance(value, dict):
        kept = {}
        for key, inner in value.items():
            if key in shape.keys:
                kept[key] = _prune(inner, shape.keys[key], f"{path}{key}.", dropped)
            else:
                dropped.append(path + key)
        return kept
    if shape.items is not None and isinstance(value, list):
        return [_prune(item, shape.items, f"{path}{i}.", dropped) for i, item in enumerate(value)]
    return value


_JSON_WHITESPACE = " \t\n\r"


def salvage(text: str, shape: Shape) -> Salvaged | Unsalvageable:
    """The first JSON value in ``text`` that looks like the reply, stripped of its wrapping.

    Removes a code fence around it, ignores any text before or after it, and drops object keys
    ``shape`` does not have. Never raises; never changes, adds or converts a value. A text with
    no complete value (broken or cut JSON, prose only) is :class:`Unsalvageable`.
    """
    found = _first_value(text, shape)
    if found is None:
        why = (
            "the reply holds no complete JSON value that looks like the reply (broken or cut)"
            if _OPENERS[_opener(shape)].search(text)
            else "the reply holds no JSON value"
        )
        return Unsalvageable(why)
    value, start, end = found
    fixes: list[Fix] = []
    notes: list[str] = []
    before, after = text[:start], text[end:]
    opening = _FENCE_OPEN.fullmatch(before)
    closing = _FENCE_CLOSE.fullmatch(after)
    if opening or closing:
        fixes.append(Fix.CODE_FENCE)
        notes.append("removed a code fence")
        before = opening["prose"] if opening else before
        after = closing["rest"] if closing else after
    # Only JSON's own whitespace is nothing: str.strip() also drops \x1c-\x1f, U+0085 and
    # U+2028, which a JSON parser refuses, so such a reply needs the prose removed too.
    ignored = [
        f"{len(part.strip(_JSON_WHITESPACE))} characters {where}"
        for part, where in ((before, "before"), (after, "after"))
        if part.strip(_JSON_WHITESPACE)
    ]
    if ignored:
        fixes.append(Fix.EXTRA_TEXT)
        notes.append("ignored " + " and ".join(ignored) + " the JSON value")
    dropped: list[str] = []
    value = _prune(value, shape, "", dropped)
    if dropped:
        fixes.append(Fix.UNKNOWN_KEYS)
        named = ", ".join(dropped[:_NAMED_KEYS]) + (", ..." if len(dropped) > _NAMED_KEYS else "")
        notes.append(f"dropped {len(dropped)} key(s) the schema does not have: {named}")
    return Salvaged(value, (start, end), tuple(fixes), tuple(notes))
