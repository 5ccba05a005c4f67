"""Decode stage: a record's bytes become a :class:`schemas.ModerationRequest`, or a reason.

Every failure raises :class:`~consumer.errors.DecodeError` (or
:class:`~consumer.errors.AdmissionError` for a record over the size limit) with a message a
person can act on: which byte is not UTF-8, where the JSON breaks, which field is missing or
of the wrong type. Nothing else escapes: a record that breaks the decoder must become a dead
letter, not a crash loop that stops the partition.

Messages never quote the content itself (only types, positions, lengths, and short key names):
dead letters may be redacted, and their reason must not leak what the redaction hid.

Choices, each a deliberate reading of "strict but not fussy":

* UTF-8 only, strictly; a UTF-16/32 value is named as such in the reason. One leading UTF-8
  BOM is skipped (RFC 8259 lets parsers ignore it, and Windows tools write it).
* JSON is RFC 8259: ``NaN``/``Infinity`` and numbers that overflow a float are rejected (they
  would turn into ``null`` in our output), as are duplicate keys at any depth (two parsers
  may pick different ``text`` values: a way to smuggle content past one of them).
* ``id`` must be a JSON string: the model does not coerce numbers to strings, so ``{"id": 7}``
  is a dead letter, not a verdict for ``"7"``.
* Text is kept exactly as sent, NUL characters included (the classifier escapes what it puts
  in the prompt). Text that is empty once whitespace, NULs and zero-width characters are
  ignored is rejected: there is nothing to judge.
* ``images`` entries are checked for shape here (an https ``url``, or ``data`` with a
  supported ``mime_type``; no unknown keys), each problem named by its index
  (``images[1].mime_type``); their bytes are checked by admit (:mod:`consumer.pipeline.images`).
* Unpaired UTF-16 surrogate escapes (``"\\ud800"``) are rejected wherever they appear: the
  string could not be encoded into any output.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
import sys
from typing import Any, NoReturn, Protocol

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from consumer.errors import AdmissionError, DecodeError
from consumer.pipeline.source import Envelope
from consumer.settings import InputFormat
from schemas import ModerationRequest

__all__ = [
    "FramedDecoder",
    "admissible_value",
    "decode",
    "decode_record",
    "describe_request_errors",
    "is_blank",
]

#: Characters that carry no content: Unicode whitespace, NUL, and zero-width format marks.
_BLANK = (
    "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
    + "\x00\u200b\u200c\u200d\u2060\ufeff"
)

#: ``ModerationRequest.id`` allows at most this many characters (schemas/events.py).
_MAX_ID_CHARS = 256

#: A \uD800-\uDFFF escape in raw JSON: the only way a surrogate can enter a str here
#: (strict UTF-8 decoding never yields one). Paired ones are fine; this only gates the check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32-LE"),  # before UTF-16-LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "UTF-32-BE"),
    (codecs.BOM_UTF16_LE, "UTF-16-LE"),
    (codecs.BOM_UTF16_BE, "UTF-16-BE"),
)


def decode(
    envelope: Envelope, *, input_format: InputFormat, max_message_bytes: int
) -> ModerationRequest:
    """Turn one fetched record into a request.

    Raises ``AdmissionError`` when the value is over ``max_message_bytes`` (checked before any
    decoding, so a huge record costs nothing) and ``DecodeError`` for everything else that is
    not a valid request. Never raises anything else.
    """
    value = admissible_value(envelope, max_message_bytes=max_message_bytes)
    try:
        if input_format is InputFormat.TEXT:
            return _decode_text(envelope, value)
        return _decode_json(value)
    except (DecodeError, AdmissionError):
        raise
    except Exception as exc:
        # A bug here must dead-letter one record, not crash-loop the partition. The prefix is
        # distinctive so the fuzz tests (and a person reading dead letters) can tell it apart.
        raise DecodeError(
            f"unexpected decode failure ({type(exc).__name__}); this is a modstream bug"
        ) from exc


class FramedDecoder(Protocol):
    """Decodes a schema-registry record (:class:`consumer.kafka.registry.SchemaRegistry`)."""

    async def decode(self, value: bytes) -> ModerationRequest:
        """The request, DecodeError, or waits while the registry is away."""
        ...


async def decode_record(
    envelope: Envelope,
    *,
    input_format: InputFormat,
    max_message_bytes: int,
    registry: FramedDecoder | None,
) -> ModerationRequest:
    """One record in any input format: ``decode`` for json and text, the schema ``registry``
    for avro, protobuf and json_schema (which it needs), after the same size check."""
    if not input_format.uses_registry:
        return decode(envelope, input_format=input_format, max_message_bytes=max_message_bytes)
    if registry is None:
        raise RuntimeError(f"{input_format} input needs the schema registry")
    value = admissible_value(envelope, max_message_bytes=max_message_bytes)
    # Waits (retrying) while the registry is away: an outage is no dead letter.
    return await registry.decode(value)


def admissible_value(envelope: Envelope, *, max_message_bytes: int) -> bytes:
    """The record's value, once it is known to be neither missing, empty nor over the limit
    (checked before any decoding, in every input format)."""
    value = envelope.value
    if value is None:
        raise DecodeError("record has no value (a tombstone); expected a moderation request")
    size = len(value)
    if size > max_message_bytes:
        raise AdmissionError(
            f"record is {size:,} bytes; the limit (MODSTREAM_MAX_MESSAGE_BYTES) is "
            f"{max_message_bytes:,}: {size - max_message_bytes:,} over"
        )
    if size == 0:
        raise DecodeError("record value is empty (0 bytes); expected a moderation request")
    return value


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible content: only whitespace, NULs or zero-width marks."""
    # str.strip returns quickly when the ends are not blank: O(1) for ordinary text.
    return not text.strip(_BLANK)


def _utf8(value: bytes, *, json_hint: bool) -> str:
    """Strict UTF-8 with one leading BOM skipped; the reason names the first bad byte."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = value[exc.start : exc.end].hex(" ")
        guess = _other_encoding(value, json_hint=json_hint)
        hint = f"; it looks like {guess}, send UTF-8" if guess else ""
        raise DecodeError(
            f"value is not valid UTF-8 at byte offset {exc.start:,}: {exc.reason} ({bad}){hint}"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _other_encoding(value: bytes, *, json_hint: bool) -> str | None:
    """Name the encoding a value seems to use when it is not UTF-8, for a better reason."""
    for bom, name in _BOMS:
        if value.startswith(bom):
            return name
    if json_hint:
        # json.detect_encoding reads the NUL pattern of the first bytes of JSON text.
        guess = json.detect_encoding(value)
        if guess not in ("utf-8", "utf-8-sig"):
            return guess.upper()
    return None


def _decode_text(envelope: Envelope, value: bytes) -> ModerationRequest:
    text = _utf8(value, json_hint=False)
    if is_blank(text):
        raise DecodeError("text is empty (only whitespace, NULs or zero-width characters)")
    request_id = f"{envelope.topic}:{envelope.partition}:{envelope.offset}"
    if len(request_id) > _MAX_ID_CHARS:
        # Topic names may be 249 characters; keep the id unique and deterministic anyway.
        digest = hashlib.sha256(envelope.topic.encode()).hexdigest()[:32]
        request_id = f"sha256:{digest}:{envelope.partition}:{envelope.offset}"
    return _validate({"id": request_id, "text": text})


def _decode_json(value: bytes) -> ModerationRequest:
    text = _utf8(value, json_hint=True)
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        guess = _other_encoding(value, json_hint=True)
        hint = f"; it looks like {guess}, send UTF-8" if guess else ""
        raise DecodeError(
            f"value is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}{hint}"
        ) from None
    except RecursionError:
        raise DecodeError("value is not usable JSON: nested too deeply") from None
    except ValueError:
        # int() refuses more than sys.get_int_max_str_digits() digits (CVE-2020-10735 guard).
        raise DecodeError(
            "value is not usable JSON: an integer has more than "
            f"{sys.get_int_max_str_digits():,} digits"
        ) from None
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object with 'id' and 'text', got {_kind(obj)}")
    request = _validate(obj)
    if is_blank(request.text):
        raise DecodeError("text is empty (only whitespace, NULs or zero-width characters)")
    if _SURROGATE_ESCAPE.search(text):
        _check_surrogates(request)
    return request


def _check_surrogates(request: ModerationRequest) -> None:
    """Reject unpaired surrogates the model let through (it checks str fields, not dict keys
    or the str member of a union); such a string cannot be encoded into any output."""
    fields: list[tuple[str, str | None]] = [
        ("id", request.id),
        ("text", request.text),
        ("user", request.user),
        ("context", request.context),
    ]
    for key, item in request.metadata.items():
        fields.append((f"metadata key {_short(key)}", key))
        fields.append((f"metadata[{_short(key)}]", item if isinstance(item, str) else None))
    for where, value in fields:
        if value is not None and _SURROGATE.search(value):
            raise DecodeError(f"{where} contains an unpaired surrogate escape (\\ud800-\\udfff)")


def _validate(obj: dict[str, Any]) -> ModerationRequest:
    try:
        return ModerationRequest.model_validate(obj)
    except ValidationError as exc:
        raise DecodeError(describe_request_errors(exc)) from None


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DecodeError(f"value is not usable JSON: duplicate key {_short(key)}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise DecodeError(f"value is not valid JSON: {name} is not a JSON number")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise DecodeError(f"value is not usable JSON: number {literal[:40]} is out of range")
    return number


def _short(key: str, limit: int = 40) -> str:
    """A key name safe to put in a reason: bounded, and repr escapes surrogates and controls."""
    return repr(key if len(key) <= limit else key[:limit] + "…")


def _kind(value: object) -> str:
    """The JSON name of a parsed value's type, with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def describe_request_errors(exc: ValidationError) -> str:
    """One sentence naming each bad field of a request and what is wrong with it."""
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        problem = _describe(err)
        if problem not in problems:  # a union reports once per member: say it once
            problems.append(problem)
    return "not a valid moderation request: " + "; ".join(problems)


_TYPE_NAMES = {
    "string_type": "a string",
    "dict_type": "an object",
    "int_type": "a number",
    "float_type": "a number",
    "bool_type": "a boolean",
}


def _describe(err: ErrorDetails) -> str:
    loc = err["loc"]
    kind = err["type"]
    given = err.get("input")
    if loc and loc[0] == "metadata" and len(loc) >= 2:
        # dict[str, JsonScalar]: report the entry once, not once per union member.
        where = f"metadata[{_short(str(loc[1]))}]"
        if kind == "string_unicode":
            return f"{where} contains an unpaired surrogate escape (\\ud800-\\udfff)"
        return f"{where} must be a string, number, boolean or null, got {_kind(given)}"
    if loc == ("images",) and kind == "tuple_type":
        return f"'images' must be an array, got {_kind(given)}"
    if loc and loc[0] == "images" and len(loc) >= 2:
        return _describe_image(err)
    field = ".".join(str(part) for part in loc) or "request"
    if kind == "missing":
        return f"'{field}' is missing"
    if kind == "string_too_short":
        return f"'{field}' is empty"
    if kind == "string_too_long":
        limit = err.get("ctx", {}).get("max_length")
        length = len(given) if isinstance(given, str) else "?"
        return f"'{field}' is {length} characters; at most {limit} are allowed"
    if kind == "string_unicode":
        return f"'{field}' contains an unpaired surrogate escape (\\ud800-\\udfff)"
    if kind in _TYPE_NAMES:
        return f"'{field}' must be {_TYPE_NAMES[kind]}, got {_kind(given)}"
    return f"'{field}': {err['msg']}"


def _describe_image(err: ErrorDetails) -> str:
    """An image's problem, named by its index (``images[1].mime_type``): pydantic's location
    also carries the union member's tag (``images.1.data.mime_type``), which means nothing to
    a producer."""
    loc = err["loc"]
    kind = err["type"]
    given = err.get("input")
    where = f"images[{loc[1]}]"
    if kind == "union_tag_not_found":
        return f"{where} must be an object with 'url', or with 'data' and 'mime_type'"
    field = str(loc[3]) if len(loc) >= 4 else ""
    if kind == "literal_error" and field == "mime_type":
        return (
            f"{where}.mime_type {_short(str(given))} is not supported; "
            "one of image/png, image/jpeg, image/gif, image/webp"
        )
    if kind == "extra_forbidden":
        return f"{where} has an unknown field {_short(field)}"
    if kind == "missing":
        return f"{where}.{field} is missing"
    if field == "url" and kind in ("string_pattern_mismatch", "string_too_short"):
        return f"{where}.url must be an https URL without spaces"
    if field == "url" and kind == "string_too_long":
        return f"{where}.url is over {err.get('ctx', {}).get('max_length')} characters"
    if kind in _TYPE_NAMES:
        return f"{where}.{field or 'image'} must be {_TYPE_NAMES[kind]}, got {_kind(given)}"
    return f"{where}.{field}: {err['msg']}" if field else f"{where}: {err['msg']}"
