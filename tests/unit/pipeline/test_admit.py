"""admit: exact token counts, the hard limit, the oversize policy, head+tail truncation."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from consumer.errors import AdmissionError, ConfigError
from consumer.model.tokens import count_tokens
from consumer.pipeline.admit import (
    MIN_BUDGET_TOKENS,
    Admitted,
    Admitter,
    context_marker,
    text_marker,
)
from consumer.settings import OversizePolicy
from schemas import ModerationRequest

MODEL = "gpt-4o-mini"
TEXT_MARKER = re.compile(r"\n\[… \d+ tokens omitted …\]\n")
CONTEXT_MARKER = re.compile(r"\[… \d+ earlier tokens omitted …\]\n")


def admitter(
    budget: int = 1000, max_input: int = 100_000, policy: OversizePolicy = OversizePolicy.TRUNCATE
) -> Admitter:
    return Admitter(model=MODEL, budget_tokens=budget, max_input_tokens=max_input, oversize=policy)


def request(text: str, context: str | None = None) -> ModerationRequest:
    return ModerationRequest(id="r", text=text, context=context)


def words(n: int) -> str:
    """A text of exactly ``n`` tokens."""
    return " ".join(["word"] * n)


def tokens(text: str | None) -> int:
    return 0 if text is None else count_tokens(text, MODEL)


def split_on_marker(original: str, result: str, marker: re.Pattern[str]) -> tuple[str, str]:
    """The (kept head, kept tail) around a marker, checked against the original.

    The original may itself contain marker-like text, so any marker occurrence will do as long
    as the parts are a prefix and a suffix of the original.
    """
    for found in marker.finditer(result):
        head, tail = result[: found.start()], result[found.end() :]
        if original.startswith(head) and original.endswith(tail):
            return head, tail
    raise AssertionError(f"{result!r} is not prefix + marker + suffix of the original")


# ---- examples ------------------------------------------------------------------------------


def test_fits_unchanged() -> None:
    req = request("hello there", context="earlier message")
    got = admitter().admit(req)
    assert got == Admitted(
        req, "hello there", "earlier message", truncated=False, content_tokens=got.content_tokens
    )
    assert got.content_tokens == tokens("hello there") + tokens("earlier message")


def test_exactly_at_budget_is_unchanged() -> None:
    text = words(100)
    budget = tokens(text)
    got = admitter(budget=budget).admit(request(text))
    assert (got.text, got.truncated, got.content_tokens) == (text, False, budget)


def test_hard_limit_message_says_limit_and_overage() -> None:
    text = words(50)
    with pytest.raises(AdmissionError) as info:
        admitter(max_input=40).admit(request(text))
    assert info.value.message == (
        "text is 50 tokens; the limit (MODSTREAM_MAX_INPUT_TOKENS) is 40: 10 over"
    )


@pytest.mark.parametrize("policy", list(OversizePolicy))
def test_hard_limit_applies_whatever_the_policy_and_budget(policy: OversizePolicy) -> None:
    with pytest.raises(AdmissionError, match="MAX_INPUT_TOKENS"):
        admitter(budget=10_000, max_input=40, policy=policy).admit(request(words(41)))


def test_hard_limit_counts_the_text_only() -> None:
    got = admitter(max_input=10).admit(request("short", context=words(500)))
    assert got.text == "short"


def test_dead_letter_policy_refuses_with_the_overage() -> None:
    with pytest.raises(AdmissionError) as info:
        admitter(budget=40, policy=OversizePolicy.DEAD_LETTER).admit(
            request(words(30), context=words(30))
        )
    message = info.value.message
    assert "text and context are 60 tokens" in message
    assert "is 40: 20 over" in message
    assert "MODSTREAM_OVERSIZE=dead_letter" in message


def test_dead_letter_policy_accepts_what_fits() -> None:
    got = admitter(budget=40, policy=OversizePolicy.DEAD_LETTER).admit(request(words(30)))
    assert not got.truncated


def test_context_is_cut_first_keeping_its_tail() -> None:
    context = " ".join(f"m{i}" for i in range(400))
    got = admitter(budget=120).admit(request("the text", context=context))
    assert got.text == "the text"
    assert not got.truncated
    assert got.context is not None and got.context != context  # a marked tail, not the whole
    assert CONTEXT_MARKER.match(got.context)
    assert context.endswith(CONTEXT_MARKER.sub("", got.context, count=1))
    assert got.context.endswith("m399")
    assert got.content_tokens == tokens(got.text) + tokens(got.context) <= 120


def test_context_too_small_to_be_useful_is_dropped() -> None:
    text = words(100)
    got = admitter(budget=105).admit(request(text, context="ctx " * 100))
    assert (got.text, got.context, got.truncated) == (text, None, False)
    assert got.content_tokens == 100


def test_text_is_cut_head_and_tail_after_the_context_is_dropped() -> None:
    text = " ".join(f"w{i}" for i in range(3000))
    got = admitter(budget=300).admit(request(text, context="some context"))
    assert got.truncated
    assert got.context is None
    head, tail = split_on_marker(text, got.text, TEXT_MARKER)
    assert got.content_tokens == tokens(got.text) <= 300
    # About two thirds head, one third tail.
    assert 1.5 < tokens(head) / tokens(tail) < 2.6
    assert got.content_tokens > 300 - 10  # and the budget is used, not wasted


def test_marker_reports_the_omitted_tokens() -> None:
    text = words(1000)
    got = admitter(budget=100).admit(request(text))
    found = TEXT_MARKER.search(got.text)
    assert found is not None
    omitted = int(re.findall(r"\d+", found.group())[0])
    head, tail = split_on_marker(text, got.text, TEXT_MARKER)
    assert abs(omitted - (1000 - tokens(head) - tokens(tail))) <= 2


def test_multibyte_characters_are_never_split() -> None:
    # Rare CJK characters and emoji take several tokens each: cuts land inside characters.
    text = "𠜎𠜱𠝹𠱓🧑‍🤝‍🧑🏳️‍🌈" * 300
    for budget in range(MIN_BUDGET_TOKENS, 80):
        got = admitter(budget=budget).admit(request(text))
        assert "\ufffd" not in got.text
        split_on_marker(text, got.text, TEXT_MARKER)
        assert got.content_tokens == tokens(got.text) <= budget


def test_special_token_text_is_counted_as_plain_text() -> None:
    got = admitter().admit(request("<|endoftext|> hi"))
    assert got.content_tokens == tokens("<|endoftext|> hi") > 2


def test_unknown_model_falls_back_to_o200k() -> None:
    got = Admitter(
        model="llama-3-local",
        budget_tokens=100,
        max_input_tokens=100,
        oversize=OversizePolicy.TRUNCATE,
    ).admit(request("hello world"))
    assert got.content_tokens == count_tokens("hello world", "gpt-4o")


def test_budget_below_the_minimum_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="budget"):
        admitter(budget=MIN_BUDGET_TOKENS - 1)
    with pytest.raises(ConfigError, match="MAX_INPUT_TOKENS"):
        admitter(max_input=0)


def test_lone_surrogate_cannot_be_cut() -> None:
    # decode rejects these; admit still refuses cleanly rather than crash mid-cut.
    bad = ModerationRequest.model_construct(id="r", text=words(100) + "\ud800", context=None)
    with pytest.raises(AdmissionError, match="surrogate"):
        admitter(budget=40).admit(bad)


def test_words_helper_is_exact() -> None:
    assert [tokens(words(n)) for n in (1, 30, 50, 100)] == [1, 30, 50, 100]


def test_markers_are_short() -> None:
    assert tokens(text_marker(10**12)) + 4 < MIN_BUDGET_TOKENS
    assert tokens(context_marker(10**12)) + 4 < MIN_BUDGET_TOKENS


# ---- properties ----------------------------------------------------------------------------

# Alphabets where tokenizers misbehave: emoji (ZWJ sequences, skin tones, flags), CJK (incl.
# astral), combining marks, RTL, whitespace runs, and markers that look like ours.
tricky = st.sampled_from(
    [
        "🙂",
        "👍🏽",
        "🧑‍🚀",
        "🇫🇷",
        "日本語",
        "𠜎",
        "e\u0301",
        "\u0915\u094d\u0937",
        "שלום",
        " ",
        "\n",
        "\t",
        "  \n\n",
        "\x00",
        "<|endoftext|>",
        "[… 3 tokens omitted …]",
        "word ",
        "a",
    ]
)
texts = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300),
    st.lists(tricky, min_size=1, max_size=400).map("".join),
    st.builds(
        lambda piece, times: piece * times,
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
        st.integers(1, 200),
    ),
)
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(text=texts, context=st.none() | texts, budget=st.integers(MIN_BUDGET_TOKENS, 400))
def test_admitted_content_always_fits_and_is_counted_exactly(
    text: str, context: str | None, budget: int
) -> None:
    req = request(text, context)
    got = admitter(budget=budget).admit(req)
    kept = "whole" if got.context == context else "none" if got.context is None else "tail"
    event(f"truncated={got.truncated} context={kept}")

    assert got.request is req
    assert got.content_tokens == tokens(got.text) + tokens(got.context)
    assert got.content_tokens <= budget

    fits = tokens(text) + tokens(context) <= budget
    if fits:
        assert (got.text, got.context, got.truncated) == (text, context, False)
    if got.truncated:
        assert got.text != text
        split_on_marker(text, got.text, TEXT_MARKER)
        assert got.context is None
    else:
        assert got.text == text
    if got.context != context:  # cut to its tail or dropped: only to make room
        assert not fits
        if got.context is not None:
            split_on_marker(context or "", got.context, re.compile(r"^" + CONTEXT_MARKER.pattern))


@PROPS
@given(text=texts, budget=st.integers(MIN_BUDGET_TOKENS, 400))
def test_truncation_happens_exactly_when_the_text_does_not_fit(text: str, budget: int) -> None:
    got = admitter(budget=budget).admit(request(text))
    assert got.truncated == (tokens(text) > budget)


@PROPS
@given(text=texts, budget=st.integers(MIN_BUDGET_TOKENS, 400))
def test_no_replacement_characters_are_introduced(text: str, budget: int) -> None:
    assume("\ufffd" not in text)
    got = admitter(budget=budget).admit(request(text))
    assert "\ufffd" not in got.text


@PROPS
@given(text=texts, context=st.none() | texts, budget=st.integers(MIN_BUDGET_TOKENS, 400))
def test_dead_letter_policy_admits_iff_it_fits(text: str, context: str | None, budget: int) -> None:
    fits = tokens(text) + tokens(context) <= budget
    admit = admitter(budget=budget, policy=OversizePolicy.DEAD_LETTER).admit
    if fits:
        assert admit(request(text, context)).text == text
    else:
        with pytest.raises(AdmissionError):
            admit(request(text, context))


@PROPS
@given(text=texts)
def test_tokens_never_exceed_utf8_bytes(text: str) -> None:
    """The reasoning behind any byte-length shortcut: each token stands for >= 1 byte."""
    assert tokens(text) <= len(text.encode("utf-8"))
