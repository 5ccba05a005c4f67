"""Dead letters: what they carry, and ``fit`` cutting them to the dead-letter topic's limit."""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import (
    BrokerRejected,
    DecodeError,
    InvalidReply,
    ModstreamError,
)
from consumer.pipeline.dead_letter import dead_letter, fit
from consumer.pipeline.publish import RECORD_OVERHEAD_BYTES
from consumer.pipeline.source import Envelope
from schemas import DeadLetter, make_event_id

pytestmark = pytest.mark.timeout(120)


def envelope(
    offset: int = 7,
    *,
    key: bytes | None = b"user-1",
    value: bytes | None = b'{"id": "m7", "text": "hello"}',
    headers: tuple[tuple[str, bytes | None], ...] = (("trace", b"abc"),),
) -> Envelope:
    return Envelope("in", 0, offset, key, value, headers, 1_700_000_000_000)


# ---- dead letters and fit ------------------------------------------------------------------


def _dead(
    value: bytes | None,
    *,
    message: str = "bad",
    headers: tuple[tuple[str, bytes | None], ...] = (),
    reply: str | None = None,
    redact: bool = False,
    max_bytes: int | None = None,
) -> DeadLetter:
    error: ModstreamError = InvalidReply(message, reply=reply) if reply else DecodeError(message)
    env = envelope(value=value, headers=headers)
    return dead_letter(
        env,
        error,
        stage="classify",
        policy_version="p1",
        attempts=2,
        redact=redact,
        max_bytes=max_bytes,
    )


def test_dead_letter_carries_the_input_and_the_reason() -> None:
    dead = _dead(b"\x00\xffraw", headers=(("h", b"v"), ("n", None)), reply="{not json")
    assert base64.b64decode(dead.payload_b64 or "") == b"\x00\xffraw"
    assert dead.payload_sha256 == hashlib.sha256(b"\x00\xffraw").hexdigest()
    assert dead.payload_length == 5 and not dead.payload_truncated
    assert dead.error_class == "InvalidReply" and dead.reply == "{not json"
    assert [(h.key, h.value_b64) for h in dead.headers] == [("h", "dg=="), ("n", None)]
    assert dead.attempts == 2 and dead.stage == "classify"
    assert dead.source.offset == 7


def test_dead_letter_defaults_and_identity() -> None:
    env = envelope()
    dead = dead_letter(env, DecodeError("bad"), stage="decode", policy_version="p1")
    assert dead.attempts == 0 and dead.payload_b64 is not None and not dead.payload_redacted
    assert dead.event_id == make_event_id(env.source, "p1", "dead_letter")  # de-duplication
    assert dead.created_at.utcoffset() == timedelta(0)


def test_a_redacted_dead_letter_has_no_payload_and_no_reply() -> None:
    dead = _dead(b"secret", reply="the reply", redact=True)
    assert dead.payload_b64 is None and dead.reply is None and dead.payload_redacted
    assert dead.payload_sha256 == hashlib.sha256(b"secret").hexdigest()


def test_a_record_without_a_value_has_no_payload_length() -> None:
    dead = _dead(None)
    assert dead.payload_length is None and dead.payload_b64 == ""


def test_fit_raises_broker_rejected_when_even_the_skeleton_is_too_large() -> None:
    headers = tuple((f"header-{i}-" + "k" * 200, b"v") for i in range(30))
    with pytest.raises(BrokerRejected) as info:
        _dead(b"x" * 10_000, headers=headers, max_bytes=4096)
    assert "4096 bytes allowed" in info.value.message
    assert info.value.fatal


def test_fit_leaves_header_values_out_only_when_needed() -> None:
    headers = (("big", b"h" * 30_000), ("small", b"s"))
    dead = _dead(b"p" * 100, headers=headers, max_bytes=8192)
    assert dead.headers_truncated and [h.key for h in dead.headers] == ["big", "small"]
    assert all(h.value_b64 is None for h in dead.headers)
    assert len(dead.model_dump_json().encode()) <= 8192


def test_fit_shortens_a_long_error_message_and_reply() -> None:
    dead = _dead(b"p", message="m" * 50_000, reply="r" * 50_000, max_bytes=16_384)
    assert len(dead.error_message) == 2000 and dead.reply == "r" * 2000
    assert dead.error_message == "m" * 2000
    assert not dead.headers_truncated


#: Any text that can be encoded: control characters (6 bytes in JSON) and 4-byte UTF-8 included.
ASCII = st.characters(exclude_categories=["Cs"])


@st.composite
def dead_letter_inputs(draw: st.DrawFn) -> dict[str, object]:
    size = draw(st.one_of(st.integers(0, 4096), st.integers(0, 2_000_000)))
    seed = draw(st.integers(0, 2**32 - 1))
    value = random.Random(seed).randbytes(size)
    headers = draw(
        st.lists(
            st.tuples(st.text(ASCII, max_size=40), st.one_of(st.none(), st.binary(max_size=3000))),
            max_size=4,
        )
    )
    short = st.text(ASCII, max_size=200)
    long = st.text(ASCII, min_size=1, max_size=20).map(lambda t: t * 1000)
    return {
        "value": value,
        "headers": tuple(headers),
        "message": draw(st.one_of(short, long)) or "x",
        "reply": draw(st.one_of(st.none(), st.text(ASCII, min_size=1, max_size=3000))),
        "redact": draw(st.booleans()),
        "limit": draw(st.integers(4096, 3_000_000)),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dead_letter_inputs())
def test_fit_property(case: dict[str, object]) -> None:
    value = case["value"]
    assert isinstance(value, bytes)
    limit = case["limit"]
    assert isinstance(limit, int)
    kwargs = {k: case[k] for k in ("message", "headers", "reply", "redact")}
    whole = _dead(value, **kwargs)  # type: ignore[arg-type]
    cut = fit(whole, value, limit)
    assert len(cut.model_dump_json().encode()) <= limit
    assert cut.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert cut.payload_length == len(value)
    if len(whole.model_dump_json().encode()) <= limit:
        assert cut == whole  # a dead letter that fits is unchanged
        assert not cut.payload_truncated and not cut.headers_truncated
        return
    assert (cut.source, cut.error_class, cut.stage) == (whole.source, whole.error_class, "classify")
    assert [h.key for h in cut.headers] == [h.key[:256] for h in whole.headers]
    if case["redact"]:
        assert cut.payload_b64 is None and not cut.payload_truncated
        return
    head = base64.b64decode(cut.payload_b64 or "")
    assert value.startswith(head)
    assert cut.payload_truncated == (head != value)
    # The payload keeps every byte the limit leaves room for (base64: 3 bytes per 4 chars).
    assert head == value or limit - len(cut.model_dump_json().encode()) < 4 + 4


def test_a_dead_letter_of_exactly_the_limit_is_unchanged() -> None:
    whole = _dead(b"z" * 30_000, message="m" * 3000)
    size = len(whole.model_dump_json().encode())
    assert fit(whole, b"z" * 30_000, size) is whole  # (past the cheap estimate: serialized)
    cut = fit(whole, b"z" * 30_000, size - 1)
    assert cut.payload_truncated and len(cut.model_dump_json().encode()) <= size - 1


def test_fit_cuts_the_payload_before_the_message_and_the_message_before_the_headers() -> None:
    value = b"p" * 20_000
    headers = (("h", b"v" * 300),)
    whole = _dead(value, message="m" * 3000, headers=headers)
    cut = fit(whole, value, 12_000)  # the payload's cut is enough
    assert cut.payload_truncated and cut.error_message == "m" * 3000
    assert cut.headers == whole.headers and not cut.headers_truncated
    cut = fit(whole, value, 3000)  # the message is cut too; the header still fits
    assert cut.error_message == "m" * 2000 and cut.headers == whole.headers
    assert not cut.headers_truncated


def test_fit_shrinks_only_as_far_as_needed_at_each_step() -> None:
    value = b"z" * 10_000
    whole = _dead(value, message="m" * 3000, headers=(("h", b"v" * 100),))
    # The skeleton as fit measures it: no payload, not (yet) marked truncated ("false" is one
    # byte longer than "true", so a whole payload that fits is never one byte over).
    no_payload = whole.model_copy(update={"payload_b64": ""})
    limit = len(no_payload.model_dump_json().encode())  # exactly the skeleton: room 0
    cut = fit(whole, value, limit)
    assert cut.error_message == "m" * 3000 and cut.payload_b64 == ""  # the message fits whole
    assert cut.headers == whole.headers
    short = no_payload.model_copy(update={"error_message": "m" * 2000})
    limit = len(short.model_dump_json().encode())
    cut = fit(whole, value, limit)
    assert cut.error_message == "m" * 2000 and not cut.headers_truncated  # headers fit whole


def test_fit_keeps_the_first_256_characters_of_a_header_key() -> None:
    dead = _dead(b"p" * 50_000, headers=(("k" * 300, b"v" * 20_000),), max_bytes=8192)
    assert dead.headers_truncated and dead.headers[0].key == "k" * 256


def test_fit_cuts_a_two_megabyte_payload_to_a_head_slice() -> None:
    value = random.Random(1).randbytes(2_000_000)
    dead = _dead(value, max_bytes=1_000_000 - 2 * RECORD_OVERHEAD_BYTES)
    size = len(dead.model_dump_json().encode())
    assert (
        1_000_000 - 2 * RECORD_OVERHEAD_BYTES - 4 <= size <= 1_000_000 - 2 * RECORD_OVERHEAD_BYTES
    )
    head = base64.b64decode(dead.payload_b64 or "")
    assert dead.payload_truncated and value.startswith(head) and len(head) > 700_000
    assert dead.payload_length == 2_000_000


@pytest.mark.parametrize("value", [b"", b"abc"])
def test_fit_reports_a_payload_truncated_only_when_it_was_cut(value: bytes) -> None:
    dead = _dead(value, message="0000" * 1000, max_bytes=4096)  # the message is what is big
    assert base64.b64decode(dead.payload_b64 or "") == value  # the payload is whole ...
    assert dead.payload_truncated is False  # ... yet marked truncated


@pytest.mark.parametrize(
    ("message", "reply"),
    [("\x1f" * 1000, None), ("bad", "\U0001f600" * 900)],  # control characters; emoji
    ids=["control-chars-in-message", "emoji-in-reply"],
)
def test_fit_bound_holds_for_text_json_or_utf8_makes_larger(
    message: str, reply: str | None
) -> None:
    dead = _dead(b"", message=message, reply=reply, max_bytes=4096)
    assert len(dead.model_dump_json().encode()) <= 4096


def test_fit_shortens_multibyte_error_text_until_it_fits() -> None:
    dead = _dead(b"payload", message="\u0800" * 3000, max_bytes=4096)
    assert len(dead.model_dump_json().encode()) <= 4096
