"""The processing fields of :class:`consumer.settings.Settings`: the work window (how much
is in flight), micro-batching, how input is read and bounded, the policy and the prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator

from consumer.settings.choices import (
    Compatibility,
    InputFormat,
    OutputFormat,
    OversizePolicy,
    PositiveFloat,
    PositiveInt,
)


class ProcessingSettings(BaseModel):
    """How much work is in flight, and what a message goes through before the model."""

    # Work window
    workers: PositiveInt = Field(
        default=1,
        description="Consumer processes in the group under one supervisor (consumer.ops.workers), "
        "sharing the metrics port; RPM and TPM are split across them. 1: no supervisor.",
    )
    concurrency: PositiveInt = Field(default=32, description="Model calls at once.")
    max_in_flight: PositiveInt = Field(
        default=256, description="Messages between fetch and commit; fetching stops when full."
    )
    commit_interval_s: PositiveFloat = 1.0
    shutdown_grace_s: PositiveFloat = 20.0
    stuck_after_s: PositiveFloat = Field(
        default=300.0,
        description="A message in flight longer than this is logged (WARNING) with its "
        "partition and offset; modstream_oldest_in_flight_seconds shows the age always.",
    )

    # Micro-batching (off at 1)
    batch_size: Annotated[int, Field(ge=1, le=256)] = Field(
        default=1,
        description="Short messages classified in one chat call; 1 turns batching off.",
    )
    batch_max_tokens: PositiveInt = Field(
        default=200, description="Only content of at most this many tokens joins a batch."
    )
    batch_linger_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = Field(
        default=20.0, description="How long a batch waits to fill before it goes out anyway."
    )

    # Input handling
    input_format: InputFormat = InputFormat.JSON
    input_fields: str = Field(
        default="id=id,text=text,context=context,metadata=metadata",
        description="For avro, protobuf and json_schema input: which record field holds each "
        "part of the request (PART=FIELD, comma-separated; parts id, text, context, metadata; "
        "id and text required).",
    )
    schema_registry_url: str | None = Field(
        default=None,
        description="Confluent-compatible schema registry (needed by avro, protobuf and "
        "json_schema input), e.g. http://registry:8081 or an Apicurio .../apis/ccompat/v6.",
    )
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    output_format: OutputFormat = Field(
        default=OutputFormat.JSON,
        description="How verdicts, usage events and dead letters are written: json, or avro / "
        "json_schema in the Confluent wire format with each topic's schema registered under "
        "<topic>-value at start-up (needs MODSTREAM_SCHEMA_REGISTRY_URL).",
    )
    schema_compatibility: Compatibility = Field(
        default=Compatibility.BACKWARD,
        description="The compatibility level modstream sets on its output subjects at start-up; "
        "a schema the registry finds incompatible with a subject's latest version stops start-up.",
    )
    max_message_bytes: PositiveInt = Field(
        default=1_000_000, description="Records larger than this are dead-lettered undecoded."
    )
    max_input_tokens: PositiveInt = Field(
        default=32_000, description="Hard limit on the content's tokens before truncation."
    )
    oversize: OversizePolicy = OversizePolicy.TRUNCATE
    max_images: Annotated[int, Field(ge=0, le=64)] = Field(
        default=4, description="Images one request may carry; more is a dead letter (0: none)."
    )
    max_image_bytes: PositiveInt = Field(
        default=5 * 1024 * 1024,
        description="An inline image's decoded bytes at most (5 MiB); larger is a dead letter.",
    )
    redact_dead_letters: bool = Field(
        default=False, description="Replace dead-letter payloads by their sha256 only."
    )

    @field_validator("input_fields")
    @classmethod
    def _check_input_fields(cls, value: str) -> str:
        parse_input_fields(value)  # raises ValueError naming the problem
        return value

    @property
    def input_field_map(self) -> dict[str, str]:
        """``MODSTREAM_INPUT_FIELDS`` parsed: request part -> record field."""
        return parse_input_fields(self.input_fields)

    # Policy and prompt (None: the built-in defaults that ship with modstream)
    policy_file: Path | None = None
    prompt_file: Path | None = None


#: The request parts a record's fields can fill (MODSTREAM_INPUT_FIELDS).
INPUT_PARTS = ("id", "text", "context", "metadata")


def parse_input_fields(value: str) -> dict[str, str]:
    """``id=post_id,text=body`` -> ``{"id": "post_id", "text": "body"}``; parts left out keep
    their own names, except that none is mapped twice and id and text are always there."""
    mapping = {part: part for part in INPUT_PARTS}
    given: set[str] = set()
    for item in filter(None, (piece.strip() for piece in value.split(","))):
        part, sep, field = (side.strip() for side in item.partition("="))
        if not sep or not part or not field:
            raise ValueError(f"{item!r} is not PART=FIELD")
        if part not in INPUT_PARTS:
            raise ValueError(f"unknown part {part!r}; one of {', '.join(INPUT_PARTS)}")
        if part in given:
            raise ValueError(f"part {part!r} is mapped twice")
        given.add(part)
        mapping[part] = field
    fields = list(mapping.values())
    if len(set(fields)) != len(fields):
        raise ValueError("two parts read the same field")
    return mapping
