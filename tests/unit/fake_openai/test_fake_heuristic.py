"""The fake's keyword heuristic: scores, determinism, word boundaries, blocks, name matching."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from consumer.testing.fake_openai import heuristic
from consumer.testing.fake_openai.heuristic import (
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


# ---- odd case folds, and the prefix-tree scan against the plain alternation ----------------

#: Characters IGNORECASE matches to an ASCII letter whose lower() is not that letter, and some
#: whose lower() is two characters.
ODD = "\u017f\u0130\u0131\u212a\u212b\u00df\u1e9e\u0345\u03c2\ufb01\ufb00"
WORDS = sorted({w for ws in heuristic._KEYWORDS.values() for w in ws})


def spelled(word: str, swaps: list[bool], upper: list[bool]) -> str:
    """``word`` with some letters upper-cased and some swapped for an odd case variant."""
    variants = {"s": "\u017f", "i": "\u0130", "k": "\u212a"}
    out = []
    for char, swap, up in zip(
        word, swaps + [False] * len(word), upper + [False] * len(word), strict=False
    ):
        if swap and char in variants:
            out.append(variants[char])
        else:
            out.append(char.upper() if up else char)
    return "".join(out)


TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.one_of(
            st.sampled_from(WORDS),
            st.builds(
                spelled,
                st.sampled_from(WORDS),
                st.lists(st.booleans(), max_size=20),
                st.lists(st.booleans(), max_size=20),
            ),
            st.text(alphabet=ODD + " .,!aeiouskl", max_size=8),
            st.sampled_from(["s", "es", "ed", "ing", "er", " ", ", ", "x"]),
        ),
        max_size=12,
    ).map("".join),
)


def reference_judgement(text: str) -> tuple[dict[str, float], tuple[str, ...]]:
    """judge() as it was written first: the longest-first alternation and the score formula,
    with the keyword found by a case-insensitive comparison (the old lower() lookup raised
    KeyError on odd case folds)."""
    pattern = re.compile(
        rf"\b({heuristic._alternation(heuristic._ALL_WORDS)}){heuristic._SUFFIX}\b", re.IGNORECASE
    )
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()
    hits: set[str] = set()
    words = []
    for match in pattern.finditer(text):
        keyword = next(
            w for w in WORDS if re.fullmatch(re.escape(w), match.group(1), re.IGNORECASE)
        )
        hits |= heuristic._IMPLIES[keyword]
        words.append(match.group(0).lower())
    scores = {}
    for i, key in enumerate(KEYS):
        jitter = digest[i] / 255.0
        if key in hits:
            score = 0.90 + 0.09 * jitter
        elif key in PARENTS and PARENTS[key] in hits:
            score = 0.10 + 0.05 * jitter
        else:
            score = 0.01 + 0.04 * jitter
        scores[key] = round(score, 3)
    return scores, tuple(dict.fromkeys(words))


@pytest.mark.parametrize("text", ["\u017ftupid", "\u0130diot", "\u212aill them", "\u017fhoot"])
def test_odd_case_folds_of_a_keyword_score_it(text: str) -> None:
    judgement = judge.__wrapped__(text)  # used to raise KeyError: a 500 from the fake
    assert judgement.flagged


@given(TEXTS)
@example("\u017ftupid \u0130diot")
@example("stabbing stabbed stabs kill myselfs")
def test_any_text_is_judged_as_the_plain_alternation_judges_it(text: str) -> None:
    judgement = judge.__wrapped__(text)
    assert (judgement.scores, judgement.matched) == reference_judgement(text)
    assert all(0.0 < s < 1.0 for s in judgement.scores.values())
