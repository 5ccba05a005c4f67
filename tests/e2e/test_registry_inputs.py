"""Schema-registry input end to end: the real broker, the real registry (Apicurio), the fake
model over HTTP, modstream in-process.

One corpus goes in as JSON requests, then as Avro, Protobuf and JSON Schema records
(the Confluent wire format, schemas registered first, fields named unlike the request's parts
and mapped by MODSTREAM_INPUT_FIELDS). The verdicts must agree content id by content id. Each
framed run also carries one record of every bad kind, each a decode dead letter with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema

from consumer.app import serve
from consumer.settings import InputFormat
from consumer.tools.sample import CLEAN, HARMFUL
from tests.e2e.harness import assert_nothing_lost, new_run
from tests.fake_server import fake_openai_server
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

pytestmark = pytest.mark.timeout(300)

MESSAGES = 24

#: Verdict, as compared across formats: the action and the flagged categories.
Outcome = tuple[str, frozenset[str]]


def corpus() -> list[tuple[str, str]]:
    """(id, text): every third harmful, the rest clean."""
    items = []
    for i in range(MESSAGES):
        text = HARMFUL[(i // 3) % len(HARMFUL)][1] if i % 3 == 0 else CLEAN[i % len(CLEAN)]
        items.append((f"m{i}", f"{text} (#{i})"))
    return items


async def run_values(
    kafka_bootstrap: str, url: str, values: Sequence[bytes | None], **settings: Any
) -> tuple[dict[str, Outcome], list[str]]:
    """Run ``values`` on fresh topics; the verdicts by content id and the dead letters' reasons."""
    run = new_run(kafka_bootstrap, url, partitions=2)
    await run.create_topics()
    await run.produce(values)
    await serve(run.settings(concurrency=8, **settings), exit_when_idle=2)
    await assert_nothing_lost(run)
    summary = await run.outputs()
    verdicts = {
        v.content_id: (
            str(v.action),
            frozenset(k for k, c in v.categories.items() if c.flagged),
        )
        for v in summary.verdicts
    }
    assert len(verdicts) == len(summary.verdicts)  # one verdict per content id
    reasons = [f"{d.stage}/{d.error_class}: {d.error_message}" for d in summary.dead_letters]
    return verdicts, reasons


async def register(registry: str, subject: str, text: str, kind: str) -> int:
    async with AsyncSchemaRegistryClient({"url": registry}) as client:
        schema_id: int = await client.register_schema(subject, Schema(text, kind))
    return schema_id


KINDS = {
    InputFormat.AVRO: "AVRO",
    InputFormat.PROTOBUF: "PROTOBUF",
    InputFormat.JSON_SCHEMA: "JSON",
}
ENCODERS: dict[InputFormat, Callable[[dict[str, Any]], bytes]] = {
    InputFormat.AVRO: avro_payload,
    InputFormat.PROTOBUF: proto_payload,
    InputFormat.JSON_SCHEMA: json_payload,
}
#: A payload its own schema refuses, per format.
MISMATCHED = {
    InputFormat.AVRO: avro_payload(post("bad", "fine text"))[:-2],  # a short read
    InputFormat.PROTOBUF: b"\xff\xff\xff",  # a broken tag
    InputFormat.JSON_SCHEMA: json_payload({"post_id": "bad", "body": ["not", "a", "string"]}),
}


@pytest.mark.parametrize("fmt", list(KINDS))
async def test_framed_records_get_the_verdicts_json_gets(
    kafka_bootstrap: str, schema_registry: str, fmt: InputFormat
) -> None:
    items = corpus()
    texts = {"AVRO": json.dumps(AVRO_POST), "PROTOBUF": PROTO_POST, "JSON": json.dumps(JSON_POST)}
    ids = {
        kind: await register(schema_registry, f"e2e-{fmt}-{kind}", text, kind)
        for kind, text in texts.items()
    }
    own = ids[KINDS[fmt]]
    indexes = PROTO_POST_INDEXES if fmt is InputFormat.PROTOBUF else None
    encode = ENCODERS[fmt]
    good = encode(post("bad", "fine text"))
    bad: dict[str, bytes] = {
        "magic byte 0 (got 0x7b)": b'{"id": "x", "text": "plain json"}',
        "schema id 424242: the registry answered 404": frame(424_242, good, indexes),
        "does not match its": frame(own, MISMATCHED[fmt], indexes),
    }
    for kind, schema_id in ids.items():
        if kind != KINDS[fmt]:
            bad[f"schema id {schema_id} is a {kind} schema"] = frame(schema_id, good, indexes)
    if fmt is InputFormat.PROTOBUF:
        bad["message index 9 is out of range"] = frame(own, good, (9,))

    with fake_openai_server(latency_ms=2, seed=5) as url:
        expected, none = await run_values(
            kafka_bootstrap,
            url,
            [json.dumps({"id": i, "text": t}).encode() for i, t in items],
        )
        got, reasons = await run_values(
            kafka_bootstrap,
            url,
            [frame(own, encode(post(i, t)), indexes) for i, t in items] + list(bad.values()),
            input_format=fmt,
            schema_registry_url=schema_registry,
            input_fields=POST_FIELDS,
        )

    assert none == []
    assert len(expected) == MESSAGES
    assert any(flags for _, flags in expected.values())  # the corpus does flag something
    assert got == expected
    assert len(reasons) == len(bad)
    for want in bad:
        matching = [r for r in reasons if want in r]
        assert len(matching) == 1, (want, reasons)
        assert matching[0].startswith("decode/"), matching[0]
