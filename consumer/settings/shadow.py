"""The shadow fields of :class:`consumer.settings.Settings`: a candidate model, prompt or policy
tried on a sampled share of live traffic, its verdicts on a topic of their own.

Shadow is off while ``MODSTREAM_SHADOW_SHARE`` is 0 (the default). Whatever the candidate does,
production is not touched: see :mod:`consumer.shadow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from consumer.settings.choices import PositiveFloat

Share = Annotated[float, Field(ge=0.0, le=1.0)]


class ShadowSettings(BaseModel):
    """The candidate, how much live traffic it sees, and how much of the budget it may use."""

    shadow_share: Share = Field(
        default=0.0,
        description="Share of inputs (0..1) the candidate also classifies, chosen by content "
        "id so the same message is always in or out; 0 turns shadow off.",
    )
    shadow_model: str | None = Field(
        default=None, description="The candidate's model; default the production model."
    )
    shadow_prompt_file: Path | None = Field(
        default=None, description="The candidate's prompt file; default the production prompt."
    )
    shadow_policy_file: Path | None = Field(
        default=None, description="The candidate's policy file; default the production policy."
    )
    shadow_topic: str | None = Field(
        default=None,
        description="Where shadow verdicts go (their usage to <topic>.usage); default "
        "<MODSTREAM_VERDICT_TOPIC>.shadow.",
    )
    shadow_budget_share: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.2,
        description="Share of MODSTREAM_CONCURRENCY, MODSTREAM_RPM and MODSTREAM_TPM the "
        "shadow calls may use, on a limiter of their own.",
    )
    shadow_deadline_s: PositiveFloat = Field(
        default=10.0,
        description="A shadow classification not done in this time is dropped and counted.",
    )
