"""The closed choices among the settings (enums), and the number types the fields share."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field


class InputFormat(StrEnum):
    """How input record values are read."""

    JSON = "json"  # a ModerationRequest object
    TEXT = "text"  # the whole value is the UTF-8 text; the id is derived from its source
    # Confluent wire format (magic byte 0, schema id, payload), the schema from the registry:
    AVRO = "avro"
    PROTOBUF = "protobuf"
    JSON_SCHEMA = "json_schema"

    @property
    def uses_registry(self) -> bool:
        """Whether records carry a schema id to resolve through the schema registry."""
        return self in (InputFormat.AVRO, InputFormat.PROTOBUF, InputFormat.JSON_SCHEMA)


class OutputFormat(StrEnum):
    """How output record values (verdicts, usage events, dead letters) are written."""

    JSON = "json"  # the event's JSON, as schemas/json describes it
    # Confluent wire format, each topic's schema registered under <topic>-value at start-up:
    AVRO = "avro"  # schemas generated from the event models (schemas/avro.py)
    JSON_SCHEMA = "json_schema"  # the JSON, with the schemas/json files registered

    @property
    def uses_registry(self) -> bool:
        """Whether each record is framed with a registered schema's id."""
        return self is not OutputFormat.JSON


class Compatibility(StrEnum):
    """A schema registry compatibility level (what a new version of a subject must keep)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


class OversizePolicy(StrEnum):
    """What admit does with a text over the token budget."""

    TRUNCATE = "truncate"  # keep head and tail, mark the verdict truncated
    DEAD_LETTER = "dead_letter"


class Delivery(StrEnum):
    """Output delivery guarantee."""

    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class Ordering(StrEnum):
    """Which messages must be classified and published in offset order."""

    UNORDERED = "unordered"  # none: the most concurrency
    KEY = "key"  # messages with the same key (per partition), in offset order
    PARTITION = "partition"  # each partition one message at a time


class LogFormat(StrEnum):
    """Log rendering: JSON lines for machines, coloured console for people, auto by TTY."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class TracingMode(StrEnum):
    """Whether spans are made and exported (OpenTelemetry)."""

    AUTO = "auto"  # on when the OTEL_* variables name an exporter or an OTLP endpoint
    ON = "on"
    OFF = "off"


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
