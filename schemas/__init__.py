"""modstream's public event contracts (pydantic v2), importable by downstream services."""

from schemas.events import (
    SCHEMA_VERSION,
    Action,
    CategoryScore,
    DeadLetter,
    Header,
    ImageData,
    ImageInput,
    ImageMime,
    ImageUrl,
    ModerationRequest,
    Source,
    TierScores,
    UsageEvent,
    UsageOutcome,
    Verdict,
    make_event_id,
)

__all__ = [
    "SCHEMA_VERSION",
    "Action",
    "CategoryScore",
    "DeadLetter",
    "Header",
    "ImageData",
    "ImageInput",
    "ImageMime",
    "ImageUrl",
    "ModerationRequest",
    "Source",
    "TierScores",
    "UsageEvent",
    "UsageOutcome",
    "Verdict",
    "make_event_id",
]
