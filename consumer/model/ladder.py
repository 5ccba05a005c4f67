"""The repair ladder: what a reply's text comes to, and the request that asks for a repair.

A chat reply should be exactly one JSON value that the reply model (:mod:`consumer.model.policy`)
validates. The ladder, in the order the Classifier (:mod:`consumer.model.classify`) climbs it:

1. **valid**: the text validates as it is (usage outcome ``ok``).
2. **salvaged**: only the wrapping is wrong (a code fence, text around the value, unknown
   keys), and :func:`consumer.model.salvage.salvage` removes it locally and at no cost; what is
   left is validated exactly as a valid reply is (usage outcome ``salvaged``).
3. **repair**: the Classifier asks the model again, showing the problem (:func:`read`) and
   restating the schema (:func:`repair_request`); the new reply climbs the ladder from rung 1.
   At most :data:`MAX_REPAIRS` repairs (usage outcome ``invalid_reply`` for each reply that
   needed one, ``repaired`` for a repair's reply that is used). A reply cut by ``length`` first
   gets a retry with twice the budget (the Classifier's rule); cut again, it takes a repair
   rung too.
4. **dead letter**: still invalid after the second repair, ``InvalidReply``.

The batch path (:mod:`consumer.model.batch`) uses rungs 1 and 2; its repair is one call per
message. Everything here is pure: text and schemas in, values and reasons out, no I/O, no state.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from consumer.errors import describe_validation_error
from consumer.model.salvage import Salvaged, Unsalvageable, reply_shape, resolve_ref, salvage

__all__ = ["MAX_REPAIRS", "Reading", "describe", "read", "repair_request", "schema_reminder"]

#: Repair requests one message's conversation may make before its reply is a dead letter.
MAX_REPAIRS = 2


@dataclass(frozen=True, slots=True)
class Reading:
    """What :func:`read` made of a reply: the validated reply, or the problem in words."""

    reply: BaseModel | None
    #: Set when the reply (or the problem) comes from a salvaged value.
    salvaged: Salvaged | None = None
    problem: str = ""


def describe(exc: ValidationError) -> str:
    """A reply's validation error in a few words the model (and a person) can act on."""
    return describe_validation_error(exc, whole="reply", most=5)


def read(text: str, model: type[BaseModel]) -> Reading:
    """Rungs 1 and 2 of the ladder: ``text`` validated as it is, else salvaged and validated.

    The problem, when neither works, is the salvaged value's (what the values got wrong, with
    the notes on the wrapping removed), or the text's own when nothing could be salvaged.
    """
    try:
        return Reading(model.model_validate_json(text))
    except ValidationError as exc:
        first = exc
    found = salvage(text, reply_shape(model))
    if isinstance(found, Unsalvageable):
        return Reading(None, problem=describe(first))
    if not found.fixes:  # nothing to remove: the same text, the same verdict
        return Reading(None, problem=describe(first))
    try:
        return Reading(model.model_validate_json(found.json), found)
    except ValidationError as exc:
        notes = "; ".join(found.notes)
        return Reading(None, found, f"{describe(exc)} (besides: {notes})")


def repair_request(problem: str, model: type[BaseModel]) -> str:
    """The user message of a repair: what was wrong, and the schema again, bounds included."""
    return (
        f"That reply is invalid: {problem}. Reply again with only JSON that matches the schema: "
        "one object of exactly this form, every key present and no other keys, no code fence "
        f"and no other text: {schema_reminder(model)}"
    )


@functools.cache
def schema_reminder(model: type[BaseModel]) -> str:
    """The reply's form in one line, bounds included, for a repair request: e.g.
    ``{"scores": {"hate": a number from 0.0 to 1.0, ...}, "rationale": a string of at most
    1000 characters}``."""
    schema = model.model_json_schema(by_alias=True)
    return _outline(schema, schema, frozenset())


def _outline(node: Any, root: Mapping[str, Any], refs: frozenset[str]) -> str:
    if not isinstance(node, Mapping):
        return "any value"
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and ref not in refs:
        return _outline(resolve_ref(ref, root), root, refs | {ref})
    kind = node.get("type")
    properties = node.get("properties")
    if isinstance(properties, Mapping):
        inner = ", ".join(
            f"{json.dumps(k)}: {_outline(v, root, refs)}" for k, v in properties.items()
        )
        return "{" + inner + "}"
    if kind == "array":
        return "[" + _outline(node.get("items"), root, refs) + ", ...]"
    if kind in ("number", "integer"):
        noun = "a number" if kind == "number" else "an integer"
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and high is not None:
            return f"{noun} from {low} to {high}"
        if low is not None:
            return f"{noun} of at least {low}"
        return f"{noun} of at most {high}" if high is not None else noun
    if kind == "string":
        most = node.get("maxLength")
        return "a string" + (f" of at most {most} characters" if most is not None else "")
    if kind == "boolean":
        return "true or false"
    return json.dumps(dict(node), separators=(",", ":"))
