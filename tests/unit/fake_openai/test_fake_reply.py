"""The fake's reply building: what is judged, faulty variants, moderation inputs, usage."""

from __future__ import annotations

import json

import pytest

from consumer.model.tokens import count_tokens
from consumer.testing.fake_openai.instances import SchemaError
from consumer.testing.fake_openai.reply import (
    content_value,
    context_for,
    last_user_text,
    malformed,
    moderation_body,
    moderation_inputs,
    truncated,
)
from consumer.testing.fake_openai.usage import PrefixCache, prompt_tokens


def test_a_repair_turn_is_judged_on_the_original_content() -> None:
    messages = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "<content>\nI will murder you\n</content>"},
        {"role": "assistant", "content": "{bad"},
        {"role": "user", "content": "That reply is invalid. Reply again with only JSON."},
    ]
    assert "murder" in last_user_text(messages)
    assert last_user_text([{"role": "user", "content": "plain"}]) == "plain"
    assert last_user_text([{"role": "system", "content": "only system"}]) == ""


def test_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "you"}, {"type": "text", "text": "idiot"}]
    assert last_user_text([{"role": "user", "content": parts}]) == "you\nidiot"


def test_malformed_alternatives_break_parsing_or_the_schema() -> None:
    value = {"scores": {"violence": 0.9}, "rationale": "matched keywords: kill"}
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed(value, "invalid_json"))
    broken = json.loads(malformed(value, "schema_violation"))
    assert broken["scores"] == "n/a"
    assert broken["unexpected_field"] is True
    assert json.loads(malformed([1], "schema_violation")) == {"unexpected_field": True}


def test_truncated_cuts_mid_way() -> None:
    text = json.dumps({"rationale": "no policy keywords found"})
    cut = truncated(text)
    assert text.startswith(cut)
    assert 0 < len(cut) < len(text)


def test_response_formats() -> None:
    context = context_for("buy cocaine")
    assert content_value({"type": "json_object"}, context)["scores"]["illicit"] >= 0.9
    assert content_value(None, context).startswith("Flagged for illicit:")
    assert content_value({"type": "text"}, context) == content_value(None, context)
    with pytest.raises(SchemaError):
        content_value({"type": "json_schema", "json_schema": {"schema": "nope"}}, context)
    with pytest.raises(SchemaError):
        content_value({"type": "yaml"}, context)


def test_moderation_inputs_and_body() -> None:
    assert moderation_inputs("a") == ["a"]
    assert moderation_inputs(["a", "b"]) == ["a", "b"]
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert moderation_inputs(parts) == ["a"]
    with pytest.raises(SchemaError):
        moderation_inputs(None)
    body = moderation_body("omni-moderation-latest", ["stab", "tea"])
    assert [r["flagged"] for r in body["results"]] == [True, False]
    assert body["results"][0]["categories"]["violence"] is True
    assert set(body["results"][0]["category_scores"]) >= {"self-harm/intent", "violence/graphic"}


def test_prompt_tokens_follow_openais_recipe() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello", "name": "ann"},
    ]
    model = "gpt-4o-mini"
    expected = (
        3 + count_tokens("system", model) + count_tokens("Be brief.", model)
        + 3 + count_tokens("user", model) + count_tokens("hello", model)
        + 1 + count_tokens("ann", model)
        + 3
    )  # fmt: skip
    assert prompt_tokens(messages, model) == (
        expected, 3 + count_tokens("system", model) + count_tokens("Be brief.", model),
    )  # fmt: skip


def test_prefix_cache_counts_whole_blocks_of_a_seen_long_first_message() -> None:
    cache = PrefixCache(max_entries=2)
    first = {"role": "system", "content": "x"}
    assert cache.cached_tokens("m", first, 1300, min_tokens=1024) == 0  # first sight
    assert cache.cached_tokens("m", first, 1300, min_tokens=1024) == 1280
    assert cache.cached_tokens("m", first, 1300, min_tokens=2000) == 0  # too short to cache
    assert cache.cached_tokens("other-model", first, 1300, min_tokens=1024) == 0
    cache.cached_tokens("m", {"role": "system", "content": "y"}, 10, min_tokens=0)
    cache.cached_tokens("m", {"role": "system", "content": "z"}, 10, min_tokens=0)
    assert cache.cached_tokens("m", first, 1300, min_tokens=1024) == 0  # evicted (bounded)
