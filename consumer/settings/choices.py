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
