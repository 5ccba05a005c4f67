"""consumer.kafka.registry against a real schema registry (Apicurio, deploy/registry).

Schemas of all three kinds are registered; records framed with their ids decode, or become
DecodeErrors with their reason; an unreachable or 5xx registry is retried, never a DecodeError.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema

from consumer.errors import DecodeError
from consumer.kafka.registry import SchemaRegistry
from consumer.settings import InputFormat, Settings
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
    registry_stub,
)

pytestmark = pytest.mark.timeout(120)


def settings(url: str, fmt: InputFormat) -> Settings:
    return Settings(
        input_format=fmt,
        schema_registry_url=url,
        input_fields=POST_FIELDS,
        openai_api_key="sk-test-not-a-real-key",
    )


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def schema_ids(schema_registry: str) -> dict[str, int]:
    """One schema of each kind, registered under its own subject."""
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        return {
            "avro": await client.register_schema(
                "it-post-avro-value", Schema(json.dumps(AVRO_POST), "AVRO")
            ),
            "json": await client.register_schema(
                "it-post-json-value", Schema(json.dumps(JSON_POST), "JSON")
            ),
            "protobuf": await client.register_schema(
                "it-post-proto-value", Schema(PROTO_POST, "PROTOBUF")
            ),
        }


async def test_the_registry_serves_the_confluent_api(
    schema_registry: str, schema_ids: dict[str, int]
) -> None:
    assert len(set(schema_ids.values())) == 3
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        subjects = await client.get_subjects()
        assert {"it-post-avro-value", "it-post-json-value", "it-post-proto-value"} <= set(subjects)
        proto = await client.get_schema(schema_ids["protobuf"])
        assert proto.schema_type == "PROTOBUF"


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        (InputFormat.AVRO, "avro"),
        (InputFormat.JSON_SCHEMA, "json"),
        (InputFormat.PROTOBUF, "protobuf"),
    ],
)
async def test_records_decode_through_the_registry(
    schema_registry: str, schema_ids: dict[str, int], fmt: InputFormat, kind: str
) -> None:
    encode = {"avro": avro_payload, "json": json_payload, "protobuf": proto_payload}[kind]
    indexes = PROTO_POST_INDEXES if kind == "protobuf" else None
    record = post("p1", "hello there") | {"thread": "t9", "tags": {"lang": "en"}}
    value = frame(schema_ids[kind], encode(record), indexes)
    async with SchemaRegistry(settings(schema_registry, fmt)) as registry:
        request = await registry.decode(value)
        again = await registry.decode(value)
    assert request == again
    assert (request.id, request.text, request.context) == ("p1", "hello there", "t9")
    assert request.metadata == {"lang": "en"}


@pytest.mark.parametrize(
    ("fmt", "value", "reason"),
    [
        (InputFormat.AVRO, frame(999_999, b"x"), r"schema id 999999: the registry answered 404"),
        (InputFormat.AVRO, b"\x01\x00\x00\x00\x01x", "magic byte 0"),
        (InputFormat.AVRO, "json", "is a JSON schema; MODSTREAM_INPUT_FORMAT=avro reads AVRO"),
        (InputFormat.AVRO, "protobuf", "is a PROTOBUF schema"),
        (InputFormat.JSON_SCHEMA, "avro", "is a AVRO schema"),
        (InputFormat.AVRO, "avro-short", "does not match its Avro schema"),
        (InputFormat.JSON_SCHEMA, "json-bad", "does not match its JSON Schema at body"),
        (InputFormat.PROTOBUF, "protobuf-bad", "does not match its Protobuf schema"),
        (InputFormat.PROTOBUF, "protobuf-index", "message index 7 is out of range"),
        (InputFormat.PROTOBUF, "avro-framed", "is a AVRO schema"),
    ],
)
async def test_bad_records_are_decode_errors(
    schema_registry: str,
    schema_ids: dict[str, int],
    fmt: InputFormat,
    value: bytes | str,
    reason: str,
) -> None:
    if isinstance(value, str):
        payloads = {
            "avro": avro_payload(post("p", "x")),
            "json": json_payload(post("p", "x")),
            "protobuf": b"\x0a\x01p",
            "avro-short": avro_payload(post("p", "hello"))[:-2],
            "json-bad": json_payload({"post_id": "p", "body": 3}),
            "protobuf-bad": b"\x00\x01\xff\xff",  # Post (index [0]), then a broken varint
            "protobuf-index": b"\x02\x0e\x0a\x01p",  # indexes [7]
            "avro-framed": b"\x00" + avro_payload(post("p", "x")),
        }
        value = frame(schema_ids[value.split("-")[0]], payloads[value])
    async with SchemaRegistry(settings(schema_registry, fmt)) as registry:
        with pytest.raises(DecodeError, match=reason):
            await registry.decode(value)


@pytest_asyncio.fixture
async def flaky_registry(schema_registry: str) -> AsyncIterator[tuple[str, list[int]]]:
    """A registry that answers 503 twice, then passes requests on to the real one."""
    answered: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        if len(answered) < 2:
            answered.append(503)
            return web.json_response({"error_code": 50301, "message": "busy"}, status=503)
        async with (
            aiohttp.ClientSession() as session,
            session.get(schema_registry + request.path_qs.removeprefix("/r")) as upstream,
        ):
            answered.append(upstream.status)
            return web.Response(
                body=await upstream.read(), status=upstream.status, content_type="application/json"
            )

    async with registry_stub(handle) as url:
        yield f"{url}/r", answered


async def test_a_5xx_registry_is_retried_until_it_answers(
    flaky_registry: tuple[str, list[int]], schema_ids: dict[str, int]
) -> None:
    url, answered = flaky_registry
    async with SchemaRegistry(settings(url, InputFormat.AVRO)) as registry:
        request = await registry.decode(frame(schema_ids["avro"], avro_payload(post("p", "hi"))))
    assert request.text == "hi"
    assert answered == [503, 503, 200]


async def test_an_unreachable_registry_waits_and_never_dead_letters(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    async with SchemaRegistry(settings(url, InputFormat.AVRO)) as registry:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(registry.decode(frame(1, b"\x02p\x02x\x00\x00")), 2)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
