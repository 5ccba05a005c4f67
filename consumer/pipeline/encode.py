"""How an output event becomes a record value: JSON, or registry-framed Avro or JSON.

With ``MODSTREAM_OUTPUT_FORMAT=json`` (the default) a value is the event's JSON. With ``avro``
or ``json_schema`` it is in the Confluent wire format the registry's serializers read::

    magic byte 0 | schema id (4 bytes, big-endian) | Avro binary, or the JSON

The schema id of each topic is fixed at start-up (:mod:`consumer.kafka.registry_outputs`
registers them): encoding never calls the registry, so a registry outage never holds a
verdict back once modstream runs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import fastavro
from pydantic import BaseModel

from consumer.errors import PublishRejected

__all__ = ["Encoder", "JsonEncoder", "RegistryEncoder", "TopicSchema", "frame"]

_MAGIC = b"\x00"
_LONG_MIN = -(2**63)


class Encoder(Protocol):
    """Turns one output event into the bytes of its record for one topic."""

    #: The ``content-type`` header of every record it encodes.
    content_type: bytes

    def encode(self, topic: str, event: BaseModel) -> bytes:
        """The record value; PublishRejected when the event cannot be written to ``topic``."""
        ...


class JsonEncoder:
    """The event's JSON, as ``schemas/json`` describes it."""

    content_type = b"application/json"

    def encode(self, topic: str, event: BaseModel) -> bytes:
        return event.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class TopicSchema:
    """The registered schema one topic's values are written with."""

    schema_id: int
    #: The parsed Avro schema; None: the payload is the event's JSON (``json_schema``).
    avro: Any = None


class RegistryEncoder:
    """Registry-framed values, each topic under the schema registered for it at start-up."""

    def __init__(self, schemas: Mapping[str, TopicSchema], *, avro: bool) -> None:
        self.schemas = dict(schemas)
        self.content_type = b"application/avro" if avro else b"application/json"

    def encode(self, topic: str, event: BaseModel) -> bytes:
        schema = self.schemas.get(topic)
        if schema is None:
            # A topic start-up did not register: a wiring bug, never the input's fault.
            raise RuntimeError(f"no registered schema for output topic {topic!r}")
        if schema.avro is None:
            return frame(schema.schema_id, event.model_dump_json().encode())
        record = event.model_dump(mode="python")
        out = io.BytesIO()
        try:
            _check_metadata(record.get("metadata"))
            fastavro.schemaless_writer(out, schema.avro, record)
        except (ValueError, TypeError, OverflowError) as exc:
            # A value Avro cannot hold: the input's outputs can never be written, so it is a
            # dead letter, not a crash.
            raise PublishRejected(
                f"an output for topic {topic!r} does not fit its Avro schema "
                f"(id {schema.schema_id}): {str(exc)[:200]}"
            ) from None
        return frame(schema.schema_id, out.getvalue())


def _check_metadata(metadata: Any) -> None:
    # The input's metadata is the one place an integer comes from outside. Avro's union would
    # write one over 64 bits as a double, silently not the number the producer sent.
    if not isinstance(metadata, dict):
        return
    for key, value in metadata.items():
        whole = isinstance(value, int) and not isinstance(value, bool)
        if whole and not _LONG_MIN <= value < -_LONG_MIN:
            raise ValueError(f"metadata[{key!r}] is an integer beyond Avro's 64-bit long")


def frame(schema_id: int, payload: bytes) -> bytes:
    """``payload`` behind the wire format's magic byte and ``schema_id``."""
    return _MAGIC + schema_id.to_bytes(4, "big") + payload
