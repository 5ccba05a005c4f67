"""The fake's malformed replies: one knob per kind, each kind broken exactly as it says.

The kinds that only get the wrapping wrong (fence, trailing prose, unknown keys) must keep
every value of the good reply; the ones that break a value (out of range, schema violation,
invalid JSON) must not validate. ``consumer.model.salvage`` and the e2e repair-ladder test rely on
both.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from consumer.model.policy import load_policy
from consumer.testing.fake_openai.config import FAULT_KNOBS, FakeConfig
from consumer.testing.fake_openai.faults import MALFORMED_KINDS, REPLY_FAULTS, Dice, Outcome
from consumer.testing.fake_openai.reply import (
    TRAILING_PROSE,
    content_value,
    context_for,
    malformed,
)

POLICY = load_policy()
VALUE: dict[str, Any] = content_value(POLICY.response_format, context_for("I will stab you"))
BATCH: dict[str, Any] = {
    "items": [
        {"index": 0, "scores": {"hate": 0.25, "violence": 0.5}, "rationale": "a"},
        {"index": 1, "scores": {"hate": 0.75, "violence": 0.0}, "rationale": "b"},
    ]
}
KNOBS = {
    "p_invalid_json": Outcome.INVALID_JSON,
    "p_schema_violation": Outcome.SCHEMA_VIOLATION,
    "p_fenced": Outcome.FENCED,
    "p_trailing_prose": Outcome.TRAILING_PROSE,
    "p_unknown_keys": Outcome.UNKNOWN_KEYS,
    "p_out_of_range": Outcome.OUT_OF_RANGE,
}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar of a JSON value by its path."""
    if isinstance(value, dict):
        return {p: v for k, inner in value.items() for p, v in leaves(inner, (*path, k)).items()}
    if isinstance(value, list):
        return {p: v for i, inner in enumerate(value) for p, v in leaves(inner, (*path, i)).items()}
    return {path: value}


def test_the_good_reply_is_valid_and_scores_something() -> None:
    POLICY.reply_model.model_validate(VALUE)
    assert VALUE["scores"]["violence"] >= 0.9


def test_each_kind_has_its_own_knob_and_outcome() -> None:
    assert set(KNOBS) <= set(FAULT_KNOBS)
    assert set(KNOBS.values()) == MALFORMED_KINDS
    assert MALFORMED_KINDS <= REPLY_FAULTS  # never served to the moderations endpoint
    for outcome in MALFORMED_KINDS:  # the outcome's value is the kind ``malformed`` makes
        malformed(VALUE, outcome.value)


@pytest.mark.parametrize("knob", list(KNOBS))
def test_a_knob_draws_its_kind_at_its_share(knob: str) -> None:
    # Any: to mypy a float under a run-time name might be one of BaseSettings' ``_`` options.
    share: dict[str, Any] = {knob: 0.25}
    dice, config = Dice(seed=5), FakeConfig(**share)
    draws = [dice.roll(config) for _ in range(4000)]
    assert set(draws) == {Outcome.OK, KNOBS[knob]}
    assert draws.count(KNOBS[knob]) / len(draws) == pytest.approx(0.25, abs=0.03)


def test_kinds_at_four_percent_each_fit_one_draw() -> None:
    shares: dict[str, Any] = dict.fromkeys(KNOBS, 0.04)
    config = FakeConfig(**shares, p_truncated=0.04)
    dice = Dice(seed=9)
    draws = [dice.roll(config) for _ in range(20000)]
    for outcome in [*KNOBS.values(), Outcome.TRUNCATED]:
        assert draws.count(outcome) / len(draws) == pytest.approx(0.04, abs=0.008)


def test_new_knobs_leave_a_seeded_sequence_of_the_old_ones_as_it_was() -> None:
    # Appended to the draw order: a seed reproduces the same faults it did before.
    old = FakeConfig(p_429=0.2, p_malformed=0.3)
    with_new = FakeConfig(p_429=0.2, p_malformed=0.3, p_fenced=0.1)
    first, second = Dice(seed=3), Dice(seed=3)
    pairs = [(first.roll(old), second.roll(with_new)) for _ in range(3000)]
    assert all(b == a for a, b in pairs if b is not Outcome.FENCED)
    assert all(a is Outcome.OK for a, b in pairs if b is Outcome.FENCED)


@pytest.mark.parametrize("value", [VALUE, BATCH], ids=["single", "batch"])
def test_fenced_keeps_every_value_inside_a_json_fence(value: dict[str, Any]) -> None:
    text = malformed(value, "fenced")
    assert text.startswith("```json\n")
    assert text.endswith("\n```")
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == value
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("value", [VALUE, BATCH], ids=["single", "batch"])
def test_trailing_prose_follows_the_untouched_json(value: dict[str, Any]) -> None:
    text = malformed(value, "trailing_prose")
    body = text.removesuffix(TRAILING_PROSE)
    assert body != text
    assert json.loads(body) == value
    assert TRAILING_PROSE.strip()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("value", [VALUE, BATCH], ids=["single", "batch"])
def test_unknown_keys_add_a_key_to_every_object_and_change_no_value(
    value: dict[str, Any],
) -> None:
    broken = json.loads(malformed(value, "unknown_keys"))
    assert leaves(value).items() <= leaves(broken).items()  # every value where it was
    assert "confidence" in broken

    def objects(node: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        if isinstance(node[0], dict):
            pairs = [(node[0], node[1])]
            for key in node[0]:
                pairs += objects((node[0][key], node[1][key]))
            return pairs
        if isinstance(node[0], list):
            return [p for a, b in zip(*node, strict=True) for p in objects((a, b))]
        return []

    pairs = objects((value, broken))
    assert len(pairs) == (2 if value is VALUE else 5)  # the top, items, scores objects
    for good, bad in pairs:
        assert len(bad) == len(good) + 1


def test_unknown_keys_fail_the_policys_reply_model() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        POLICY.reply_model.model_validate_json(malformed(VALUE, "unknown_keys"))


def test_unknown_keys_never_take_a_name_in_use() -> None:
    broken = json.loads(malformed({"confidence": 1.0, "x": {"note": "n"}}, "unknown_keys"))
    assert broken == {
        "confidence": 1.0,
        "x": {"note": "n", "note_": "not part of the schema"},
        "confidence_": 0.87,
    }


@pytest.mark.parametrize(
    ("value", "where", "bad"),
    [
        (VALUE, ("scores", "violence"), VALUE["scores"]["violence"] * 100),
        (BATCH, ("items", 1, "scores", "hate"), 75.0),  # the largest, not the first
        ({"a": 0.0, "b": 0.01, "n": 7}, ("b",), -0.99),  # x100 is not above 1: negative
        ({"a": 0.5, "b": 0.5}, ("a",), 50.0),  # the first of equals
    ],
    ids=["single", "batch", "small-scores", "ties"],
)
def test_out_of_range_changes_exactly_one_score_to_outside_0_1(
    value: dict[str, Any], where: tuple[Any, ...], bad: float
) -> None:
    broken = json.loads(malformed(value, "out_of_range"))
    before, after = leaves(value), leaves(broken)
    changed = {path for path in before if before[path] != after[path]}
    assert changed == {where}
    assert after[where] == pytest.approx(bad)
    assert not 0.0 <= after[where] <= 1.0


def test_out_of_range_fails_the_policys_reply_model() -> None:
    with pytest.raises(ValueError, match="less than or equal to 1"):
        POLICY.reply_model.model_validate_json(malformed(VALUE, "out_of_range"))


def test_out_of_range_leaves_a_reply_without_a_score_as_it_is() -> None:
    assert malformed("Not flagged: fine.", "out_of_range") == "Not flagged: fine."
    assert json.loads(malformed({"index": 3}, "out_of_range")) == {"index": 3}


def test_invalid_json_and_schema_violation_are_kinds_of_their_own() -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed(VALUE, "invalid_json"))
    broken = json.loads(malformed(VALUE, "schema_violation"))
    assert broken["scores"] == "n/a"
    assert broken["unexpected_field"] is True


def test_an_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown malformed kind"):
        malformed(VALUE, "sideways")
