"""The fake's JSON Schema instance generator: instances validate, values are moderation-shaped.

jsonschema is not installed, so validity is checked the other way round: schemas are generated
from pydantic models (exactly as the openai SDK sends them, strict) and each instance must pass
the model's own strict validation.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Literal, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, ConfigDict, Field, create_model

from consumer.testing.fake_openai.heuristic import KEYS
from consumer.testing.fake_openai.instances import SchemaError, generate
from consumer.testing.fake_openai.reply import context_for

CATEGORY_FIELDS = list(KEYS)

MAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "scores": {
            "type": "object",
            "properties": {c: {"type": "number"} for c in CATEGORY_FIELDS},
            "required": CATEGORY_FIELDS,
            "additionalProperties": False,
        },
        "rationale": {"type": "string"},
    },
    "required": ["scores", "rationale"],
    "additionalProperties": False,
}

BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "scores": MAIN_SCHEMA["properties"]["scores"],
                    "rationale": {"type": "string"},
                },
                "required": ["index", "scores", "rationale"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}

Scores = create_model(  # type: ignore[call-overload]
    "Scores", __config__=ConfigDict(extra="forbid"), **{c: (float, ...) for c in CATEGORY_FIELDS}
)


class Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scores: Scores
    rationale: str


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    children: list[Node]


class Rich(BaseModel):
    """Most of what strict mode allows: $defs/$ref, recursion, anyOf, enum, const, bounds."""

    model_config = ConfigDict(extra="forbid")
    violence_score: float = Field(ge=0, le=1)
    severity: int = Field(ge=1, lt=5)
    action: Literal["allow", "review", "block"]
    version: Literal["v1"]
    note: Optional[str]  # noqa: UP045  (the anyOf-with-null spelling on purpose)
    flagged: bool
    categories: list[Literal["violence", "hate", "sexual"]]
    tree: Node | None
    reviewed_at: str = Field(json_schema_extra={"format": "date-time"})


TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(["you idiot", "I will kill you", "nice day", "cocaine", "gore", "hello"]),
        max_size=5,
    ).map(" ".join),
)


def check(model: type[BaseModel], schema: dict[str, Any], text: str) -> Any:
    instance = generate(schema, context_for(text))
    model.model_validate_json(json.dumps(instance), strict=True)
    return instance


@given(TEXTS)
def test_main_classifier_schema_instances_validate(text: str) -> None:
    check(Reply, MAIN_SCHEMA, text)


@given(TEXTS)
def test_rich_schema_instances_validate(text: str) -> None:
    check(Rich, to_strict_json_schema(Rich), text)


# -- random models --------------------------------------------------------------------------

_names = itertools.count()
FIELD_NAMES = st.sampled_from(
    ["violence", "harassment_threatening", "self_harm_score", "index", "rationale", "flagged",
     "action", "label", "count", "value", "safe", "hate"]
)  # fmt: skip
ENUM_VALUES = st.lists(
    st.sampled_from(["allow", "review", "block", "violence", "hate", "x", "y"]),
    min_size=1,
    max_size=4,
    unique=True,
)


@st.composite
def bounded_int(draw: st.DrawFn) -> Any:
    low = draw(st.integers(-5, 5))
    width = draw(st.integers(1, 10))
    return (int, Field(ge=low, lt=low + width))


@st.composite
def bounded_float(draw: st.DrawFn) -> Any:
    low = draw(st.floats(-10, 10, allow_nan=False))
    width = draw(st.floats(0.5, 100, allow_nan=False))
    if draw(st.booleans()):
        return (float, Field(gt=low, lt=low + width))
    return (float, Field(ge=low, le=low + width))


LEAVES = st.one_of(
    st.just((float, ...)),
    st.just((int, ...)),
    st.just((bool, ...)),
    st.just((str, ...)),
    st.builds(lambda n: (str, Field(max_length=n)), st.integers(0, 30)),
    bounded_int(),
    bounded_float(),
    ENUM_VALUES.map(lambda vs: (Literal[tuple(vs)], ...)),
)


def _model(fields: dict[str, Any]) -> Any:
    return (create_model(f"M{next(_names)}", __config__=ConfigDict(extra="forbid"), **fields), ...)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        children.map(lambda c: (list[c[0]], ...)),  # type: ignore[valid-type]
        st.builds(lambda c, n: (list[c[0]], Field(min_length=n)), children, st.integers(0, 3)),  # type: ignore[valid-type]
        children.map(lambda c: (Optional[c[0]], ...)),  # noqa: UP045
        st.dictionaries(FIELD_NAMES, children, min_size=1, max_size=4).map(_model),
    )


MODELS = st.dictionaries(
    FIELD_NAMES, st.recursive(LEAVES, _extend, max_leaves=12), min_size=1, max_size=6
).map(lambda fields: _model(fields)[0])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(MODELS, TEXTS)
def test_random_model_schemas_instances_validate(model: type[BaseModel], text: str) -> None:
    check(model, to_strict_json_schema(model), text)
    check(model, model.model_json_schema(), text)  # the non-strict spelling too


# -- moderation-shaped values ---------------------------------------------------------------


def test_category_numbers_follow_the_keywords() -> None:
    reply = generate(MAIN_SCHEMA, context_for("<content>I will stab him</content>"))
    assert reply["scores"]["violence"] >= 0.9
    assert 0.05 < reply["scores"]["violence_graphic"] < 0.2  # subcategory: parent's hit, lower
    assert reply["scores"]["sexual"] < 0.1
    assert reply["rationale"] == "matched keywords: stab"


def test_benign_content_scores_low_with_a_plain_rationale() -> None:
    reply = generate(MAIN_SCHEMA, context_for("What a lovely morning"))
    assert max(reply["scores"].values()) <= 0.05
    assert reply["rationale"] == "no policy keywords found"


def test_only_the_content_block_is_judged() -> None:
    text = "Score violence and attack vectors.\n<content>\nhave a nice day\n</content>"
    assert max(generate(MAIN_SCHEMA, context_for(text))["scores"].values()) <= 0.05


def test_batch_form_has_one_item_per_numbered_block() -> None:
    text = (
        'Judge each block.\n<content index="3">you idiot</content>\n'
        '<content index="7">lovely weather</content>\n<content index="9">buy cocaine</content>'
    )
    items = generate(BATCH_SCHEMA, context_for(text))["items"]
    assert [item["index"] for item in items] == [3, 7, 9]
    assert items[0]["scores"]["harassment"] >= 0.9
    assert max(items[1]["scores"].values()) <= 0.05
    assert items[2]["scores"]["illicit"] >= 0.9
    assert items[2]["rationale"] == "matched keywords: cocaine"


def test_batch_form_without_blocks_is_one_item_at_index_zero() -> None:
    items = generate(BATCH_SCHEMA, context_for("you are a loser"))["items"]
    assert len(items) == 1
    assert items[0]["index"] == 0
    assert items[0]["scores"]["harassment"] >= 0.9


def test_enums_and_booleans_read_the_verdict() -> None:
    schema = to_strict_json_schema(Rich)
    bad = generate(schema, context_for("I will kill you"))
    good = generate(schema, context_for("thanks for the help"))
    assert (bad["action"], bad["flagged"], bad["categories"]) == ("block", True, ["violence"])
    assert (good["action"], good["flagged"], good["categories"]) == ("allow", False, [])


def test_category_integers_on_a_wider_scale_are_stretched() -> None:
    schema = {
        "type": "object",
        "properties": {"violence": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["violence"],
    }
    assert generate(schema, context_for("murder"))["violence"] >= 90
    assert generate(schema, context_for("hello"))["violence"] <= 5


def test_a_free_form_score_map_gets_every_category() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "number"}}
    assert set(generate(schema, context_for("hi"))) == set(CATEGORY_FIELDS)


def test_recursive_schema_terminates() -> None:
    instance = generate(to_strict_json_schema(Node), context_for("x"))
    depth = 0
    while instance["children"]:
        instance, depth = instance["children"][0], depth + 1
    assert 0 < depth < 10


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "https://example.com/schema.json"},
        {"$ref": "#/$defs/Missing"},
        {"type": "integer", "minimum": 3, "maximum": 2},
        {"enum": []},
        {"type": "tuple"},
        {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
    ],
)
def test_unusable_schemas_raise_schema_error(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        generate(schema, context_for("x"))


def test_properties_come_in_schema_order() -> None:
    schema = to_strict_json_schema(Reply)
    assert list(generate(schema, context_for("x"))) == ["scores", "rationale"]
    reordered = {**schema, "properties": dict(reversed(list(schema["properties"].items())))}
    assert list(generate(reordered, context_for("x"))) == ["rationale", "scores"]
