"""Records in the Confluent wire format: the header parsed, the payload read, the request built.

A registry-framed value is::

    magic byte 0 | schema id (4 bytes, big-endian) | [protobuf: message indexes] | payload

Everything here is pure: the schema comes in already fetched and compiled
(:mod:`consumer.kafka.registry` does the fetching and caching). Every failure is a
:class:`~consumer.errors.DecodeError` whose reason names positions, types and field names,
never the content (dead letters may be redacted).

Which record field holds which part of the request is ``MODSTREAM_INPUT_FIELDS``
(:func:`consumer.settings.processing.parse_input_fields`): ``id`` and ``text`` are required,
``context`` and ``metadata`` optional. Values are taken as they are, as for JSON input: an
Avro ``long`` id is a dead letter, not a verdict for its decimal string.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro
import jsonschema
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from pydantic import ValidationError

from consumer.errors import DecodeError
from consumer.pipeline.decode import describe_request_errors, is_blank
from schemas import ModerationRequest

__all__ = ["Framed", "parse_framed", "read_avro", "read_json_schema", "read_protobuf", "to_request"]

_MAGIC = 0
_HEADER_BYTES = 5
_MAX_VARINT_BYTES = 10
#: More message indexes than this is not a real schema's nesting: a corrupt header.
_MAX_INDEXES = 64


@dataclass(frozen=True, slots=True)
class Framed:
    """A wire-format value split into its parts."""

    schema_id: int
    payload: bytes
    #: Protobuf only: the path to the message type within the schema's file ((0,): the first).
    message_indexes: tuple[int, ...] = ()


def parse_framed(value: bytes, *, message_indexes: bool = False) -> Framed:
    """Split ``value``; ``message_indexes`` reads the protobuf message-index array too.

    Raises DecodeError for a missing or wrong magic byte, a short header or a bad index array.
    """
    if len(value) < _HEADER_BYTES:
        raise DecodeError(
            f"value is {len(value)} bytes; a schema-registry record has at least "
            f"{_HEADER_BYTES} (magic byte 0 and a 4-byte schema id)"
        )
    if value[0] != _MAGIC:
        raise DecodeError(
            f"value does not start with the schema-registry magic byte 0 (got 0x{value[0]:02x}); "
            "was it produced with a schema-registry serializer?"
        )
    schema_id = int.from_bytes(value[1:_HEADER_BYTES], "big")
    if not message_indexes:
        return Framed(schema_id, value[_HEADER_BYTES:])
    count, at = _zigzag_varint(value, _HEADER_BYTES)
    if count == 0:  # the common case, written as one byte: the first message of the file
        return Framed(schema_id, value[at:], (0,))
    if not 0 < count <= _MAX_INDEXES:
        raise DecodeError(f"message-index count {count} is out of range (1-{_MAX_INDEXES})")
    indexes = []
    for _ in range(count):
        index, at = _zigzag_varint(value, at)
        if index < 0:
            raise DecodeError(f"message index {index} is negative")
        indexes.append(index)
    return Framed(schema_id, value[at:], tuple(indexes))


def _zigzag_varint(value: bytes, at: int) -> tuple[int, int]:
    """The zigzag varint at ``at`` and the offset after it."""
    raw = shift = 0
    for offset in range(at, min(len(value), at + _MAX_VARINT_BYTES)):
        byte = value[offset]
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), offset + 1
        shift += 7
    raise DecodeError(f"message-index varint at byte offset {at} is truncated or too long")


def read_avro(payload: bytes, schema: Any) -> Any:
    """The Avro datum in ``payload`` under the parsed (``fastavro.parse_schema``) schema."""
    buffer = io.BytesIO(payload)
    try:
        datum = fastavro.schemaless_reader(buffer, schema, None)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError, TypeError) as exc:
        raise DecodeError(
            f"payload does not match its Avro schema ({type(exc).__name__})"
        ) from None
    left = len(payload) - buffer.tell()
    if left:
        raise DecodeError(f"payload does not match its Avro schema: {left} bytes left over")
    return datum


def read_protobuf(payload: bytes, message: type[Message]) -> dict[str, Any]:
    """The Protobuf message in ``payload`` as a dict keyed by the .proto field names (unset
    proto3 fields are absent, as if missing; 64-bit integers become strings, as in JSON)."""
    try:
        parsed = message.FromString(payload)
    except ProtobufDecodeError:
        raise DecodeError(
            f"payload does not match its Protobuf schema ({message.DESCRIPTOR.full_name})"
        ) from None
    return MessageToDict(parsed, preserving_proto_field_name=True)


def read_json_schema(payload: bytes, validator: jsonschema.protocols.Validator) -> Any:
    """The JSON document in ``payload``, validated against its schema."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError(f"payload is not JSON ({type(exc).__name__})") from None
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise DecodeError(
            f"payload does not match its JSON Schema at {where}: {error.validator} "
            f"{_short(str(error.validator_value))}"
        )
    return document


def to_request(record: Any, fields: Mapping[str, str]) -> ModerationRequest:
    """The request whose parts are the record's fields ``fields`` names (part -> field)."""
    if not isinstance(record, dict):
        raise DecodeError(f"record is {type(record).__name__}, expected a record with fields")
    obj = {part: record[field] for part, field in fields.items() if record.get(field) is not None}
    for part in ("id", "text"):
        if part not in obj:
            raise DecodeError(f"record has no field {fields[part]!r} (the request's {part})")
    try:
        request = ModerationRequest.model_validate(obj)
    except ValidationError as exc:
        raise DecodeError(describe_request_errors(exc)) from None
    if is_blank(request.text):
        raise DecodeError("text is empty (only whitespace, NULs or zero-width characters)")
    return request


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
