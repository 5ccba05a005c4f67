"""decode: bytes -> ModerationRequest, or a DecodeError/AdmissionError a person can act on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import AdmissionError, DecodeError
from consumer.pipeline.decode import decode, is_blank
from consumer.pipeline.source import Envelope
from consumer.settings import InputFormat
from schemas import ModerationRequest
from tests.unit.bad_inputs import BAD_INPUTS, MAX_CASE_BYTES, REASONS, BadInput, cases, oversized

LIMIT = 1_000_000


def envelope(
    value: bytes | None, *, topic: str = "in", partition: int = 3, offset: int = 7
) -> Envelope:
    return Envelope(
        topic=topic,
        partition=partition,
        offset=offset,
        key=None,
        value=value,
        headers=(),
        timestamp_ms=None,
    )


def run(
    value: bytes | None, fmt: InputFormat = InputFormat.JSON, limit: int = LIMIT, **kw: Any
) -> ModerationRequest:
    return decode(envelope(value, **kw), input_format=fmt, max_message_bytes=limit)


# ---- the shared corpus -------------------------------------------------------------------


def test_corpus_is_big_enough_and_names_are_unique() -> None:
    names = [case.name for case in BAD_INPUTS]
    assert len(names) >= 22
    assert len(set(names)) == len(names)
    assert set(REASONS) <= set(names)
    assert {case.expect for case in BAD_INPUTS} == {"dead_letter", "verdict"}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.name)
def test_corpus_case(case: BadInput) -> None:
    if case.expect == "verdict":
        assert isinstance(run(case.value), ModerationRequest)
        return
    with pytest.raises((DecodeError, AdmissionError)) as info:
        run(case.value)
    message = info.value.message
    assert message.strip()
    assert "unexpected decode failure" not in message
    assert message.encode("utf-8")  # a reason must be publishable: no lone surrogates
    if case.name in REASONS:
        assert REASONS[case.name] in message


@pytest.mark.parametrize("limit", [MAX_CASE_BYTES, 50_000, LIMIT])
def test_corpus_with_a_small_size_limit(limit: int) -> None:
    """What the integration test does: every fixed case keeps its outcome; oversized fails."""
    for case in cases(limit):
        if case.name == "oversized":
            assert case.value is not None
            assert len(case.value) == limit + 1
            with pytest.raises(AdmissionError):
                run(case.value, limit=limit)
        elif case.expect == "verdict":
            run(case.value, limit=limit)
        else:
            with pytest.raises(DecodeError):
                run(case.value, limit=limit)


def test_cases_refuses_a_limit_below_the_corpus() -> None:
    with pytest.raises(ValueError, match="largest fixed case"):
        cases(MAX_CASE_BYTES - 1)
    with pytest.raises(ValueError, match="smallest request"):
        oversized(3)


# ---- size ----------------------------------------------------------------------------------


def test_size_message_says_the_limit_and_by_how_much() -> None:
    with pytest.raises(AdmissionError) as info:
        run(b"x" * 2_000_123, limit=1_000_000)
    assert info.value.message == (
        "record is 2,000,123 bytes; the limit (MODSTREAM_MAX_MESSAGE_BYTES) is 1,000,000: "
        "1,000,123 over"
    )


def test_size_is_checked_before_decoding() -> None:
    # Invalid UTF-8 and invalid JSON, but too big: the size is the reason, in both formats.
    for fmt in InputFormat:
        with pytest.raises(AdmissionError):
            run(b"\xff" * 101, fmt, limit=100)


def test_exactly_at_the_limit_is_accepted() -> None:
    value = oversized(99).value
    assert value is not None
    assert run(value, limit=len(value)).id == "oversized"


# ---- JSON ----------------------------------------------------------------------------------


def test_valid_request_round_trips() -> None:
    request = ModerationRequest(
        id="c-1", text="some text", user="u", context="ctx", metadata={"n": 1, "f": 0.5}
    )
    assert run(request.model_dump_json().encode()) == request


def test_nul_characters_are_kept_as_sent() -> None:
    assert run(b'{"id": "a", "text": "a\\u0000b\\u0000"}').text == "a\x00b\x00"


def test_unknown_fields_are_ignored() -> None:
    request = run(b'{"id": "a", "text": "x", "lang": "en", "nested": {"a": [1, {"b": 2}]}}')
    assert request == ModerationRequest(id="a", text="x")


def test_bom_is_skipped_once() -> None:
    assert run(b'\xef\xbb\xbf{"id": "a", "text": "x"}').text == "x"
    with pytest.raises(DecodeError):
        run(b'\xef\xbb\xbf\xef\xbb\xbf{"id": "a", "text": "x"}')


def test_bad_utf8_names_the_byte_and_its_offset() -> None:
    with pytest.raises(DecodeError) as info:
        run(b'{"id": "a", "text": "ok \xe9t\xe9"}')
    assert info.value.message == (
        "value is not valid UTF-8 at byte offset 24: invalid continuation byte (e9)"
    )


def test_json_error_names_line_and_column() -> None:
    with pytest.raises(DecodeError) as info:
        run(b'{\n  "id": "a",\n  "text": "x",\n}')
    assert "at line 4, column 1" in info.value.message


def test_not_an_object_message() -> None:
    with pytest.raises(DecodeError) as info:
        run(b"[1, 2]")
    assert info.value.message == "expected a JSON object with 'id' and 'text', got an array"


def test_validation_errors_become_one_sentence_listing_each_field() -> None:
    with pytest.raises(DecodeError) as info:
        run(b'{"id": 5, "user": ["u"], "metadata": {"ok": 1, "bad": [1]}}')
    assert info.value.message == (
        "not a valid moderation request: 'id' must be a string, got a number; "
        "'text' is missing; 'user' must be a string, got an array; "
        "metadata['bad'] must be a string, number, boolean or null, got an array"
    )


def test_reasons_never_quote_the_content() -> None:
    secret = "my-credit-card-4111111111111111"
    for value in [
        json.dumps({"id": secret, "text": 5}).encode(),
        json.dumps({"id": "a", "text": secret, "metadata": {"k": [secret]}}).encode(),
        json.dumps({"id": "a", "text": secret * 30, "user": secret * 30}).encode(),
        json.dumps({"id": secret * 30, "text": secret}).encode(),
        b'{"id": "a", "text": "' + secret.encode() + b'\xff"}',
        b'{"id": "a", "text": "' + secret.encode() + b'"',
    ]:
        with pytest.raises(DecodeError) as info:
            run(value)
        assert secret not in info.value.message


def test_long_duplicate_key_is_shortened_in_the_reason() -> None:
    key = "k" * 500
    with pytest.raises(DecodeError) as info:
        run(f'{{"id": "a", "text": "x", "{key}": 1, "{key}": 2}}'.encode())
    assert len(info.value.message) < 120


def test_is_blank() -> None:
    assert is_blank("")
    assert is_blank(" \t\r\n\x0b\x0c\x00\u00a0\u2028\u3000\u200b\ufeff")
    assert not is_blank(" a ")
    assert not is_blank("\x00a\x00")


# ---- TEXT ----------------------------------------------------------------------------------


def test_text_format_derives_the_id_from_the_source() -> None:
    request = run(b"hello \x00 world", InputFormat.TEXT, topic="raw", partition=2, offset=41)
    assert request == ModerationRequest(id="raw:2:41", text="hello \x00 world")


def test_text_format_takes_json_as_plain_text() -> None:
    assert run(b'{"id": 1}', InputFormat.TEXT).text == '{"id": 1}'


@pytest.mark.parametrize("value", [b"", b" \n\t", b"\x00", "\u3000".encode()])
def test_text_format_rejects_empty(value: bytes) -> None:
    with pytest.raises(DecodeError, match="empty"):
        run(value, InputFormat.TEXT)


def test_text_format_rejects_bad_utf8_and_tombstones() -> None:
    with pytest.raises(DecodeError, match="byte offset 2"):
        run(b"ab\x80", InputFormat.TEXT)
    with pytest.raises(DecodeError, match="UTF-16"):
        run("hi".encode("utf-16"), InputFormat.TEXT)
    with pytest.raises(DecodeError, match="tombstone"):
        run(None, InputFormat.TEXT)


def test_text_format_long_topic_still_gives_a_valid_unique_id() -> None:
    topic = "t" * 249  # Kafka's maximum topic name length
    first = run(b"x", InputFormat.TEXT, topic=topic, offset=1).id
    second = run(b"x", InputFormat.TEXT, topic=topic, offset=2).id
    assert first != second
    assert len(first) <= 256
    assert first.endswith(":3:1")


def test_text_format_bom_is_skipped() -> None:
    assert run(b"\xef\xbb\xbfhi", InputFormat.TEXT).text == "hi"


# ---- fuzz ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_our_errors(value: bytes | None, fmt: InputFormat = InputFormat.JSON) -> None:
    """decode either returns a request or raises one of our errors, never a bug."""
    try:
        request = run(value, fmt)
    except (DecodeError, AdmissionError) as exc:
        assert exc.message.strip()
        assert "unexpected decode failure" not in exc.message, exc.__cause__
        exc.message.encode("utf-8")
    else:
        # Whatever was accepted can be published: every string encodes as UTF-8.
        request.model_dump_json().encode("utf-8")
        assert not is_blank(request.text)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(value: bytes) -> None:
    only_our_errors(value)
    only_our_errors(value, InputFormat.TEXT)


# Strings that include unpaired surrogates, NULs and zero-width marks, where bugs live.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.text(st.characters() | surrogates, max_size=20) | st.sampled_from(
    ["", " ", "\x00", "\ud800", "\udc00x", "\u200b", "x"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


def dump(value: object, ascii_only: bool) -> bytes:
    # ensure_ascii=False writes surrogates raw: "surrogatepass" gives the invalid UTF-8 a
    # careless producer would send.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@FUZZ
@given(json_values, st.booleans())
def test_fuzz_arbitrary_json(value: object, ascii_only: bool) -> None:
    only_our_errors(dump(value, ascii_only))


@FUZZ
@given(
    st.fixed_dictionaries(
        {"id": json_values, "text": json_values},
        optional={"user": json_values, "context": json_values, "metadata": json_values},
    ),
    st.booleans(),
)
def test_fuzz_request_shaped_json(value: dict[str, object], ascii_only: bool) -> None:
    only_our_errors(dump(value, ascii_only))


clean_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=50)


@FUZZ
@given(
    st.builds(
        ModerationRequest,
        id=clean_text.filter(lambda s: 0 < len(s) <= 256),
        text=clean_text.filter(lambda s: not is_blank(s)),
        user=st.none() | clean_text,
        context=st.none() | clean_text,
        metadata=st.dictionaries(
            clean_text,
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | clean_text,
            max_size=3,
        ),
    ),
    st.booleans(),
)
def test_every_valid_request_decodes_to_itself(
    request: ModerationRequest, ascii_only: bool
) -> None:
    value = json.dumps(request.model_dump(), ensure_ascii=ascii_only).encode()
    assert run(value) == request
