"""The processing fields of :class:`consumer.settings.Settings`: the work window (how much
is in flight), micro-batching, how input is read and bounded, the policy and the prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from consumer.settings.choices import InputFormat, OversizePolicy, PositiveFloat, PositiveInt


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

    # Policy and prompt (None: the built-in defaults that ship with modstream)
    policy_file: Path | None = None
    prompt_file: Path | None = None
