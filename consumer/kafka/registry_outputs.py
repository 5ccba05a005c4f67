"""Output schemas in the registry: registered at start-up, checked for compatibility, read back.

With ``MODSTREAM_OUTPUT_FORMAT=avro`` or ``json_schema``, :func:`output_encoder` runs once
before any record is consumed. For each output topic, under the subject ``<topic>-value``:

1. a subject that exists gets ``MODSTREAM_SCHEMA_COMPATIBILITY`` (default BACKWARD) as its
   level, and the registry is asked whether our schema is compatible with its latest version;
2. an incompatible schema stops start-up (:class:`~consumer.errors.OutputSchemaRejected`,
   naming the subject, its version and the level): a change that would break the subject's
   readers is found here, not downstream;
3. the schema is registered (the registry returns the existing id for one it holds), and a
   subject new to the registry gets the level after its first version.

The registry refusing (401, 403, any other 4xx) also stops start-up; a registry that does not
answer is retried for :data:`START_UP_DEADLINE_S`, then stops it. Once running, nothing here is
called: the ids are in the encoder (:mod:`consumer.pipeline.encode`).

:class:`OutputReader` is the other way, for ``report`` and ``eval``: a value is JSON, or
registry-framed, read under the schema its id names (the writer's) into our model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Self, TypeVar

import fastavro
import httpx2
import structlog
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema, SchemaRegistryError
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from consumer.errors import ConfigError, DecodeError, OutputSchemaRejected, RegistryUnavailable
from consumer.kafka.registry import fetch_schema, is_unavailable, registry_client, said
from consumer.model.provider import public_url
from consumer.pipeline.encode import Encoder, JsonEncoder, RegistryEncoder, TopicSchema
from consumer.pipeline.registry_decode import parse_framed
from consumer.settings import OutputFormat, Settings
from schemas import DeadLetter, UsageEvent, Verdict
from schemas.avro import avro_schema
from schemas.export import json_schema_text

__all__ = [
    "START_UP_DEADLINE_S",
    "OutputReader",
    "output_encoder",
    "output_schema",
    "service_outputs",
    "subject",
]

log = structlog.get_logger(__name__)

#: How long start-up waits for a registry that does not answer before it gives up.
START_UP_DEADLINE_S = 60.0

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def subject(topic: str) -> str:
    """The subject a topic's values are registered under (the default TopicNameStrategy)."""
    return f"{topic}-value"


def service_outputs(settings: Settings) -> dict[str, type[BaseModel]]:
    """The topics ``modstream consume`` writes, and the event each holds (shadow's included)."""
    outputs: dict[str, type[BaseModel]] = {
        settings.verdict_topic: Verdict,
        settings.usage_topic: UsageEvent,
        settings.dlq_topic: DeadLetter,
    }
    if settings.shadow_share > 0:
        topic = settings.effective_shadow_topic
        outputs[topic] = Verdict
        outputs[f"{topic}.usage"] = UsageEvent
    return outputs


def output_schema(output_format: OutputFormat, model: type[BaseModel]) -> tuple[Schema, Any]:
    """The schema ``model``'s records are written with, as the registry takes it, and parsed
    for fastavro (None: the records are JSON)."""
    if output_format is OutputFormat.AVRO:
        definition = avro_schema(model)
        text = json.dumps(definition, sort_keys=True)
        return Schema(text, "AVRO"), fastavro.parse_schema(definition)
    return Schema(json_schema_text(model), "JSON"), None


async def output_encoder(settings: Settings, models: Mapping[str, type[BaseModel]]) -> Encoder:
    """The encoder for ``models`` (output topic -> event model), its schemas registered first.

    JSON output needs no registry: the plain encoder, at once.
    """
    output_format = settings.output_format
    if not output_format.uses_registry:
        return JsonEncoder()
    level = settings.schema_compatibility.value
    schemas: dict[str, TopicSchema] = {}
    client = registry_client(settings)
    try:
        for topic, model in models.items():
            schema, parsed = output_schema(output_format, model)
            schema_id = await _answered(
                settings, partial(_register, client, subject(topic), schema, level)
            )
            schemas[topic] = TopicSchema(schema_id, parsed)
            log.info(
                "output schema registered",
                subject=subject(topic),
                schema_id=schema_id,
                format=str(output_format),
                compatibility=level,
            )
    finally:
        await client.aclose()
    return RegistryEncoder(schemas, avro=output_format is OutputFormat.AVRO)


async def _register(
    client: AsyncSchemaRegistryClient, name: str, schema: Schema, level: str
) -> int:
    try:
        latest = await client.get_latest_version(name)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise
        latest = None
    if latest is not None:
        await _set_level(client, name, level)
        if not await client.test_compatibility(name, schema):
            raise OutputSchemaRejected(
                f"the {schema.schema_type} schema modstream writes to subject {name!r} is not "
                f"{level} compatible with its latest version ({latest.version}, schema id "
                f"{latest.schema_id}): the subject's readers would break. Register a compatible "
                "version, write to a new topic, or set MODSTREAM_SCHEMA_COMPATIBILITY"
            )
    schema_id = await client.register_schema(name, schema)
    if latest is None:
        await _set_level(client, name, level)
    return int(schema_id)


async def _set_level(client: AsyncSchemaRegistryClient, name: str, level: str) -> None:
    try:
        current = await client.get_compatibility(name)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:  # Confluent: no level of the subject's own
            raise
        current = None
    if current != level:
        await client.set_compatibility(name, level)
        log.info("output subject compatibility set", subject=name, was=current, now=level)


async def _answered(settings: Settings, call: Callable[[], Awaitable[T]]) -> T:
    """``call``'s result, the registry's outage retried for a while; its refusal is fatal."""

    where = public_url(settings.schema_registry_url)

    async def attempt() -> T:
        try:
            return await call()
        except SchemaRegistryError as exc:
            if is_unavailable(exc):
                raise RegistryUnavailable(f"answered {said(exc)}") from exc
            raise OutputSchemaRejected(
                f"the schema registry at {where} refused to register "
                f"modstream's output schemas: it answered {said(exc)}"
            ) from None
        except httpx2.TransportError as exc:
            raise RegistryUnavailable(f"unreachable ({type(exc).__name__})") from exc

    try:
        async for round_ in AsyncRetrying(
            retry=retry_if_exception_type(RegistryUnavailable),
            wait=wait_random_exponential(multiplier=0.5, max=5),
            stop=stop_after_delay(START_UP_DEADLINE_S),
            reraise=True,
        ):
            with round_:
                return await attempt()
    except RegistryUnavailable as exc:
        raise OutputSchemaRejected(
            f"the schema registry at {where} did not register "
            f"modstream's output schemas within {START_UP_DEADLINE_S:.0f} s: {exc}"
        ) from None
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover


class OutputReader:
    """Reads output values back: JSON, or registry-framed Avro / JSON; ``async with`` closes it.

    Framed values need ``MODSTREAM_SCHEMA_REGISTRY_URL``: without it the first one is a
    ConfigError that says so. Writer schemas are fetched once per id; an unknown id is a
    DecodeError (the value is counted unreadable), a registry that is down RegistryUnavailable
    (the read stops: every later framed value would need it too).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AsyncSchemaRegistryClient | None = None
        self._writers: dict[int, tuple[str, Any]] = {}
        self._readers: dict[type[BaseModel], Any] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def read(self, value: bytes, model: type[M]) -> M:
        """One value as ``model``; DecodeError (or pydantic's ValidationError) when it is not."""
        if not value.startswith(b"\x00"):
            return model.model_validate_json(value)
        framed = parse_framed(value)
        schema_type, writer = await self._writer(framed.schema_id)
        if schema_type == "JSON":
            return model.model_validate_json(framed.payload)
        if schema_type != "AVRO":
            raise DecodeError(f"schema id {framed.schema_id} is a {schema_type} schema")
        reader = self._readers.get(model)
        if reader is None:
            reader = self._readers[model] = fastavro.parse_schema(avro_schema(model))
        try:
            # Under the writer's schema, resolved into ours: an older version reads too.
            record = fastavro.schemaless_reader(io.BytesIO(framed.payload), writer, reader)
        except (ValueError, TypeError, EOFError, IndexError) as exc:
            raise DecodeError(
                f"not a {model.__name__} under schema id {framed.schema_id} ({type(exc).__name__})"
            ) from None
        return model.model_validate(record)

    async def _writer(self, schema_id: int) -> tuple[str, Any]:
        known = self._writers.get(schema_id)
        if known is not None:
            return known
        if self._settings.schema_registry_url is None:
            raise ConfigError(
                "the topic holds schema-registry records (Avro or JSON Schema outputs): "
                "set MODSTREAM_SCHEMA_REGISTRY_URL to read them"
            )
        if self._client is None:
            self._client = registry_client(self._settings)
        try:
            schema_type, text = await fetch_schema(self._client, schema_id)
        except RegistryUnavailable as exc:
            where = public_url(self._settings.schema_registry_url)
            raise RegistryUnavailable(f"{exc} (at {where}); try again when it is back") from None
        writer = fastavro.parse_schema(json.loads(text)) if schema_type == "AVRO" else None
        self._writers[schema_id] = (schema_type, writer)
        return schema_type, writer
