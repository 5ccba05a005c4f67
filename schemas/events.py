"""The event contracts modstream reads and writes.

Downstream services import these models (or read the JSON Schema files generated from them in
``schemas/json/``). Output models are frozen and reject unknown fields, so a drift between
producer and consumer is an error rather than a silently ignored field. The model's own reply
format is private to the classifier and deliberately absent here: a prompt change never breaks
a downstream consumer.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

#: Bumped on any incompatible change of an output model; every event carries it.
SCHEMA_VERSION: Literal[1] = 1

JsonScalar = str | int | float | bool | None


class Action(StrEnum):
    """What the policy says to do with the content."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


class ImageUrl(BaseModel):
    """An image the provider fetches itself, by its ``https`` URL.

    modstream never downloads it: its size and type are the provider's to check, and its
    dimensions are unknown, so it is counted at the largest token cost an image can have.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[
        str,
        Field(
            min_length=9,
            max_length=2048,
            pattern=r"^https://\S+$",
            description="An https URL the provider can fetch.",
        ),
    ]


#: The image types the OpenAI vision and moderation models take (and whose bytes we check).
ImageMime = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]


class ImageData(BaseModel):
    """An image sent inline: its bytes in base64 and their MIME type.

    The bytes are checked before any model call: they must decode, fit
    ``MODSTREAM_MAX_IMAGE_BYTES`` and start with the magic bytes of ``mime_type``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Annotated[
        str, Field(min_length=1, description="The image bytes, standard base64 (RFC 4648).")
    ]
    mime_type: ImageMime = Field(description="The type of the decoded bytes.")


def _image_kind(value: object) -> str | None:
    # Which member an input is, from its keys: so an error names the fields of that member
    # only (``images.0.data.mime_type``), not both members' as a plain union would.
    if isinstance(value, dict):
        return "data" if "data" in value or "mime_type" in value else "url"
    if isinstance(value, BaseModel):
        return "data" if isinstance(value, ImageData) else "url"
    return None


#: One image input: ``{"url": ...}`` or ``{"data": ..., "mime_type": ...}``.
ImageInput = Annotated[
    Annotated[ImageUrl, Tag("url")] | Annotated[ImageData, Tag("data")],
    Discriminator(_image_kind),
]


class ModerationRequest(BaseModel):
    """One piece of content to moderate, as producers write it to the input topic.

    Unknown fields are ignored so producers can add their own without breaking us.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    id: Annotated[str, Field(min_length=1, max_length=256, description="Producer's content id.")]
    text: Annotated[str, Field(min_length=1, description="The content to judge.")]
    user: Annotated[str | None, Field(max_length=256, description="Author id, if any.")] = None
    context: Annotated[
        str | None, Field(description="Surrounding text shown to the model, e.g. the thread.")
    ] = None
    metadata: dict[str, JsonScalar] = Field(
        default_factory=dict, description="Opaque values carried through to the verdict."
    )
    images: tuple[ImageInput, ...] = Field(
        default=(),
        description="Images judged together with the text, in order (``image:0`` is the "
        "first). At most MODSTREAM_MAX_IMAGES; an inline image's decoded bytes at most "
        "MODSTREAM_MAX_IMAGE_BYTES. Absent: text only.",
    )


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Output):
    """Where the input record came from: enough to find it again and to de-duplicate."""

    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    key: str | None = Field(
        default=None, description="Record key, UTF-8 decoded (invalid bytes backslash-escaped)."
    )
    timestamp: datetime | None = Field(default=None, description="Record timestamp (UTC).")


class CategoryScore(_Output):
    """One policy category's score and whether it crossed the policy's threshold."""

    score: Annotated[float, Field(ge=0.0, le=1.0)]
    flagged: bool


class TierScores(_Output):
    """One classification tier that ran for a verdict, and the scores it gave.

    ``moderation`` is the provider's moderations endpoint (the first tier), ``chat`` the chat
    model. Scores are keyed by policy category name (a category the tier does not know is 0.0).
    """

    name: Literal["moderation", "chat"]
    model: str
    scores: dict[str, float] = Field(
        description="Category name -> score; empty when the chat model refused to score."
    )


class Verdict(_Output):
    """The moderation decision for one input record."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(description="Deterministic: same input and policy give the same id.")
    source: Source
    content_id: str
    content_sha256: str
    flagged: bool
    action: Action
    categories: dict[str, CategoryScore]
    rationale: str = Field(max_length=1000)
    refusal: str | None = Field(
        default=None, description="Set when the model refused or its output was filtered."
    )
    model: str
    policy_version: str
    prompt_version: str
    truncated: bool = Field(description="The text was cut to fit the model's context.")
    latency_ms: Annotated[float, Field(ge=0.0)]
    cache_hit: bool = False
    metadata: dict[str, JsonScalar] = Field(default_factory=dict)
    created_at: datetime
    tiers: list[TierScores] = Field(
        default_factory=list,
        description="With a first tier configured: the tiers that ran, in order, and their "
        "scores (the first tier alone when it decided). Empty without tiering: the chat model "
        "alone gave the category scores.",
    )
    category_inputs: dict[str, list[str]] = Field(
        default_factory=dict,
        description="For each flagged category, the inputs the first tier's score for it "
        "applies to, as the moderations endpoint reports them (category_applied_input_types): "
        "'text', and 'image:0' when the request had one image ('image' when it had several: "
        "the endpoint does not say which). Empty when no first tier ran.",
    )
    shadow_of: str | None = Field(
        default=None,
        description="Set on a shadow verdict (a candidate model, prompt or policy tried on live "
        "traffic): the event_id of the production verdict for the same input.",
    )


class UsageOutcome(StrEnum):
    """How one model call ended."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    INVALID_REPLY = "invalid_reply"
    LENGTH = "length"
    REFUSAL = "refusal"
    CONTENT_FILTER = "content_filter"
    REJECTED = "request_rejected"
    AUTH = "provider_auth"
    CACHE_HIT = "cache_hit"
    #: The reply was only wrapped wrong (code fence, text around it, unknown keys): the
    #: wrapping was removed locally and the reply's own values used.
    SALVAGED = "salvaged"
    #: The valid reply to a repair request (the previous reply was ``invalid_reply``).
    REPAIRED = "repaired"


class UsageEvent(_Output):
    """One model call (failed attempts included): tokens, cost and latency."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    source: Source
    content_id: str | None
    model: str
    attempt: Annotated[int, Field(ge=1)]
    outcome: UsageOutcome
    prompt_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]
    cached_tokens: Annotated[int, Field(ge=0)] = 0
    reasoning_tokens: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Hidden reasoning tokens of a reasoning model: a part of "
        "completion_tokens (and billed as such), as the provider reports them.",
    )
    reasoning_effort: str | None = Field(
        default=None,
        description="The reasoning_effort the request asked for; None when none was sent.",
    )
    estimated: bool = Field(
        default=False, description="Tokens were counted locally: the provider reported none."
    )
    cost_usd: Annotated[float, Field(ge=0.0)] | None = Field(
        default=None, description="None when the model is not in the price table."
    )
    price_source: str | None = None
    latency_ms: Annotated[float, Field(ge=0.0)]
    created_at: datetime
    batch_id: str | None = Field(
        default=None,
        description="Set when the call classified several messages at once: every message of "
        "the batch gets one event with this id, and the token counts (and cost) of those "
        "events add up exactly to the provider's counts for the one call.",
    )
    batch_size: Annotated[int, Field(ge=1)] = Field(
        default=1, description="Messages the call classified (1: a call of its own)."
    )
    provider_batch_id: str | None = Field(
        default=None,
        description="Set when the call ran in the provider's Batch API (`modstream replay "
        "--batch-api`): that batch's id. Such calls are priced at the Batch API's discount "
        "(half the synchronous price; price_source says so). Not batch_id, which is a "
        "micro-batch of several messages in one call.",
    )
    calls: Annotated[int, Field(ge=1)] = Field(
        default=1,
        description="Model calls this event stands for. Above 1 only for folded failures: "
        "after the first few failed attempts of one message, further failures with the same "
        "outcome are counted in one event (its tokens, cost and latency are the sums), so a "
        "long 429 storm does not attach thousands of events to one message.",
    )


class Header(_Output):
    """A Kafka record header; the value is base64 because headers are arbitrary bytes."""

    key: str
    value_b64: str | None


class DeadLetter(_Output):
    """An input that can never succeed, with everything needed to inspect or replay it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    source: Source
    stage: Literal["decode", "admit", "classify", "publish"] = Field(
        description="Where it failed; publish: the broker refused the input's outputs for good "
        "(too large, invalid, not authorized)."
    )
    error_class: str
    error_message: str
    attempts: Annotated[int, Field(ge=0)]
    payload_b64: str | None = Field(description="Original bytes; None when redacted.")
    payload_sha256: str
    payload_redacted: bool = False
    payload_length: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Length in bytes of the original payload (None: no value)."
    )
    payload_truncated: bool = Field(
        default=False,
        description="payload_b64 holds only a head slice of the original bytes, because the "
        "whole would not fit the dead-letter topic; payload_length and payload_sha256 describe "
        "the original.",
    )
    headers: list[Header] = Field(default_factory=list)
    headers_truncated: bool = Field(
        default=False,
        description="Header values were left out (keys kept) because they would not fit the "
        "dead-letter topic.",
    )
    reply: str | None = Field(default=None, description="The model's last reply, when relevant.")
    created_at: datetime


EventKind = Literal["verdict", "usage", "dead_letter"]


def make_event_id(
    source: Source, policy_version: str, kind: EventKind, attempt: int | None = None
) -> str:
    """Deterministic id: the same input under the same policy always gets the same id.

    Consumers de-duplicate on it, so at-least-once redelivery never doubles a decision.
    """
    parts = [source.topic, str(source.partition), str(source.offset), policy_version, kind]
    if attempt is not None:
        parts.append(str(attempt))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
