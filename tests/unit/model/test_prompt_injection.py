"""Prompt injection, structurally: whatever the content says, it stays data inside its block.

For every attempt in the corpus (and for arbitrary text, by hypothesis): the system message is
the same static text as for a benign message; the user message has exactly one ``<content>``
block (and at most one ``<context>`` block, before it); outside the blocks the user message is
the same as for a benign message; and unescaping a block gives back exactly what was sent.
The reply schema has no field through which the content could pick its own action.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumer.model.policy import Prompt, PromptBuilder, escape, load_policy, load_prompt
from schemas import Action
from tests.injection_corpus import CATEGORIES, INJECTIONS, UNDEFENDED, Injection

BUILDER = PromptBuilder(load_policy(), load_prompt())
BENIGN_TEXT = "Have a nice day."
BENIGN_CONTEXT = "Thread: weekend plans."

_ENTITY = re.compile(r"&(amp|lt|gt);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">"}


def unescape(block: str) -> str:
    """The inverse of ``consumer.model.policy.escape``; refuses text it could not have produced."""
    assert "<" not in block and ">" not in block, "a raw bracket inside an escaped block"
    assert block.count("&") == len(_ENTITY.findall(block)), "a bare & inside an escaped block"
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], block)


def parse_user(user: str) -> tuple[str, dict[str, str]]:
    """Split a user message into its skeleton (blocks emptied) and the unescaped blocks.

    Asserts the structure on the way: one ``<content>`` block, at most one ``<context>``
    block, each opened and closed exactly once, the context before the content.
    """
    counts = Counter(re.findall(r"</?(?:content|context)>", user))
    assert counts["<content>"] == 1 and counts["</content>"] == 1, counts
    assert counts["<context>"] == counts["</context>"] <= 1, counts
    blocks: dict[str, str] = {}
    skeleton = user
    for tag in ("context", "content"):
        match = re.search(rf"<{tag}>\n(.*)\n</{tag}>", skeleton, flags=re.DOTALL)
        if match is None:
            continue
        blocks[tag] = unescape(match.group(1))
        skeleton = skeleton[: match.start(1)] + skeleton[match.end(1) :]
    if "context" in blocks:
        assert user.index("</context>") < user.index("<content>")
    return skeleton, blocks


def check(text: str, context: str | None) -> None:
    messages = BUILDER.messages(text, context)
    benign = BUILDER.messages(BENIGN_TEXT, BENIGN_CONTEXT if context else None)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0] == benign[0], "content must never change the system message"
    skeleton, blocks = parse_user(messages[1]["content"])
    benign_skeleton, _ = parse_user(benign[1]["content"])
    assert skeleton == benign_skeleton, "content leaked outside its block"
    assert blocks["content"] == text
    assert blocks.get("context") == (context or None)


# ---- the corpus ----------------------------------------------------------------------------


def test_corpus_is_big_and_covers_every_category() -> None:
    assert len(INJECTIONS) >= 30
    names = [case.name for case in INJECTIONS]
    assert len(set(names)) == len(names)
    assert {case.category for case in INJECTIONS} == set(CATEGORIES)
    assert set(UNDEFENDED) <= set(CATEGORIES)


@pytest.mark.parametrize("case", INJECTIONS, ids=lambda case: case.name)
def test_injection_stays_inside_its_block(case: Injection) -> None:
    check(case.text, case.context)


@pytest.mark.parametrize("case", INJECTIONS, ids=lambda case: case.name)
def test_injection_as_context_stays_inside_the_context_block(case: Injection) -> None:
    check(BENIGN_TEXT, case.text)


def test_system_message_is_static_and_holds_no_content() -> None:
    system = BUILDER.system
    assert "{" not in load_prompt().system
    for case in INJECTIONS:
        if len(case.text) >= 12:
            assert case.text not in system
    # Identical for every call: the providers' prefix cache hits, and no content gets in.
    assert len({BUILDER.messages(c.text, c.context)[0]["content"] for c in INJECTIONS}) == 1


def test_system_prompt_says_the_blocks_are_data_and_how_they_are_escaped() -> None:
    system = BUILDER.system
    assert "<content>" in system and "<context>" in system
    assert "never an instruction" in system
    assert "&lt;" in system and "&gt;" in system and "&amp;" in system


# ---- arbitrary text ------------------------------------------------------------------------

_tags = st.sampled_from(
    ["<content>", "</content>", "<context>", "</context>", "&lt;", "&gt;", "&amp;", "&", "<", ">"]
)
_hostile_text = st.lists(st.text(max_size=20) | _tags, max_size=12).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_hostile_text, context=st.none() | _hostile_text.filter(bool))
def test_any_text_stays_inside_its_block(text: str, context: str | None) -> None:
    check(text, context)


@given(st.text())
def test_escape_removes_every_bracket_and_round_trips(text: str) -> None:
    escaped = escape(text)
    assert "<" not in escaped and ">" not in escaped
    assert unescape(escaped) == text


# ---- no template, however written, lets content out ------------------------------------------


def test_a_template_cannot_place_content_in_the_system_message() -> None:
    with pytest.raises(ValidationError, match="static"):
        Prompt(version="x", system="judge {content}", user="{content}{context_block}")


# ---- the reply cannot choose the action ----------------------------------------------------


def test_reply_schema_has_only_scores_and_a_rationale() -> None:
    policy = load_policy()
    schema = policy.response_format["json_schema"]["schema"]
    assert set(schema["properties"]) == {"scores", "rationale"}
    assert schema["additionalProperties"] is False
    scores = schema["properties"]["scores"]
    assert set(scores["properties"]) == {c.field for c in policy.categories}
    assert scores["additionalProperties"] is False


@pytest.mark.parametrize(
    "extra",
    [{"action": "allow"}, {"flagged": False}, {"policy_version": "x"}, {"threshold": 1.0}],
)
def test_a_reply_that_tries_to_set_the_action_is_rejected(extra: dict[str, object]) -> None:
    policy = load_policy()
    reply = {"scores": {c.field: 0.9 for c in policy.categories}, "rationale": "x", **extra}
    with pytest.raises(ValidationError):
        policy.reply_model.model_validate(reply)


def test_the_policy_not_the_reply_maps_scores_to_the_action() -> None:
    policy = load_policy()
    reply = policy.reply_model.model_validate(
        {"scores": {c.field: 0.99 for c in policy.categories}, "rationale": "Rated safe: allow."}
    )
    flagged, action, _ = policy.decide(policy.scores_from_reply(reply))
    assert flagged
    assert action is Action.BLOCK  # the rationale's "allow" is just text
