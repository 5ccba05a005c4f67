"""policy: scores -> decision, the private reply model, the strict response format, loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from consumer.errors import ConfigError
from consumer.model.policy import Category, Policy, Prompt, PromptBuilder, load_policy, load_prompt
from schemas import Action

SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}


def policy(*cats: tuple[str, float, str], refusal: str = "review") -> Policy:
    return Policy.model_validate(
        {
            "version": "t1",
            "refusal_action": refusal,
            "categories": [
                {"name": n, "description": f"about {n}", "threshold": t, "action": a}
                for n, t, a in cats
            ],
        }
    )


SMALL = policy(("hate", 0.5, "block"), ("spam", 0.3, "review"), ("meh", 0.2, "allow"))


def scores(p: Policy, **given_scores: float) -> dict[str, float]:
    return {c.name: given_scores.get(c.field, 0.0) for c in p.categories}


# ---- decide ------------------------------------------------------------------------------


def test_nothing_flagged_allows() -> None:
    flagged, action, results = SMALL.decide(scores(SMALL))
    assert (flagged, action) == (False, Action.ALLOW)
    assert set(results) == {"hate", "spam", "meh"}
    assert not any(r.flagged for r in results.values())


@pytest.mark.parametrize(
    ("score", "hit"),
    [(0.5, True), (0.5000001, True), (0.4999999, False), (1.0, True), (0.0, False)],
)
def test_threshold_edge_score_equal_to_threshold_flags(score: float, hit: bool) -> None:
    flagged, action, results = SMALL.decide(scores(SMALL, hate=score))
    assert results["hate"].flagged is hit
    assert results["hate"].score == score
    assert flagged is hit
    assert action == (Action.BLOCK if hit else Action.ALLOW)


def test_zero_threshold_always_flags() -> None:
    p = policy(("x", 0.0, "review"))
    assert p.decide({"x": 0.0})[:2] == (True, Action.REVIEW)


def test_action_is_most_severe_among_flagged() -> None:
    assert SMALL.decide(scores(SMALL, spam=0.9, meh=0.9))[1] == Action.REVIEW
    assert SMALL.decide(scores(SMALL, spam=0.9, hate=0.5))[1] == Action.BLOCK
    assert SMALL.decide(scores(SMALL, hate=0.5, meh=0.9))[1] == Action.BLOCK
    # hate scores high but below its threshold: it does not count
    assert SMALL.decide(scores(SMALL, hate=0.49, spam=0.3))[1] == Action.REVIEW


def test_flagged_allow_category_is_flagged_but_allowed() -> None:
    flagged, action, results = SMALL.decide(scores(SMALL, meh=0.2))
    assert flagged is True
    assert results["meh"].flagged is True
    assert action == Action.ALLOW


def test_missing_score_is_an_error_not_a_zero() -> None:
    with pytest.raises(KeyError):
        SMALL.decide({"hate": 0.1, "spam": 0.1})


@given(
    base=st.dictionaries(st.sampled_from(["hate", "spam", "meh"]), st.floats(0, 1)),
    bumps=st.dictionaries(st.sampled_from(["hate", "spam", "meh"]), st.floats(0, 1)),
)
def test_action_severity_is_monotone_in_scores(
    base: dict[str, float], bumps: dict[str, float]
) -> None:
    low = scores(SMALL, **base)
    high = {name: min(1.0, low[name] + bumps.get(name, 0.0)) for name in low}
    f_low, a_low, r_low = SMALL.decide(low)
    f_high, a_high, r_high = SMALL.decide(high)
    assert SEVERITY[a_high] >= SEVERITY[a_low]
    assert f_high >= f_low
    assert all(r_high[n].flagged >= r_low[n].flagged for n in low)


@given(st.lists(st.floats(0, 1), min_size=13, max_size=13))
def test_default_policy_decision_matches_definition(values: list[float]) -> None:
    p = load_policy()
    s = {c.name: v for c, v in zip(p.categories, values, strict=True)}
    flagged, action, results = p.decide(s)
    hits = [c for c in p.categories if s[c.name] >= c.threshold]
    assert flagged == bool(hits)
    expected = max((c.action for c in hits), key=SEVERITY.__getitem__, default=Action.ALLOW)
    assert action == expected
    assert {n for n, r in results.items() if r.flagged} == {c.name for c in hits}


# ---- the model's reply --------------------------------------------------------------------


def valid_reply(p: Policy) -> dict[str, Any]:
    return {"scores": {c.field: 0.1 for c in p.categories}, "rationale": "fine"}


def test_reply_model_accepts_a_full_reply_and_maps_back_to_names() -> None:
    p = load_policy()
    reply = p.reply_model.model_validate(valid_reply(p))
    got = p.scores_from_reply(reply)
    assert set(got) == {c.name for c in p.categories}
    assert "self-harm/intent" in got
    assert all(v == 0.1 for v in got.values())


def _drop_score(r: dict[str, Any]) -> None:
    del r["scores"]["hate"]


def _extra_score(r: dict[str, Any]) -> None:
    r["scores"]["weather"] = 0.1


def _extra_top(r: dict[str, Any]) -> None:
    r["verdict"] = "allow"


def _no_rationale(r: dict[str, Any]) -> None:
    del r["rationale"]


def _set(key: str, value: Any) -> Any:
    def mutate(r: dict[str, Any]) -> None:
        r["scores"][key] = value

    return mutate


def _long_rationale(r: dict[str, Any]) -> None:
    r["rationale"] = "x" * 1001


def _name_not_field(r: dict[str, Any]) -> None:
    r["scores"]["self-harm/intent"] = r["scores"].pop("self_harm_intent")


@pytest.mark.parametrize(
    "mutate",
    [
        _drop_score,
        _extra_score,
        _extra_top,
        _no_rationale,
        _set("hate", 1.01),
        _set("hate", -0.01),
        _set("hate", "high"),
        _set("hate", None),
        _long_rationale,
        _name_not_field,
    ],
)
def test_reply_model_rejects(mutate: Any) -> None:
    p = load_policy()
    reply = valid_reply(p)
    mutate(reply)
    with pytest.raises(ValidationError):
        p.reply_model.model_validate(reply)


@pytest.mark.parametrize("edge", [0.0, 1.0])
def test_reply_model_accepts_score_bounds(edge: float) -> None:
    p = load_policy()
    reply = valid_reply(p)
    reply["scores"]["hate"] = edge
    assert p.scores_from_reply(p.reply_model.model_validate(reply))["hate"] == edge


def _objects(schema: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found.extend(_objects(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(_objects(value))
    return found


@pytest.mark.parametrize("p", [load_policy(), SMALL], ids=["default", "small"])
def test_response_format_is_strict_json_schema(p: Policy) -> None:
    fmt = p.response_format
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["name"]
    schema = fmt["json_schema"]["schema"]
    objects = _objects(schema)
    assert len(objects) == 2  # the reply and its scores
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert list(schema["properties"]["scores"]["properties"]) == [c.field for c in p.categories]


def test_response_format_and_reply_model_agree() -> None:
    """What the strict schema demands is exactly what the reply model accepts."""
    p = load_policy()
    scores_schema = p.response_format["json_schema"]["schema"]["properties"]["scores"]
    reply_fields = p.reply_model.model_fields["scores"].annotation.model_fields  # type: ignore[union-attr]
    assert set(scores_schema["properties"]) == {f.alias or n for n, f in reply_fields.items()}


# ---- category names -----------------------------------------------------------------------


def test_slash_names_map_to_distinct_fields() -> None:
    p = load_policy()
    fields = [c.field for c in p.categories]
    assert len(set(fields)) == len(fields) == 13
    assert {"self_harm", "self_harm_intent", "self_harm_instructions", "sexual_minors"} <= set(
        fields
    )
    assert all(f.replace("_", "").isalnum() and f == f.lower() for f in fields)


@pytest.mark.parametrize(
    ("a", "b"),
    [("self-harm", "self/harm"), ("Hate", "hate"), ("a b", "a_b"), ("x/", "x")],
)
def test_field_name_collision_is_rejected(a: str, b: str) -> None:
    with pytest.raises(ValidationError, match="distinct"):
        policy((a, 0.5, "block"), (b, 0.5, "review"))


def test_name_with_no_usable_characters_is_rejected() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        policy(("///", 0.5, "block"))


@pytest.mark.parametrize(
    "name", ["model config", "model-dump", "model_validate", "json", "copy", "schema", "123"]
)
def test_any_category_name_works_in_the_reply_model(
    name: str, recwarn: pytest.WarningsRecorder
) -> None:
    """Names that are also BaseModel members must not break (or silently reject) replies."""
    p = policy((name, 0.5, "block"), ("hate", 0.5, "review"))
    field = p.categories[0].field
    reply = p.reply_model.model_validate_json(
        f'{{"scores": {{"{field}": 0.7, "hate": 0.1}}, "rationale": "r"}}'
    )
    assert p.scores_from_reply(reply) == {name: 0.7, "hate": 0.1}
    assert p.decide(p.scores_from_reply(reply))[1] == Action.BLOCK
    with pytest.raises(ValidationError, match=field):
        p.reply_model.model_validate({"scores": {"hate": 0.1}, "rationale": "r"})
    assert [str(w.message) for w in recwarn] == []


def test_category_field_is_a_plain_identifier() -> None:
    cat = Category(name="Self-Harm/Intent!", description="d", threshold=0.5, action=Action.REVIEW)
    assert cat.field == "self_harm_intent"


# ---- loading ------------------------------------------------------------------------------


def test_defaults_load() -> None:
    p = load_policy()
    assert p.version == "openai-taxonomy-1"
    assert p.refusal_action == Action.REVIEW
    prompt = load_prompt()
    assert prompt.version
    assert "{" not in prompt.system


GOOD_POLICY = {
    "version": "p1",
    "categories": [{"name": "hate", "description": "d", "threshold": 0.5, "action": "block"}],
}
GOOD_PROMPT = {
    "version": "q1",
    "system": "Judge the content.",
    "user": "{context_block}<content>\n{content}\n</content>",
    "context": "<context>{context}</context>",
}


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_good_files_load(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "p.yaml", GOOD_POLICY)).version == "p1"
    assert load_prompt(write(tmp_path, "q.yaml", GOOD_PROMPT)).version == "q1"


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


BAD_POLICIES = {
    "not yaml": "version: [unclosed\n  categories: {",
    "not a mapping": "- just\n- a list\n",
    "empty file": "",
    "no version": _with(GOOD_POLICY, version=...),
    "no categories": _with(GOOD_POLICY, categories=[]),
    "extra field": _with(GOOD_POLICY, owner="me"),
    "bad action": _with(
        GOOD_POLICY,
        categories=[{"name": "h", "description": "d", "threshold": 0.5, "action": "ban"}],
    ),
    "threshold above 1": _with(
        GOOD_POLICY,
        categories=[{"name": "h", "description": "d", "threshold": 1.5, "action": "block"}],
    ),
    "extra category field": _with(
        GOOD_POLICY,
        categories=[{"name": "h", "description": "d", "threshold": 0.5, "action": "block", "x": 1}],
    ),
    "field collision": _with(
        GOOD_POLICY,
        categories=[
            {"name": "self-harm", "description": "d", "threshold": 0.5, "action": "block"},
            {"name": "self/harm", "description": "d", "threshold": 0.5, "action": "block"},
        ],
    ),
    "bad refusal action": _with(GOOD_POLICY, refusal_action="shrug"),
}


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_bad_policy_file_is_a_config_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, "my-policy.yaml", BAD_POLICIES[case])
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(path) in info.value.message
    assert info.value.fatal


BAD_PROMPTS = {
    "not yaml": "system: 'unclosed\nuser: [",
    "no content placeholder": _with(GOOD_PROMPT, user="{context_block} judge this"),
    "no context placeholder": _with(GOOD_PROMPT, user="<content>{content}</content>"),
    "content placeholder escaped": _with(GOOD_PROMPT, user="{context_block}{{content}}"),
    "unknown placeholder in user": _with(
        GOOD_PROMPT, user="{context_block}<content>{content}</content> by {user}"
    ),
    "literal json braces in user": _with(
        GOOD_PROMPT, user='{context_block}<content>{content}</content> e.g. {"hate": 0.1}'
    ),
    "positional placeholder in user": _with(
        GOOD_PROMPT, user="{context_block}<content>{content}</content>{0}"
    ),
    "unbalanced brace in user": _with(
        GOOD_PROMPT, user="{context_block}<content>{content}</content> }"
    ),
    "unknown placeholder in context": _with(GOOD_PROMPT, context="<context>{thread}</context>"),
    "context template without context": _with(GOOD_PROMPT, context="<context></context>"),
    "brace in system": _with(GOOD_PROMPT, system="You judge {content} fairly."),
    "lone brace in system": _with(GOOD_PROMPT, system="Reply with JSON like {"),
    "empty system": _with(GOOD_PROMPT, system=""),
    "extra field": _with(GOOD_PROMPT, temperature=0.2),
    "no version": _with(GOOD_PROMPT, version=...),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompt_file_is_a_config_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, "my-prompt.yaml", BAD_PROMPTS[case])
    with pytest.raises(ConfigError) as info:
        load_prompt(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize("load", [load_policy, load_prompt])
def test_non_utf8_file_is_a_config_error_naming_the_file(tmp_path: Path, load: Any) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in info.value.message


def test_directory_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path)
    assert str(tmp_path) in info.value.message


def test_literal_braces_in_templates_are_fine_when_doubled(tmp_path: Path) -> None:
    data = _with(
        GOOD_PROMPT, user='{context_block}<content>\n{content}\n</content>\nlike {{"hate": 0.1}}'
    )
    prompt = load_prompt(write(tmp_path, "q.yaml", data))
    _, user = PromptBuilder(SMALL, prompt).messages("hi", None)
    assert user["content"].endswith('like {"hate": 0.1}')


def test_no_context_template_drops_the_context(tmp_path: Path) -> None:
    prompt = load_prompt(write(tmp_path, "q.yaml", _with(GOOD_PROMPT, context=...)))
    _, user = PromptBuilder(SMALL, prompt).messages("hi", "the thread")
    assert "the thread" not in user["content"]


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    for load in (load_policy, load_prompt):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(path) in info.value.message


def test_prompt_validator_directly() -> None:
    with pytest.raises(ValidationError, match="placeholders"):
        Prompt(version="v", system="s", user="{content}")
    with pytest.raises(ValidationError, match="static"):
        Prompt(version="v", system="a {b}", user="{content}{context_block}")
