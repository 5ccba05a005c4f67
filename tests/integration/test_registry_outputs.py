"""consumer.kafka.registry_outputs against a real schema registry (Apicurio, deploy/registry).

Output schemas are registered under ``<topic>-value`` with the compatibility level set; values
written with them are read back by Confluent's own deserializer and by ``OutputReader``; a
schema the subject's readers could not read stops start-up, naming the subject; a registry that
refuses or never answers stops it too, with the reason.
"""

from __future__ import annotations

import copy
import io
import json
import socket
import uuid
from collections.abc import AsyncIterator

import fastavro
import pytest
import pytest_asyncio
from aiohttp import web
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from confluent_kafka.schema_registry._async.avro import AsyncAvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.errors import ConfigError, OutputSchemaRejected, RegistryUnavailable
from consumer.kafka import registry_outputs
from consumer.kafka.registry_outputs import OutputReader, output_encoder, subject
from consumer.pipeline.encode import RegistryEncoder, frame
from consumer.settings import Compatibility, OutputFormat, Settings
from schemas import DeadLetter, UsageEvent, Verdict
from schemas.avro import avro_schema
from tests import output_events
from tests.registry_records import registry_stub

pytestmark = pytest.mark.timeout(120)


def settings(url: str, fmt: OutputFormat, **more: object) -> Settings:
    return Settings(
        output_format=fmt,
        schema_registry_url=url,
        openai_api_key="sk-test-not-a-real-key",
        **more,  # type: ignore[arg-type]
    )


def topics() -> dict[str, type[Verdict] | type[UsageEvent] | type[DeadLetter]]:
    run = uuid.uuid4().hex[:8]
    return {f"v-{run}": Verdict, f"u-{run}": UsageEvent, f"d-{run}": DeadLetter}


async def test_avro_outputs_are_registered_and_read_back_with_the_registrys_schema(
    schema_registry: str,
) -> None:
    outputs = topics()
    encoder = await output_encoder(settings(schema_registry, OutputFormat.AVRO), outputs)
    assert isinstance(encoder, RegistryEncoder)
    samples = [output_events.verdict(), output_events.usage(), output_events.dead_letter()]
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        for (topic, model), event in zip(outputs.items(), samples, strict=True):
            latest = await client.get_latest_version(subject(topic))
            assert latest.schema_id == encoder.schemas[topic].schema_id
            assert latest.schema.schema_type == "AVRO"
            assert await client.get_compatibility(subject(topic)) == "BACKWARD"
            value = encoder.encode(topic, event)
            # Confluent's deserializer: the schema fetched by the id in the value, nothing of ours.
            deserializer = await AsyncAvroDeserializer(client)
            record = await deserializer(value, SerializationContext(topic, MessageField.VALUE))
            assert model.model_validate(record) == event
            async with OutputReader(settings(schema_registry, OutputFormat.JSON)) as reader:
                assert await reader.read(value, model) == event


async def test_json_schema_outputs_are_registered_as_json_and_read_back(
    schema_registry: str,
) -> None:
    outputs = topics()
    encoder = await output_encoder(settings(schema_registry, OutputFormat.JSON_SCHEMA), outputs)
    verdicts = next(iter(outputs))
    value = encoder.encode(verdicts, output_events.verdict())
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        latest = await client.get_latest_version(subject(verdicts))
        assert latest.schema.schema_type == "JSON"
        assert json.loads(latest.schema.schema_str)["title"] == "Verdict"
    async with OutputReader(settings(schema_registry, OutputFormat.JSON)) as reader:
        assert await reader.read(value, Verdict) == output_events.verdict()
        # Plain JSON values (a topic written before the switch) read as before.
        plain = output_events.verdict().model_dump_json().encode()
        assert await reader.read(plain, Verdict) == output_events.verdict()


async def test_a_second_start_up_reuses_the_registered_schemas(schema_registry: str) -> None:
    outputs = topics()
    first = await output_encoder(settings(schema_registry, OutputFormat.AVRO), outputs)
    again = await output_encoder(settings(schema_registry, OutputFormat.AVRO), outputs)
    assert isinstance(first, RegistryEncoder) and isinstance(again, RegistryEncoder)
    assert {t: s.schema_id for t, s in first.schemas.items()} == {
        t: s.schema_id for t, s in again.schemas.items()
    }
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        assert await client.get_versions(subject(next(iter(outputs)))) == [1]


async def register_older(url: str, topic: str, change: str) -> int:
    """Register, under ``topic``'s subject, our Verdict schema changed as ``change`` says."""
    schema = copy.deepcopy(avro_schema(Verdict))
    fields = schema["fields"]
    if change == "flagged is a string":
        next(f for f in fields if f["name"] == "flagged")["type"] = "string"
    elif change == "no shadow_of":  # an older version: ours adds a field with a default
        schema["fields"] = [f for f in fields if f["name"] != "shadow_of"]
    async with AsyncSchemaRegistryClient({"url": url}) as client:
        schema_id = await client.register_schema(subject(topic), Schema(json.dumps(schema), "AVRO"))
    return int(schema_id)


async def test_an_incompatible_schema_change_stops_start_up_naming_the_subject(
    schema_registry: str,
) -> None:
    outputs = topics()
    verdicts = next(iter(outputs))
    older = await register_older(schema_registry, verdicts, "flagged is a string")
    with pytest.raises(OutputSchemaRejected) as raised:
        await output_encoder(settings(schema_registry, OutputFormat.AVRO), outputs)
    message = str(raised.value)
    assert f"subject '{verdicts}-value' is not BACKWARD compatible" in message
    assert f"latest version (1, schema id {older})" in message
    assert "MODSTREAM_SCHEMA_COMPATIBILITY" in message
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        # Nothing registered, and the level set to ours (Apicurio gives a new subject NONE).
        assert await client.get_versions(subject(verdicts)) == [1]
        assert await client.get_compatibility(subject(verdicts)) == "BACKWARD"
    assert OutputSchemaRejected.fatal


async def test_a_compatible_evolution_registers_a_new_version(schema_registry: str) -> None:
    outputs = topics()
    verdicts = next(iter(outputs))
    await register_older(schema_registry, verdicts, "no shadow_of")
    encoder = await output_encoder(settings(schema_registry, OutputFormat.AVRO), outputs)
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        assert await client.get_versions(subject(verdicts)) == [1, 2]
        latest = await client.get_latest_version(subject(verdicts))
    assert isinstance(encoder, RegistryEncoder)
    assert encoder.schemas[verdicts].schema_id == latest.schema_id


async def test_the_configured_level_is_what_the_subject_gets(schema_registry: str) -> None:
    outputs = topics()
    chosen = settings(
        schema_registry, OutputFormat.AVRO, schema_compatibility=Compatibility.FULL_TRANSITIVE
    )
    await output_encoder(chosen, outputs)
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        for topic in outputs:
            assert await client.get_compatibility(subject(topic)) == "FULL_TRANSITIVE"


@pytest_asyncio.fixture
async def refusing_registry() -> AsyncIterator[str]:
    """A registry that answers every request 403, as one whose credentials lack write rights."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"error_code": 40301, "message": "forbidden"}, status=403)

    async with registry_stub(handle) as url:
        yield url


async def test_a_registry_that_refuses_stops_start_up_with_its_answer(
    refusing_registry: str,
) -> None:
    with pytest.raises(
        OutputSchemaRejected, match=r"refused .* it answered 403 \(error code 40301\)"
    ):
        await output_encoder(settings(refusing_registry, OutputFormat.AVRO), topics())


async def test_a_registry_that_never_answers_stops_start_up_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(registry_outputs, "START_UP_DEADLINE_S", 1.0)
    url = f"http://127.0.0.1:{port}"
    # Credentials in the URL are never repeated in the message.
    with_password = f"http://svc:pw-in-url-9@127.0.0.1:{port}"
    with pytest.raises(
        OutputSchemaRejected, match=rf"at {url} did not register .* within 1 s"
    ) as e:
        await output_encoder(settings(with_password, OutputFormat.AVRO), topics())
    assert "pw-in-url-9" not in str(e.value)


async def test_a_value_written_under_an_older_version_reads_into_todays_model(
    schema_registry: str,
) -> None:
    older = copy.deepcopy(avro_schema(Verdict))
    older["fields"] = [f for f in older["fields"] if f["name"] != "shadow_of"]
    async with AsyncSchemaRegistryClient({"url": schema_registry}) as client:
        older_id = await client.register_schema(
            f"older-{uuid.uuid4().hex[:8]}-value", Schema(json.dumps(older), "AVRO")
        )
    verdict = output_events.verdict()
    payload = io.BytesIO()
    record = verdict.model_dump(mode="python", exclude={"shadow_of"})
    fastavro.schemaless_writer(payload, fastavro.parse_schema(older), record)
    async with OutputReader(settings(schema_registry, OutputFormat.JSON)) as reader:
        read = await reader.read(frame(older_id, payload.getvalue()), Verdict)
    assert read == verdict  # shadow_of, which the older version lacks, takes its default


async def test_framed_values_without_a_registry_url_say_what_to_set() -> None:
    plain = Settings(openai_api_key="sk-test-not-a-real-key")
    async with OutputReader(plain) as reader:
        assert await reader.read(output_events.verdict().model_dump_json().encode(), Verdict)
        with pytest.raises(ConfigError, match="set MODSTREAM_SCHEMA_REGISTRY_URL"):
            await reader.read(frame(1, b"\x02"), Verdict)


async def test_reading_framed_values_from_a_registry_that_is_down_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = settings(f"http://127.0.0.1:{port}", OutputFormat.JSON)
    async with OutputReader(down) as reader:
        with pytest.raises(
            RegistryUnavailable, match=rf"unreachable .*\(at http://127.0.0.1:{port}\)"
        ):
            await reader.read(frame(1, b"\x02"), Verdict)
