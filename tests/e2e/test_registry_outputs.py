"""Schema-registry output end to end: the real broker, the real registry (Apicurio), the fake
model over HTTP, modstream itself.

- One corpus (clean, harmful and undecodable records) runs with JSON output, then with Avro
  output in both delivery modes, then with JSON Schema output. Every verdict, usage event and
  dead letter of a framed run is read back by Confluent's own deserializer with the schema the
  registry holds for its id; the framed runs agree with the JSON run input by input, and
  ``report`` (``summarise``) reads them as it reads JSON.
- A replay with Avro output registers its own subjects, and ``eval`` reads it against the
  production run's Avro verdicts; a replay of Avro input decodes it through the registry.
- The real ``modstream consume``, its verdict subject holding a version ours cannot read (a
  field of another type), stops with exit 3 and one line naming the subject and the level,
  before it consumes anything.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from confluent_kafka.schema_registry._async.avro import AsyncAvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import BaseModel

from consumer.app import serve
from consumer.errors import PublishRejected
from consumer.kafka.ranges import read_topics
from consumer.kafka.registry_outputs import subject
from consumer.settings import Delivery, InputFormat, OutputFormat
from consumer.tools.evaluate import run_eval
from consumer.tools.replay import ReplayRequest, run_replay
from consumer.tools.report import Summary, read_events
from consumer.tools.sample import HARMFUL
from schemas import DeadLetter, UsageEvent, Verdict
from schemas.avro import avro_schema
from tests.e2e.harness import Run, assert_nothing_lost, clean_values, new_run
from tests.fake_server import fake_openai_server
from tests.registry_records import AVRO_POST, POST_FIELDS, avro_payload, frame, post

pytestmark = pytest.mark.timeout(300)

UNDECODABLE = [b"not json at all", b'{"id": "no text"}']


def corpus() -> list[bytes | None]:
    """Clean and harmful requests, and two records that are dead letters."""
    harmful: list[bytes | None] = [
        json.dumps({"id": f"h{i}", "text": text}).encode() for i, (_, text) in enumerate(HARMFUL)
    ]
    return [*clean_values(12), *harmful, *UNDECODABLE]


#: A request whose verdict Avro cannot hold (its metadata carries an integer over 64 bits).
HUGE = json.dumps({"id": "huge", "text": "hello", "metadata": {"n": 2**64}}).encode()


async def run_corpus(kafka_bootstrap: str, url: str, **settings: Any) -> tuple[Run, Summary]:
    """The corpus and HUGE through one consumer."""
    run = new_run(kafka_bootstrap, url, partitions=2)
    await run.create_topics()
    await run.produce([*corpus(), HUGE])
    await serve(run.settings(concurrency=6, **settings), exit_when_idle=2)
    run.reading = {"schema_registry_url": settings.get("schema_registry_url")}
    summary = await assert_nothing_lost(run)
    assert summary.unreadable == 0
    return run, summary


def outcomes(summary: Summary) -> dict[tuple[int, int], tuple[str, ...]]:
    """What each input offset came to: its verdict's action and flags, or its dead letter."""
    out: dict[tuple[int, int], tuple[str, ...]] = {}
    for v in summary.verdicts:
        flags = sorted(k for k, c in v.categories.items() if c.flagged)
        out[(v.source.partition, v.source.offset)] = (str(v.action), *flags)
    for d in summary.dead_letters:
        out[(d.source.partition, d.source.offset)] = (d.stage, d.error_class)
    return out


async def raw_values(kafka_bootstrap: str, topic: str) -> list[bytes]:
    """Every committed value of ``topic``, as bytes, up to its end offsets now."""
    records = read_topics({"bootstrap_servers": kafka_bootstrap}, [topic])
    return [r.value async for r in records if r.value is not None]


async def assert_read_by_confluents_deserializer(
    kafka_bootstrap: str, registry: str, run: Run, summary: Summary
) -> None:
    """Every output value is Avro under the schema the registry holds for its subject."""
    written: dict[str, tuple[type[BaseModel], list[Any]]] = {
        f"{run.name}.verdicts": (Verdict, summary.verdicts),
        f"{run.name}.usage": (UsageEvent, summary.usage),
        f"{run.name}.dlq": (DeadLetter, summary.dead_letters),
    }
    async with AsyncSchemaRegistryClient({"url": registry}) as client:
        deserializer = await AsyncAvroDeserializer(client)
        for topic, (model, events) in written.items():
            latest = await client.get_latest_version(subject(topic))
            assert latest.schema.schema_type == "AVRO"
            values = await raw_values(kafka_bootstrap, topic)
            assert values and len(values) == len(events)
            read = []
            for value in values:
                assert int.from_bytes(value[1:5], "big") == latest.schema_id
                record = await deserializer(value, SerializationContext(topic, MessageField.VALUE))
                read.append(model.model_validate(record))
            key = lambda e: e.event_id  # noqa: E731
            assert sorted(read, key=key) == sorted(events, key=key)


async def test_avro_and_json_schema_outputs_carry_the_verdicts_json_output_carries(
    kafka_bootstrap: str, schema_registry: str
) -> None:
    with fake_openai_server(latency_ms=2, seed=11) as url:
        _, plain = await run_corpus(kafka_bootstrap, url)
        framed = {
            "avro": OutputFormat.AVRO,
            "avro exactly-once": OutputFormat.AVRO,
            "json_schema": OutputFormat.JSON_SCHEMA,
        }
        runs = {}
        for name, fmt in framed.items():
            delivery = Delivery.EXACTLY_ONCE if "exactly" in name else Delivery.AT_LEAST_ONCE
            runs[name] = await run_corpus(
                kafka_bootstrap,
                url,
                output_format=fmt,
                schema_registry_url=schema_registry,
                delivery=delivery,
            )
    expected = outcomes(plain)
    [huge] = [
        (v.source.partition, v.source.offset) for v in plain.verdicts if v.content_id == "huge"
    ]
    # JSON holds any integer; Avro's long does not: that input is a publish dead letter there.
    as_avro = {**expected, huge: ("publish", "PublishRejected")}
    assert len(expected) == len(corpus()) + 1
    assert sum(1 for o in expected.values() if o[0] == "decode") == len(UNDECODABLE)
    assert any(o[0] == "block" for o in expected.values())
    for name, (run, summary) in runs.items():
        assert outcomes(summary) == (as_avro if name.startswith("avro") else expected), name
        if name.startswith("avro"):
            await assert_read_by_confluents_deserializer(
                kafka_bootstrap, schema_registry, run, summary
            )
    run, _ = runs["json_schema"]
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        latest = await client.get_latest_version(subject(f"{run.name}.verdicts"))
    assert latest.schema.schema_type == "JSON"
    [value, *_] = await raw_values(kafka_bootstrap, f"{run.name}.verdicts")
    assert value[:1] == b"\x00" and int.from_bytes(value[1:5], "big") == latest.schema_id
    assert Verdict.model_validate_json(value[5:]).source.topic == run.input_topic


async def test_an_incompatible_output_schema_stops_consume_naming_the_subject(
    kafka_bootstrap: str, schema_registry: str, tmp_path: Path
) -> None:
    with fake_openai_server(latency_ms=2) as url:
        run = new_run(kafka_bootstrap, url, partitions=1)
        await run.create_topics()
        await run.produce(clean_values(3))
        older = copy.deepcopy(avro_schema(Verdict))
        for field in older["fields"]:
            if field["name"] == "latency_ms":
                field["type"] = "string"  # ours writes a double: old data ours cannot read
        verdicts = f"{run.name}.verdicts"
        async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
            await client.register_schema(subject(verdicts), Schema(json.dumps(older), "AVRO"))
        consumer = run.start(
            MODSTREAM_OUTPUT_FORMAT="avro", MODSTREAM_SCHEMA_REGISTRY_URL=schema_registry
        )
        try:
            code = await consumer.wait(timeout=120)
        finally:
            consumer.kill_if_running()
    assert code == 3, consumer.tail()
    [line] = [r for r in consumer.logs.raw if r.startswith("modstream: ")]
    assert f"subject '{verdicts}-value' is not BACKWARD compatible" in line, line
    assert "Traceback" not in consumer.tail()
    # Stopped before consuming: nothing was written, nothing committed.
    assert await run.committed_total() == 0
    assert await raw_values(kafka_bootstrap, verdicts) == []


async def test_a_replay_writes_avro_and_eval_reads_it_against_an_avro_baseline(
    kafka_bootstrap: str, schema_registry: str, tmp_path: Path
) -> None:
    avro = {"output_format": OutputFormat.AVRO, "schema_registry_url": schema_registry}
    with fake_openai_server(latency_ms=2, seed=11) as url:
        run, production = await run_corpus(kafka_bootstrap, url, **avro)
        settings = run.settings(**avro)
        to_topic = f"{run.name}.eval"
        result = await run_replay(settings, ReplayRequest(topic=run.input_topic, to_topic=to_topic))
        [report] = await run_eval(
            settings, [to_topic], labels=None, baseline=f"{run.name}.verdicts", out=tmp_path
        )
    assert result.verdicts == len(production.verdicts) == report.verdicts
    # HUGE: no verdict Avro can hold, so counted with the undecodable ones, by kind.
    assert result.dead_letters == {"decode": len(UNDECODABLE), PublishRejected.kind: 1}
    assert report.agreement == 1.0  # the same inputs, the same (deterministic) fake model
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        for topic in (to_topic, f"{to_topic}.usage"):
            latest = await client.get_latest_version(subject(topic))
            assert latest.schema.schema_type == "AVRO"
            values = await raw_values(kafka_bootstrap, topic)
            assert values and all(v[:1] == b"\x00" for v in values)
            assert {int.from_bytes(v[1:5], "big") for v in values} == {latest.schema_id}


async def test_a_replay_reads_schema_registry_input_as_the_service_does(
    kafka_bootstrap: str, schema_registry: str
) -> None:
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        schema_id = await client.register_schema(
            f"replay-in-{uuid.uuid4().hex[:8]}-value", Schema(json.dumps(AVRO_POST), "AVRO")
        )
    texts = [text for _, text in HARMFUL] + ["a calm message about the weather"] * 4
    framed = [frame(schema_id, avro_payload(post(f"p{i}", t))) for i, t in enumerate(texts)]
    avro_in = {
        "input_format": InputFormat.AVRO,
        "schema_registry_url": schema_registry,
        "input_fields": POST_FIELDS,
    }
    with fake_openai_server(latency_ms=2, seed=11) as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        await run.produce([*framed, b'{"id": "not framed", "text": "json"}'])
        settings = run.settings(**avro_in)
        dry = await run_replay(
            settings, ReplayRequest(topic=run.input_topic, to_topic="unused", dry_run=True)
        )
        real = await run_replay(
            settings, ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.eval")
        )
    for result in (dry, real):
        # Every framed record decoded through the registry; the unframed one a decode dead letter.
        assert result.dead_letters == {"decode": 1}, result.dead_letters
    assert real.verdicts == len(texts)
    replayed = await read_events(run.settings(), f"{run.name}.eval", Verdict)
    assert sorted(v.content_id for v in replayed) == sorted(f"p{i}" for i in range(len(texts)))
    assert any(v.flagged for v in replayed)
