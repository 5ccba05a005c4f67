"""salvage: the repair ladder's local rungs, by property (hypothesis) and by example.

- any valid reply, wrapped (code fence, prose before or after, unknown keys at any depth),
  salvages to exactly the same values, and reads to exactly the same reply model;
- salvage never returns a value the text does not hold at the place it says, nor a key the
  schema lacks; it never raises;
- what it cannot salvage (cut or broken JSON, prose only, wrong values) is reported as such,
  never "fixed": no value is invented, converted or clamped.
"""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from consumer.model.batch import BatchFormat
from consumer.model.ladder import read, repair_request, schema_reminder
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.model.salvage import (
    ANY,
    MAX_STARTS,
    Fix,
    Salvaged,
    Shape,
    Unsalvageable,
    reply_shape,
    salvage,
    shape_of,
)

POLICY = load_policy()
MODEL: type[BaseModel] = POLICY.reply_model
SHAPE = reply_shape(MODEL)
FIELDS = [c.field for c in POLICY.categories]
BATCH = BatchFormat.of(PromptBuilder(POLICY, load_prompt()), "gpt-4o-mini")

# ---- strategies ----------------------------------------------------------------------------

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False) | st.sampled_from([0, 1])
replies = st.fixed_dictionaries(
    {
        "scores": st.fixed_dictionaries({f: scores for f in FIELDS}),
        "rationale": st.text(max_size=200),
    }
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
unknown_names = st.text(string.ascii_letters + "_-", min_size=1, max_size=12).filter(
    lambda k: k not in {"scores", "rationale", *FIELDS}
)
#: Prose before the value: anything without a brace (a brace could open another value).
leading = st.text(max_size=40).filter(lambda t: "{" not in t)
#: Prose after the value: anything at all.
trailing = st.text(max_size=60)


@st.composite
def wrapped(draw: st.DrawFn) -> tuple[dict[str, Any], str, set[Fix]]:
    """A valid reply, the text it was wrapped into, and the fixes the wrapping calls for."""
    reply = draw(replies)
    value: dict[str, Any] = json.loads(json.dumps(reply))
    fixes: set[Fix] = set()
    extra_top = draw(st.dictionaries(unknown_names, json_values, max_size=3))
    extra_scores = draw(st.dictionaries(unknown_names, json_values, max_size=3))
    if extra_top or extra_scores:
        fixes.add(Fix.UNKNOWN_KEYS)
    # Unknown keys anywhere in the order: before, between and after the schema's own.
    top = list({**value, **extra_top}.items())
    inner = list({**value["scores"], **extra_scores}.items())
    top = draw(st.permutations(top))
    inner = draw(st.permutations(inner))
    sent = {k: (dict(inner) if k == "scores" else v) for k, v in top}
    indent = draw(st.sampled_from([None, 2]))
    text = json.dumps(sent, indent=indent, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        fence = draw(st.sampled_from(["```json\n", "```JSON\n", "```\n", "~~~json\n", "```"]))
        close = draw(st.sampled_from(["\n```", "```", "\n```\n", ""]))
        text = fence + text + close
        fixes.add(Fix.CODE_FENCE)
    before, after = draw(leading), draw(trailing)
    if before.strip(" \t\n\r") or after.strip(" \t\n\r"):  # beyond JSON's whitespace
        fixes.add(Fix.EXTRA_TEXT)
    return value, before + text + after, fixes


def leaves(value: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    if isinstance(value, dict):
        return {p: v for k, inner in value.items() for p, v in leaves(inner, (*path, k)).items()}
    if isinstance(value, list):
        return {p: v for i, inner in enumerate(value) for p, v in leaves(inner, (*path, i)).items()}
    return {path: value}


def keys_in_shape(value: Any, shape: Shape) -> bool:
    if shape.keys is not None and isinstance(value, dict):
        return all(k in shape.keys and keys_in_shape(v, shape.keys[k]) for k, v in value.items())
    if shape.items is not None and isinstance(value, list):
        return all(keys_in_shape(item, shape.items) for item in value)
    return True


# ---- properties ----------------------------------------------------------------------------


def test_a_control_character_after_the_json_is_text_to_ignore() -> None:
    """Python's str.strip() drops \x1f and U+2028; a JSON parser does not (found by hypothesis)."""
    value = {"scores": dict.fromkeys(FIELDS, 0.0), "rationale": ""}
    for tail in ("\x1f", "\u2028", "\x85"):
        reading = read(json.dumps(value) + tail, MODEL)
        assert reading.reply is not None, repr(tail)
        assert reading.salvaged is not None and Fix.EXTRA_TEXT in reading.salvaged.fixes


@settings(max_examples=300)
@given(wrapped())
def test_any_wrapped_valid_reply_salvages_to_exactly_its_values(
    case: tuple[dict[str, Any], str, set[Fix]],
) -> None:
    value, text, fixes = case
    found = salvage(text, SHAPE)
    assert isinstance(found, Salvaged)
    assert found.value == value
    assert set(found.fixes) == fixes
    assert len(found.notes) == len(found.fixes)
    reading = read(text, MODEL)
    assert reading.reply is not None
    expected = MODEL.model_validate(value).model_dump(by_alias=True)
    assert reading.reply.model_dump(by_alias=True) == expected
    # Salvage is only for what failed as it was: an untouched valid reply is not "salvaged".
    assert (reading.salvaged is None) == (not fixes)


def check_only_the_texts_values(text: str, shape: Shape) -> None:
    found = salvage(text, shape)  # never raises
    if isinstance(found, Unsalvageable):
        assert found.reason
        return
    start, end = found.span
    held = json.loads(text[start:end])
    assert leaves(found.value).items() <= leaves(held).items()  # each value where the text had it
    assert keys_in_shape(found.value, shape)
    assert json.loads(found.json) == found.value


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_salvage_of_any_text_returns_only_the_texts_values(text: str) -> None:
    check_only_the_texts_values(text, SHAPE)


@st.composite
def jsonish(draw: st.DrawFn) -> str:
    """Texts made of reply fragments, braces and prose: closer to what models send."""
    reply = json.dumps(draw(replies))
    pieces = draw(
        st.lists(
            st.sampled_from(
                [reply, reply[: len(reply) // 2], "{", "}", "[", "]", '"scores"', ":", ",",
                '{"scores": 1}', '{"rationale": "x"}', "```json\n", "```", "NaN", " prose "]
            ),
            max_size=8,
        )
    )  # fmt: skip
    return "".join(pieces)


@settings(max_examples=300)
@given(jsonish())
def test_salvage_of_reply_fragments_returns_only_the_texts_values(text: str) -> None:
    check_only_the_texts_values(text, SHAPE)
    check_only_the_texts_values(text, reply_shape(BATCH.reply_model))
    check_only_the_texts_values(text, ANY)


@settings(max_examples=200)
@given(replies, st.data())
def test_a_cut_reply_is_unsalvageable(reply: dict[str, Any], data: st.DataObject) -> None:
    text = json.dumps(reply)
    cut = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    found = salvage(text[:cut], SHAPE)
    assert isinstance(found, Unsalvageable)
    assert read(text[:cut], MODEL).reply is None


@settings(max_examples=200)
@given(
    replies,
    st.sampled_from(FIELDS),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not 0.0 <= x <= 1.0),
    st.booleans(),
)
def test_a_score_out_of_range_is_never_clamped(
    reply: dict[str, Any], field: str, bad: float, fenced: bool
) -> None:
    reply["scores"][field] = bad
    text = json.dumps(reply)
    text = f"```json\n{text}\n```" if fenced else text
    reading = read(text, MODEL)
    assert reading.reply is None
    assert f"scores.{field}" in reading.problem
    if fenced:  # the wrapping was understood; the value is for the model to fix
        assert reading.salvaged is not None
        assert reading.salvaged.value["scores"][field] == bad


@settings(max_examples=100)
@given(replies, st.sampled_from(FIELDS))
def test_a_missing_score_is_never_invented(reply: dict[str, Any], field: str) -> None:
    del reply["scores"][field]
    text = json.dumps({**reply, "confidence": 0.5}) + "\nDone."
    reading = read(text, MODEL)
    assert reading.reply is None
    assert f"scores.{field}: Field required" in reading.problem
    assert "dropped 1 key(s) the schema does not have: confidence" in reading.problem


# ---- examples ------------------------------------------------------------------------------

GOOD: dict[str, Any] = {"scores": dict.fromkeys(FIELDS, 0.25), "rationale": "r"}


def test_a_valid_reply_reads_without_salvage() -> None:
    reading = read(json.dumps(GOOD), MODEL)
    assert reading.reply is not None
    assert reading.salvaged is None
    assert reading.problem == ""


@pytest.mark.parametrize(
    ("text", "notes"),
    [
        (
            "```json\n" + json.dumps(GOOD) + "\n```",
            ("removed a code fence",),
        ),
        (
            "Here you go: " + json.dumps(GOOD) + " Hope it helps.",
            ("ignored 12 characters before and 14 characters after the JSON value",),
        ),
        (
            json.dumps({**GOOD, "scores": {**GOOD["scores"], "spam": 0.1}, "x": 1}),
            ("dropped 2 key(s) the schema does not have: scores.spam, x",),
        ),
    ],
    ids=["fence", "prose", "keys"],
)
def test_notes_say_what_was_removed(text: str, notes: tuple[str, ...]) -> None:
    found = salvage(text, SHAPE)
    assert isinstance(found, Salvaged)
    assert found.notes == notes
    assert found.value == GOOD


def test_the_first_value_that_looks_like_the_reply_wins() -> None:
    other = {**GOOD, "rationale": "second"}
    text = '{"note": "not the reply"} ' + json.dumps(GOOD) + json.dumps(other)
    found = salvage(text, SHAPE)
    assert isinstance(found, Salvaged)
    assert found.value == GOOD
    assert found.fixes == (Fix.EXTRA_TEXT,)


def test_an_inner_object_of_a_broken_reply_is_not_taken_for_the_reply() -> None:
    broken = json.dumps(GOOD)[:-1] + ",}"  # a trailing comma: the outer object never parses
    found = salvage(broken, SHAPE)
    assert isinstance(found, Unsalvageable)
    reading = read(broken, MODEL)
    assert reading.reply is None
    assert "Invalid JSON" in reading.problem  # the text's own problem, not the inner object's


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(GOOD).replace("0.25", "NaN", 1),
        json.dumps(GOOD).replace("0.25", "Infinity", 1),
        json.dumps(GOOD)[:-1] + ', "rationale": "again"}',
    ],
    ids=["nan", "infinity", "duplicate-key"],
)
def test_non_json_constants_and_duplicate_keys_are_not_salvaged(text: str) -> None:
    assert isinstance(salvage("```json\n" + text + "\n```", SHAPE), Unsalvageable)


def test_a_text_full_of_braces_costs_a_bounded_scan() -> None:
    text = "{" * (MAX_STARTS * 10) + json.dumps(GOOD)
    assert isinstance(salvage(text, SHAPE), Unsalvageable)
    assert isinstance(salvage("{" * (MAX_STARTS - 1) + json.dumps(GOOD), SHAPE), Salvaged)


def test_prose_only_is_unsalvageable() -> None:
    found = salvage("The content is fine.", SHAPE)
    assert found == Unsalvageable("the reply holds no JSON value")


def test_shape_of_follows_refs_and_prunes_only_closed_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "closed": {"$ref": "#/$defs/Closed"},
            "open": {"type": "object", "properties": {"a": {}}},
            "list": {"type": "array", "items": {"$ref": "#/$defs/Closed"}},
            "self": {"$ref": "#"},
        },
        "additionalProperties": False,
        "$defs": {
            "Closed": {"type": "object", "properties": {"x": {}}, "additionalProperties": False}
        },
    }
    shape = shape_of(schema)
    assert shape.keys is not None
    closed = Shape(keys={"x": ANY})
    assert shape.keys["closed"] == closed
    assert shape.keys["open"] == ANY  # other keys allowed: none is unknown
    assert shape.keys["list"] == Shape(items=closed)
    assert shape.keys["self"] == ANY  # recursion stops, nothing pruned below
    value = {"closed": {"x": 1, "y": 2}, "open": {"z": 3}, "list": [{"x": 1, "w": 0}], "q": 0}
    found = salvage(json.dumps(value), shape)
    assert isinstance(found, Salvaged)
    assert found.value == {"closed": {"x": 1}, "open": {"z": 3}, "list": [{"x": 1}]}


def test_the_batch_reply_salvages_too() -> None:
    items = [{"index": i, **GOOD, "extra": True} for i in range(3)]
    text = "```json\n" + json.dumps({"items": items}) + "\n```"
    found = salvage(text, reply_shape(BATCH.reply_model))
    assert isinstance(found, Salvaged)
    assert found.value == {"items": [{"index": i, **GOOD} for i in range(3)]}
    assert set(found.fixes) == {Fix.CODE_FENCE, Fix.UNKNOWN_KEYS}


def test_the_repair_request_restates_the_schema_with_its_bounds() -> None:
    reminder = schema_reminder(MODEL)
    assert reminder.startswith('{"scores": {"harassment": a number from 0.0 to 1.0, ')
    assert reminder.endswith('"rationale": a string of at most 1000 characters}')
    assert all(f'"{f}": a number from 0.0 to 1.0' in reminder for f in FIELDS)
    request = repair_request("scores.hate: Field required", MODEL)
    assert request.startswith("That reply is invalid: scores.hate: Field required.")
    assert reminder in request
    assert "no code fence" in request
    batch = schema_reminder(BATCH.reply_model)
    assert batch.startswith('{"items": [{"index": an integer of at least 0, "scores": {')
