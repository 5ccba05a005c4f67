"""registry_decode: the Confluent wire format, payloads under their schema, the field mapping."""

from __future__ import annotations

import contextlib

import fastavro
import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import DecodeError
from consumer.kafka.protoc import compile_proto, message_class
from consumer.pipeline.registry_decode import (
    Framed,
    parse_framed,
    read_avro,
    read_json_schema,
    read_protobuf,
    to_request,
)
from consumer.settings.processing import parse_input_fields
from tests.registry_records import (
    AVRO_POST,
    JSON_POST,
    POST_FIELDS,
    PROTO_POST,
    PROTO_POST_INDEXES,
    avro_payload,
    frame,
    json_payload,
    post,
    proto_payload,
)

schema_ids = st.integers(min_value=0, max_value=2**32 - 1)
FIELDS = parse_input_fields(POST_FIELDS)


@given(schema_ids, st.binary())
def test_frame_round_trips(schema_id: int, payload: bytes) -> None:
    assert parse_framed(frame(schema_id, payload)) == Framed(schema_id, payload)


@given(schema_ids, st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=64), st.binary())
def test_message_indexes_round_trip(schema_id: int, indexes: list[int], payload: bytes) -> None:
    framed = parse_framed(frame(schema_id, payload, tuple(indexes)), message_indexes=True)
    assert framed == Framed(schema_id, payload, tuple(indexes))


def test_one_zero_byte_is_the_first_message() -> None:
    assert parse_framed(frame(7, b"p", ()), message_indexes=True) == Framed(7, b"p", (0,))


@given(st.binary(max_size=4))
def test_a_short_value_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError, match="at least 5"):
        parse_framed(value)


@given(st.integers(1, 255), st.binary(min_size=4))
def test_a_wrong_magic_byte_is_named(magic: int, rest: bytes) -> None:
    with pytest.raises(DecodeError, match=f"magic byte 0 \\(got 0x{magic:02x}\\)"):
        parse_framed(bytes([magic]) + rest)


@given(st.binary())
def test_any_bytes_parse_or_raise_decode_error(value: bytes) -> None:
    for indexes in (False, True):
        with contextlib.suppress(DecodeError):
            parse_framed(value, message_indexes=indexes)


@pytest.mark.parametrize(
    ("indexes", "reason"),
    [
        (b"\x80", "truncated"),  # a varint that never ends
        (b"\x01", "out of range"),  # zigzag -1 entries
        (b"\x02\x01", "negative"),  # one index, -1
        (b"\x02", "truncated"),  # one index announced, none there
    ],
)
def test_bad_message_indexes(indexes: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        parse_framed(b"\x00\x00\x00\x00\x01" + indexes, message_indexes=True)


AVRO = fastavro.parse_schema(AVRO_POST)
JSON = jsonschema.Draft7Validator(JSON_POST)


def test_an_avro_post_maps_to_its_request() -> None:
    record = {"post_id": "p1", "body": "hello", "thread": "t", "tags": {"lang": "en"}}
    request = to_request(read_avro(avro_payload(record), AVRO), FIELDS)
    assert (request.id, request.text, request.context) == ("p1", "hello", "t")
    assert request.metadata == {"lang": "en"}


def test_avro_short_or_long_payloads_do_not_match() -> None:
    payload = avro_payload(post("p1", "hello"))
    with pytest.raises(DecodeError, match="does not match its Avro schema"):
        read_avro(payload[:-3], AVRO)
    with pytest.raises(DecodeError, match="2 bytes left over"):
        read_avro(payload + b"\x00\x00", AVRO)


@given(st.binary(max_size=64))
def test_avro_garbage_is_a_decode_error_or_a_record(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        read_avro(payload, AVRO)


def test_json_schema_violation_names_the_path() -> None:
    with pytest.raises(DecodeError, match="at body: type"):
        read_json_schema(json_payload({"post_id": "p1", "body": 7}), JSON)
    with pytest.raises(DecodeError, match="not JSON"):
        read_json_schema(b"{", JSON)
    assert read_json_schema(json_payload(post("p1", "x")), JSON)["body"] == "x"


def test_a_record_without_the_mapped_text_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="no field 'body'"):
        to_request({"post_id": "p1"}, FIELDS)
    with pytest.raises(DecodeError, match="'id' must be a string"):
        to_request({"post_id": 7, "body": "x"}, FIELDS)
    with pytest.raises(DecodeError, match="text is empty"):
        to_request({"post_id": "p", "body": " \u200b"}, FIELDS)


def test_input_fields_parse() -> None:
    assert parse_input_fields("text=body") == {
        "id": "id",
        "text": "body",
        "context": "context",
        "metadata": "metadata",
    }
    for bad, reason in [
        ("text", "PART=FIELD"),
        ("body=text", "unknown part"),
        ("text=a,text=b", "twice"),
        ("id=x,text=x", "same field"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_input_fields(bad)


PROTO = message_class(compile_proto(PROTO_POST), PROTO_POST_INDEXES)


def test_a_protobuf_post_maps_to_its_request() -> None:
    record = {"post_id": "p1", "body": "hello", "thread": "t", "tags": {"lang": "en"}}
    request = to_request(read_protobuf(proto_payload(record), PROTO), FIELDS)
    assert (request.id, request.text, request.context) == ("p1", "hello", "t")
    assert request.metadata == {"lang": "en"}


def test_protobuf_garbage_and_bad_indexes() -> None:
    with pytest.raises(DecodeError, match="does not match its Protobuf schema"):
        read_protobuf(b"\xff\xff\xff", PROTO)
    with pytest.raises(ValueError, match="out of range"):
        message_class(compile_proto(PROTO_POST), (2,))
    with pytest.raises(ValueError, match="protoc exit"):
        compile_proto('syntax = "proto3"; message {')
