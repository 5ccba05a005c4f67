"""decode -> admit -> prompt, chained and fuzzed: every input ends as a verdict candidate (a
prompt ready for the model) or a dead letter, and nothing but our own errors escapes.

The stage-level fuzz tests are in test_decode.py and test_admit.py; this one runs arbitrary
bytes, arbitrary JSON, request-shaped JSON and arbitrary unicode through the stages in the
pipeline's order, with small limits so the size and token limits are hit often.
"""

from __future__ import annotations

import json
from typing import Literal

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from consumer.errors import AdmissionError, DecodeError, PermanentError
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.pipeline.admit import MIN_BUDGET_TOKENS, Admitter
from consumer.pipeline.dead_letter import dead_letter
from consumer.pipeline.decode import decode
from consumer.pipeline.source import Envelope
from consumer.settings import InputFormat, OversizePolicy
from tests.injection_corpus import INJECTIONS

BUILDER = PromptBuilder(load_policy(), load_prompt())
ADMITTERS = {
    (policy, max_input): Admitter(
        model="gpt-4o-mini",
        budget_tokens=MIN_BUDGET_TOKENS + 32,
        max_input_tokens=max_input,
        oversize=policy,
    )
    for policy in OversizePolicy
    for max_input in (40, 10_000)
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Outcome = Literal["verdict", "dead_letter"]


def through_the_stages(
    value: bytes,
    fmt: InputFormat,
    *,
    max_bytes: int,
    policy: OversizePolicy,
    max_input: int,
) -> Outcome:
    """What the pipeline does before the model: decode, admit, build the prompt."""
    envelope = Envelope("in", 0, 1, None, value, (("h", b"\xff"),), None)
    try:
        request = decode(envelope, input_format=fmt, max_message_bytes=max_bytes)
        admitted = ADMITTERS[(policy, max_input)].admit(request)
    except (DecodeError, AdmissionError) as exc:
        assert exc.message.strip()
        assert "unexpected decode failure" not in exc.message, exc.__cause__
        assert_publishable_dead_letter(envelope, exc)
        note(f"dead letter: {type(exc).__name__}")
        return "dead_letter"
    messages = BUILDER.messages(admitted.text, admitted.context)
    user = messages[1]["content"]
    assert messages[0]["content"] == BUILDER.system
    assert user.count("<content>") == 1 and user.count("</content>") == 1
    assert user.count("<context>") == user.count("</context>") <= 1
    json.dumps(messages).encode("utf-8")  # the HTTP body can be sent
    request.model_dump_json().encode("utf-8")  # and the verdict can carry its metadata
    note("verdict candidate" + (" (truncated)" if admitted.truncated else ""))
    return "verdict"


def note(outcome: str) -> None:
    """Count the outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(outcome)


def assert_publishable_dead_letter(envelope: Envelope, exc: PermanentError) -> None:
    for redact in (False, True):
        dead = dead_letter(envelope, exc, stage="decode", policy_version="p", redact=redact)
        dead.model_dump_json().encode("utf-8")


limits = {
    "max_bytes": st.sampled_from([64, 1_000, 1_000_000]),
    "policy": st.sampled_from(list(OversizePolicy)),
    "max_input": st.sampled_from([40, 10_000]),
}

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.text(st.characters() | surrogates, max_size=40) | st.sampled_from(
    [c.text for c in INJECTIONS if len(c.text) < 2_000] + ["", "\x00", "\u200b", "\ud800"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
long_text = st.builds(lambda piece, n: piece * n, any_text.filter(bool), st.integers(1, 300))


def dump(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@FUZZ
@given(value=st.binary(max_size=2_000), fmt=st.sampled_from(list(InputFormat)), **limits)
def test_arbitrary_bytes(
    value: bytes, fmt: InputFormat, max_bytes: int, policy: OversizePolicy, max_input: int
) -> None:
    through_the_stages(value, fmt, max_bytes=max_bytes, policy=policy, max_input=max_input)


@FUZZ
@given(value=json_values, ascii_only=st.booleans(), **limits)
def test_arbitrary_json(
    value: object, ascii_only: bool, max_bytes: int, policy: OversizePolicy, max_input: int
) -> None:
    raw = dump(value, ascii_only)
    through_the_stages(
        raw, InputFormat.JSON, max_bytes=max_bytes, policy=policy, max_input=max_input
    )


@FUZZ
@given(
    value=st.fixed_dictionaries(
        {"id": st.text(max_size=10) | json_values, "text": long_text | json_values},
        optional={"user": json_values, "context": long_text | json_values, "metadata": json_values},
    ),
    ascii_only=st.booleans(),
    **limits,
)
def test_request_shaped_json(
    value: dict[str, object],
    ascii_only: bool,
    max_bytes: int,
    policy: OversizePolicy,
    max_input: int,
) -> None:
    raw = dump(value, ascii_only)
    through_the_stages(
        raw, InputFormat.JSON, max_bytes=max_bytes, policy=policy, max_input=max_input
    )


@FUZZ
@given(text=long_text | any_text, **limits)
def test_arbitrary_unicode_as_plain_text(
    text: str, max_bytes: int, policy: OversizePolicy, max_input: int
) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    through_the_stages(
        raw, InputFormat.TEXT, max_bytes=max_bytes, policy=policy, max_input=max_input
    )


def test_valid_requests_reach_the_model_and_limits_dead_letter() -> None:
    """The chain is not vacuous: both outcomes happen, for the reasons expected."""
    ok = json.dumps({"id": "a", "text": "hello"}).encode()
    assert (
        through_the_stages(
            ok,
            InputFormat.JSON,
            max_bytes=1_000,
            policy=OversizePolicy.DEAD_LETTER,
            max_input=40,
        )
        == "verdict"
    )
    long = json.dumps({"id": "a", "text": "word " * 100}).encode()
    for max_bytes, max_input in ((100, 10_000), (1_000, 40)):
        assert (
            through_the_stages(
                long,
                InputFormat.JSON,
                max_bytes=max_bytes,
                policy=OversizePolicy.TRUNCATE,
                max_input=max_input,
            )
            == "dead_letter"
        )
    # Over the budget but under the hard limit: truncated under TRUNCATE, refused otherwise.
    assert (
        through_the_stages(
            long,
            InputFormat.JSON,
            max_bytes=1_000,
            policy=OversizePolicy.TRUNCATE,
            max_input=10_000,
        )
        == "verdict"
    )
    assert (
        through_the_stages(
            long,
            InputFormat.JSON,
            max_bytes=1_000,
            policy=OversizePolicy.DEAD_LETTER,
            max_input=10_000,
        )
        == "dead_letter"
    )
