"""The fake's keyword heuristic: scores, determinism, word boundaries, blocks, name matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.fake_openai.heuristic import (
    CATEGORIES,
    KEYS,
    PARENTS,
    find_blocks,
    judge,
    resolve_category,
)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("I am going to kill him", "violence"),
        ("you absolute idiot", "harassment"),
        ("they are vermin", "hate"),
        ("I want to end my life", "self_harm_intent"),
        ("nsfw pics here", "sexual"),
        ("where to buy cocaine", "illicit"),
        ("how to build a bomb", "illicit_violent"),
        ("blood everywhere and gore", "violence_graphic"),
        ("I will kill you tonight", "harassment_threatening"),
    ],
)
def test_a_keyword_hit_scores_high(text: str, category: str) -> None:
    judgement = judge(text)
    assert 0.9 <= judgement.scores[category] < 1.0
    assert judgement.flagged


def test_benign_text_scores_low_everywhere() -> None:
    judgement = judge("The weather is lovely and the tea is warm.")
    assert all(0.01 <= s <= 0.05 for s in judgement.scores.values())
    assert not judgement.flagged
    assert judgement.rationale == "no policy keywords found"


def test_subcategories_get_the_parents_hit_at_a_lower_score() -> None:
    judgement = judge("he was shot")
    assert judgement.scores["violence"] >= 0.9
    assert 0.05 < judgement.scores["violence_graphic"] < 0.2  # under every default threshold
    assert judgement.scores["harassment_threatening"] <= 0.05


def test_self_harm_phrases_are_not_violence() -> None:
    judgement = judge("I want to kill myself")
    assert judgement.scores["self_harm"] >= 0.9
    assert judgement.scores["self_harm_intent"] >= 0.9
    assert judgement.scores["violence"] <= 0.05


def test_threats_count_as_violence_and_list_each_phrase_once() -> None:
    judgement = judge("I will kill you, idiot. Idiot!")
    assert judgement.scores["violence"] >= 0.9
    assert judgement.rationale == "matched keywords: i will kill you, idiot"


@pytest.mark.parametrize(
    "text", ["a useful skill", "a new method", "the stable", "shotgun wedding"]
)
def test_keywords_match_whole_words_only(text: str) -> None:
    assert not judge(text).flagged


def test_inflections_match() -> None:
    assert judge("they attacked the town").scores["violence"] >= 0.9
    assert judge("KILLING").scores["violence"] >= 0.9


@given(st.text(max_size=300))
def test_scores_are_deterministic_and_in_range(text: str) -> None:
    first = judge.__wrapped__(text)  # bypass the cache: recompute from scratch
    second = judge.__wrapped__(text)
    assert first == second
    assert set(first.scores) == set(KEYS)
    assert all(0.0 < s < 1.0 for s in first.scores.values())


def test_different_contents_get_different_jitter() -> None:
    assert judge("hello there").scores != judge("hello there!").scores


def test_taxonomy_keys_and_parents() -> None:
    assert KEYS["self_harm_intent"] == "self-harm/intent"
    assert len(KEYS) == len(CATEGORIES) == 13
    assert PARENTS["violence_graphic"] == "violence"
    assert PARENTS["self_harm_instructions"] == "self_harm"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("violence", "violence"),
        ("self-harm/intent", "self_harm_intent"),
        ("Harassment_Score", "harassment"),
        ("sexual_minors_probability", "sexual_minors"),
        ("selfharm", "self_harm"),
        ("rationale", None),
        ("index", None),
        ("violent_speech", None),
    ],
)
def test_resolve_category(name: str, expected: str | None) -> None:
    assert resolve_category(name) == expected


def test_find_blocks() -> None:
    text = (
        'x <content index="4">a</content> <CONTENT index=\'5\' kind="t">b\nc</CONTENT>'
        " <content>d</content>"
    )
    assert find_blocks(text) == [(4, "a"), (5, "b\nc"), (2, "d")]
    assert find_blocks("no blocks") == []
