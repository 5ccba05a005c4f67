"""A corpus of input record values that producers get wrong, and what modstream does with each.

Shared by the decode unit tests and the integration tests (which produce every case to a real
topic and check it comes out as a verdict or a dead letter). Values are for
``MODSTREAM_INPUT_FORMAT=json``.

``expect`` is the outcome: ``"dead_letter"`` (decode raises, the record goes to the dead-letter
topic with the reason) or ``"verdict"`` (decode accepts; a verdict follows). Decisions encoded
here, documented in ``consumer/pipeline/decode.py``:

* ``id`` must be a JSON string: ``ModerationRequest`` does not coerce numbers (pydantic v2 has
  ``coerce_numbers_to_str`` off), so ``{"id": 42}`` is a dead letter.
* NUL characters inside text are kept as sent (verdict); text that is only NULs, whitespace or
  zero-width marks is empty (dead letter).
* Unknown fields are ignored (verdict); a leading UTF-8 BOM is skipped (verdict).
* Duplicate keys, ``NaN``/``Infinity``, floats that overflow, unpaired surrogate escapes,
  UTF-16/32, trailing data and nesting deeper than the parser's recursion limit are dead
  letters.

Every fixed case is at most :data:`MAX_CASE_BYTES` bytes, so an integration test can set
``MODSTREAM_MAX_MESSAGE_BYTES`` just above it and add :func:`oversized` for the size limit.
"""

from __future__ import annotations

import json
from typing import Literal, NamedTuple

Expect = Literal["dead_letter", "verdict"]


class BadInput(NamedTuple):
    """One named record value and the outcome modstream must produce for it."""

    name: str
    value: bytes | None
    expect: Expect


def _obj(**fields: object) -> bytes:
    return json.dumps(fields).encode()


_NESTING = 5_000  # far beyond json's recursion limit (sys.getrecursionlimit(), 1000 by default)

BAD_INPUTS: list[BadInput] = [
    # Baselines: the corpus is only meaningful if good input passes.
    BadInput("valid_minimal", _obj(id="m-1", text="hello"), "verdict"),
    BadInput(
        "valid_all_fields",
        _obj(id="m-2", text="hi", user="u-1", context="thread", metadata={"a": 1, "b": None}),
        "verdict",
    ),
    # Not a record at all.
    BadInput("tombstone", None, "dead_letter"),
    BadInput("empty_bytes", b"", "dead_letter"),
    BadInput("plain_text_not_json", b"hello world", "dead_letter"),
    # Encoding.
    BadInput("bad_utf8_start_byte", b'\xff{"id": "a", "text": "x"}', "dead_letter"),
    BadInput("bad_utf8_in_text", b'{"id": "a", "text": "caf\xc3"}', "dead_letter"),
    BadInput("overlong_utf8", b'{"id": "a", "text": "\xc0\xaf"}', "dead_letter"),
    BadInput("utf8_encoded_surrogate", b'{"id": "a", "text": "\xed\xa0\x80"}', "dead_letter"),
    BadInput("utf16_with_bom", '{"id": "a", "text": "x"}'.encode("utf-16"), "dead_letter"),
    BadInput("utf16le_without_bom", '{"id": "a", "text": "x"}'.encode("utf-16-le"), "dead_letter"),
    BadInput("utf32_with_bom", '{"id": "a", "text": "x"}'.encode("utf-32"), "dead_letter"),
    BadInput("utf8_bom_prefixed", b'\xef\xbb\xbf{"id": "a", "text": "x"}', "verdict"),
    # JSON syntax.
    BadInput("truncated_json", b'{"id": "a", "text": "hel', "dead_letter"),
    BadInput("trailing_garbage", b'{"id": "a", "text": "x"} {"id": "b"}', "dead_letter"),
    BadInput("single_quotes", b"{'id': 'a', 'text': 'x'}", "dead_letter"),
    BadInput("json_comment", b'{"id": "a", /* c */ "text": "x"}', "dead_letter"),
    BadInput("nan_literal", b'{"id": "a", "text": "x", "score": NaN}', "dead_letter"),
    BadInput("float_overflow", b'{"id": "a", "text": "x", "score": 1e999}', "dead_letter"),
    BadInput(
        "int_too_many_digits", b'{"id": "a", "text": "x", "n": ' + b"9" * 5000 + b"}", "dead_letter"
    ),
    BadInput(
        "deeply_nested",
        b'{"id": "a", "text": "x", "extra": ' + b"[" * _NESTING + b"]" * _NESTING + b"}",
        "dead_letter",
    ),
    BadInput("duplicate_keys", b'{"id": "a", "text": "fine", "text": "other"}', "dead_letter"),
    # Not an object.
    BadInput("json_array", b'[{"id": "a", "text": "x"}]', "dead_letter"),
    BadInput("json_number", b"42", "dead_letter"),
    BadInput("json_string", b'"moderate me"', "dead_letter"),
    BadInput("json_null", b"null", "dead_letter"),
    BadInput("json_true", b"true", "dead_letter"),
    # Fields.
    BadInput("missing_text", _obj(id="a"), "dead_letter"),
    BadInput("missing_id", _obj(text="x"), "dead_letter"),
    BadInput("empty_object", b"{}", "dead_letter"),
    BadInput("id_is_int", _obj(id=42, text="x"), "dead_letter"),
    BadInput("text_is_int", _obj(id="a", text=7), "dead_letter"),
    BadInput("text_is_null", _obj(id="a", text=None), "dead_letter"),
    BadInput("context_is_object", _obj(id="a", text="x", context={"t": 1}), "dead_letter"),
    BadInput("empty_id", _obj(id="", text="x"), "dead_letter"),
    BadInput("extremely_long_id", _obj(id="i" * 10_000, text="x"), "dead_letter"),
    BadInput("empty_text", _obj(id="a", text=""), "dead_letter"),
    BadInput("whitespace_only_text", _obj(id="a", text=" \t\n\u3000 "), "dead_letter"),
    BadInput("nul_only_text", _obj(id="a", text="\x00\x00"), "dead_letter"),
    BadInput("zero_width_only_text", _obj(id="a", text="\u200b\u200d"), "dead_letter"),
    BadInput("nul_inside_text", _obj(id="a", text="before\x00after"), "verdict"),
    BadInput("lone_surrogate_in_text", b'{"id": "a", "text": "x\\ud800y"}', "dead_letter"),
    BadInput(
        "lone_surrogate_in_metadata",
        b'{"id": "a", "text": "x", "metadata": {"k": "\\udc00"}}',
        "dead_letter",
    ),
    BadInput("paired_surrogate_escape", b'{"id": "a", "text": "\\ud83d\\ude00"}', "verdict"),
    BadInput(
        "metadata_nested_object", _obj(id="a", text="x", metadata={"k": {"a": 1}}), "dead_letter"
    ),
    BadInput("metadata_is_array", _obj(id="a", text="x", metadata=[1, 2]), "dead_letter"),
    BadInput("unknown_fields", _obj(id="a", text="x", lang="en", extra={"deep": [1]}), "verdict"),
]

#: A fragment the dead-letter reason must contain, for the cases where the wording matters.
REASONS: dict[str, str] = {
    "tombstone": "tombstone",
    "empty_bytes": "empty",
    "bad_utf8_start_byte": "byte offset 0",
    "bad_utf8_in_text": "byte offset 24",
    "utf16_with_bom": "UTF-16",
    "utf16le_without_bom": "UTF-16",
    "utf32_with_bom": "UTF-32",
    "truncated_json": "line 1, column",
    "trailing_garbage": "Extra data",
    "nan_literal": "NaN",
    "float_overflow": "out of range",
    "int_too_many_digits": "digits",
    "deeply_nested": "nested too deeply",
    "duplicate_keys": "duplicate key 'text'",
    "json_array": "got an array",
    "json_number": "got a number",
    "json_string": "got a string",
    "json_null": "got null",
    "json_true": "got a boolean",
    "missing_text": "'text' is missing",
    "missing_id": "'id' is missing",
    "empty_object": "'id' is missing; 'text' is missing",
    "id_is_int": "'id' must be a string, got a number",
    "text_is_int": "'text' must be a string, got a number",
    "text_is_null": "'text' must be a string, got null",
    "context_is_object": "'context' must be a string, got an object",
    "empty_id": "'id' is empty",
    "extremely_long_id": "at most 256",
    "empty_text": "'text' is empty",
    "whitespace_only_text": "text is empty",
    "nul_only_text": "text is empty",
    "zero_width_only_text": "text is empty",
    "lone_surrogate_in_text": "surrogate",
    "lone_surrogate_in_metadata": "surrogate",
    "metadata_nested_object": "metadata['k']",
    "metadata_is_array": "'metadata' must be an object, got an array",
}

#: The largest fixed case, in bytes.
MAX_CASE_BYTES = max(len(case.value or b"") for case in BAD_INPUTS)


def oversized(limit: int) -> BadInput:
    """A valid request of exactly ``limit + 1`` bytes: dead-lettered by the size check alone."""
    shell = _obj(id="oversized", text="")
    padding = limit + 1 - len(shell)
    if padding < 1:
        raise ValueError(f"limit {limit} is below the smallest request ({len(shell)} bytes)")
    return BadInput("oversized", _obj(id="oversized", text="x" * padding), "dead_letter")


def cases(max_message_bytes: int) -> list[BadInput]:
    """The whole corpus for a consumer configured with ``max_message_bytes``."""
    if max_message_bytes < MAX_CASE_BYTES:
        raise ValueError(
            f"max_message_bytes {max_message_bytes} is below the largest fixed case "
            f"({MAX_CASE_BYTES} bytes): those cases would fail on size instead"
        )
    return [*BAD_INPUTS, oversized(max_message_bytes)]
