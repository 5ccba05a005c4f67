"""Schemas and wire-format records for the schema-registry tests (integration and e2e).

Records are framed as Confluent's serializers frame them: magic byte 0, the schema id
big-endian, the payload (protobuf's message-index array is written by :func:`frame` too, for
the parser's tests).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import fastavro
from aiohttp import web

from consumer.kafka.protoc import compile_proto, message_class

#: An Avro post whose fields are not named like the request's parts (MODSTREAM_INPUT_FIELDS).
AVRO_POST = {
    "type": "record",
    "name": "Post",
    "namespace": "dev.modstream.test",
    "fields": [
        {"name": "post_id", "type": "string"},
        {"name": "body", "type": "string"},
        {"name": "thread", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}

JSON_POST = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "post_id": {"type": "string"},
        "body": {"type": "string"},
        "thread": {"type": ["string", "null"]},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["post_id", "body"],
}

#: Post is the file's second message: its records carry message indexes [1].
PROTO_POST = """syntax = "proto3";
package dev.modstream.test;
message Note { string note = 1; }
message Post {
  string post_id = 1;
  string body = 2;
  optional string thread = 3;
  map<string, string> tags = 4;
}
"""
PROTO_POST_INDEXES = (1,)

#: The field mapping for the posts above.
POST_FIELDS = "id=post_id,text=body,context=thread,metadata=tags"


def zigzag_varint(number: int) -> bytes:
    """``number`` as protobuf's zigzag varint (Confluent's message indexes)."""
    raw = (number << 1) ^ (number >> 63)
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        if raw:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(schema_id: int, payload: bytes, message_indexes: tuple[int, ...] | None = None) -> bytes:
    """The wire format; ``message_indexes`` () writes the one-byte "first message" form."""
    header = b"\x00" + schema_id.to_bytes(4, "big")
    if message_indexes is None:
        return header + payload
    if message_indexes in ((), (0,)):
        return header + b"\x00" + payload
    indexes = b"".join(zigzag_varint(i) for i in message_indexes)
    return header + zigzag_varint(len(message_indexes)) + indexes + payload


def avro_payload(post: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(AVRO_POST), post)
    return buffer.getvalue()


def proto_payload(post: dict[str, Any]) -> bytes:
    message = message_class(compile_proto(PROTO_POST), PROTO_POST_INDEXES)
    fields = {k: v for k, v in post.items() if v is not None}
    return message(**fields).SerializeToString()


def json_payload(post: dict[str, Any]) -> bytes:
    return json.dumps(post).encode()


def post(request_id: str, text: str) -> dict[str, Any]:
    """The post whose mapped request is ``{"id": request_id, "text": text}``."""
    return {"post_id": request_id, "body": text, "thread": None, "tags": {}}


@asynccontextmanager
async def registry_stub(
    handle: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[str]:
    """A stand-in HTTP server on 127.0.0.1 answering every request with ``handle``; its base
    URL. For the registry's failures only (refusals, outages): the real registry does the rest."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
