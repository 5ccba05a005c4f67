"""The schema registry: schemas fetched by id, compiled once, and its errors in our terms.

Records in ``MODSTREAM_INPUT_FORMAT=avro``, ``protobuf`` or ``json_schema`` carry a schema id
(:mod:`consumer.pipeline.registry_decode`); :class:`SchemaRegistry` turns one into a request.
The client is ``confluent-kafka``'s :class:`AsyncSchemaRegistryClient` against any
Confluent-compatible registry (Confluent's own, Apicurio's ``/apis/ccompat/v6``).

Errors, decided here and only here:

* a 4xx answer (unknown schema id: 404), a schema of the wrong kind or that does not
  compile, and a Protobuf message index the schema does not have are
  :class:`~consumer.errors.DecodeError`: the record is a dead letter;
* no answer, a timeout, 5xx, 408 or 429 is :class:`~consumer.errors.RegistryUnavailable`,
  retried here with backoff until the registry answers: the record waits, it is never
  dead-lettered for an outage (the work window fills and fetching stops meanwhile).

Compiled schemas are cached by id for the life of the process: a schema id never changes
meaning in a registry. Compiling is synchronous (protoc for Protobuf, :mod:`consumer.kafka.protoc`):
it happens once per schema id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Self

import fastavro
import httpx2
import jsonschema
import structlog
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, SchemaRegistryError
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from consumer.errors import DecodeError, RegistryUnavailable
from consumer.kafka.protoc import compile_proto, message_class
from consumer.pipeline.registry_decode import (
    Framed,
    parse_framed,
    read_avro,
    read_json_schema,
    read_protobuf,
    to_request,
)
from consumer.retry import retried
from consumer.settings import InputFormat, Settings
from schemas import ModerationRequest

__all__ = [
    "SchemaRegistry",
    "enter_input_registry",
    "fetch_schema",
    "is_unavailable",
    "registry_client",
    "said",
]

log = structlog.get_logger(__name__)

#: A compiled schema: the framed record in, its fields out (DecodeError when they do not match).
Reader = Callable[[Framed], Any]

#: The schema type the registry names for each input format (Avro is the registry's default).
_SCHEMA_TYPES = {
    InputFormat.AVRO: "AVRO",
    InputFormat.PROTOBUF: "PROTOBUF",
    InputFormat.JSON_SCHEMA: "JSON",
}

#: 4xx answers that mean "later", not "never".
_TRY_LATER = frozenset({408, 429})


def registry_client(settings: Settings, *, timeout_s: float = 10.0) -> AsyncSchemaRegistryClient:
    """A client of ``MODSTREAM_SCHEMA_REGISTRY_URL``, with its basic auth; the caller closes it."""
    if settings.schema_registry_url is None:
        raise ValueError("the schema registry needs MODSTREAM_SCHEMA_REGISTRY_URL")
    conf: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": timeout_s,
        # Our callers retry with backoff for as long as it takes; the client's own retries
        # would only stretch each attempt.
        "max.retries": 0,
    }
    if settings.schema_registry_username is not None:
        password = settings.schema_registry_password
        secret = "" if password is None else password.get_secret_value()
        conf["basic.auth.user.info"] = f"{settings.schema_registry_username}:{secret}"
    return AsyncSchemaRegistryClient(conf)


def is_unavailable(exc: SchemaRegistryError) -> bool:
    """Whether the registry's answer means "later" (5xx, 408, 429), not "never"."""
    status = exc.http_status_code
    return not (400 <= status < 500) or status in _TRY_LATER


def said(exc: SchemaRegistryError) -> str:
    """The registry's answer in one short phrase: status, error code, message."""
    return f"{exc.http_status_code} (error code {exc.error_code}): {str(exc.error_message)[:200]}"


async def fetch_schema(client: AsyncSchemaRegistryClient, schema_id: int) -> tuple[str, str]:
    """Schema ``schema_id``'s type (``AVRO``, ``PROTOBUF``, ``JSON``) and text.

    DecodeError when the registry says never (4xx but 408/429: an unknown id is 404);
    RegistryUnavailable when it cannot answer now (down, 5xx, 408, 429), for the caller to
    retry or give up on.
    """
    try:
        schema = await client.get_schema(schema_id)
    except SchemaRegistryError as exc:
        if not is_unavailable(exc):
            raise DecodeError(f"schema id {schema_id}: the registry answered {said(exc)}") from None
        raise RegistryUnavailable(f"the schema registry answered {said(exc)}") from exc
    except httpx2.TransportError as exc:
        raise RegistryUnavailable(
            f"the schema registry is unreachable ({type(exc).__name__})"
        ) from exc
    return (schema.schema_type or "AVRO").upper(), schema.schema_str or ""


class SchemaRegistry:
    """Decodes registry-framed records; ``async with`` closes its HTTP session."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._client = registry_client(settings, timeout_s=timeout_s)
        self._format = settings.input_format
        self._fields = settings.input_field_map
        self._readers: dict[int, Reader] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def decode(self, value: bytes) -> ModerationRequest:
        """One record's value to a request; DecodeError, or waits out a registry outage."""
        try:
            framed = parse_framed(value, message_indexes=self._format is InputFormat.PROTOBUF)
            reader = self._readers.get(framed.schema_id)
            if reader is None:
                reader = await self._reader(framed.schema_id)
            return to_request(reader(framed), self._fields)
        except DecodeError:
            raise
        except Exception as exc:
            # As in consumer.pipeline.decode: a bug dead-letters one record, it does not stop
            # the partition.
            raise DecodeError(
                f"unexpected decode failure ({type(exc).__name__}); this is a modstream bug"
            ) from exc

    async def _reader(self, schema_id: int) -> Reader:
        schema_type, text = await retried(
            lambda: fetch_schema(self._client, schema_id),
            lambda: AsyncRetrying(
                retry=retry_if_exception_type(RegistryUnavailable),
                wait=wait_random_exponential(multiplier=0.2, max=5),
                stop=stop_never,
                reraise=True,
                before_sleep=_log_retry,
            ),
            lambda exc: isinstance(exc, RegistryUnavailable),
        )
        reader = self._compile(schema_id, schema_type, text)
        self._readers[schema_id] = reader
        return reader

    def _compile(self, schema_id: int, schema_type: str, text: str) -> Reader:
        expected = _SCHEMA_TYPES[self._format]
        if schema_type != expected:
            raise DecodeError(
                f"schema id {schema_id} is a {schema_type} schema; "
                f"MODSTREAM_INPUT_FORMAT={self._format} reads {expected}"
            )
        try:
            if self._format is InputFormat.PROTOBUF:
                return _protobuf_reader(compile_proto(text))
            definition = json.loads(text)
            if self._format is InputFormat.AVRO:
                parsed = fastavro.parse_schema(definition)
                return lambda framed: read_avro(framed.payload, parsed)
            cls = jsonschema.validators.validator_for(definition)
            cls.check_schema(definition)
            validator = cls(definition)
            return lambda framed: read_json_schema(framed.payload, validator)
        except (ValueError, TypeError, KeyError, jsonschema.SchemaError) as exc:
            # An unparsable schema, or one with references (not supported): never usable.
            raise DecodeError(
                f"schema id {schema_id} is not a usable {schema_type} schema ({type(exc).__name__})"
            ) from None


async def enter_input_registry(stack: AsyncExitStack, settings: Settings) -> SchemaRegistry | None:
    """The decoder ``MODSTREAM_INPUT_FORMAT`` needs, closed with ``stack``; None for json
    and text, which need none."""
    if not settings.input_format.uses_registry:
        return None
    return await stack.enter_async_context(SchemaRegistry(settings))


def _protobuf_reader(file: FileDescriptor) -> Reader:
    """Reads each record as the message type its indexes name (classes built once each)."""
    classes: dict[tuple[int, ...], type[Message]] = {}

    def read(framed: Framed) -> Any:
        message = classes.get(framed.message_indexes)
        if message is None:
            try:
                message = message_class(file, framed.message_indexes)
            except ValueError as exc:
                raise DecodeError(f"schema id {framed.schema_id}: {exc}") from None
            classes[framed.message_indexes] = message
        return read_protobuf(framed.payload, message)

    return read


def _log_retry(state: RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "schema registry unavailable; retrying",
        attempt=state.attempt_number,
        error=str(failure),
        wait_s=round(state.next_action.sleep, 2) if state.next_action else None,
    )
