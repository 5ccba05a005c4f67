"""Output events with every field set, for the output-format tests (Avro, JSON Schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas import (
    Action,
    CategoryScore,
    DeadLetter,
    Source,
    TierScores,
    UsageEvent,
    UsageOutcome,
    Verdict,
    make_event_id,
)
from schemas.events import Header

NOW = datetime(2026, 12, 3, 18, 30, 1, 123456, tzinfo=UTC)
SOURCE = Source(topic="posts", partition=2, offset=41, key="k-7", timestamp=NOW)


def verdict(**changes: Any) -> Verdict:
    """A verdict with tiers, scores, metadata of every scalar kind and a refusal."""
    base = Verdict(
        event_id=make_event_id(SOURCE, "p1", "verdict"),
        source=SOURCE,
        content_id="post-7",
        content_sha256="ab" * 32,
        flagged=True,
        action=Action.REVIEW,
        categories={
            "harassment": CategoryScore(score=0.71, flagged=True),
            "spam": CategoryScore(score=0.0, flagged=False),
        },
        rationale="insults another user",
        refusal=None,
        model="gpt-4o-mini",
        policy_version="p1",
        prompt_version="v3",
        truncated=False,
        latency_ms=182.5,
        cache_hit=False,
        metadata={"lang": "en", "score": 3, "ratio": 0.25, "pinned": True, "none": None},
        created_at=NOW,
        tiers=[TierScores(name="moderation", model="omni-moderation", scores={"spam": 0.1})],
        category_inputs={"harassment": ["text"]},
    )
    return base.model_copy(update=changes)


def usage(**changes: Any) -> UsageEvent:
    """A usage event of a priced, batched call."""
    base = UsageEvent(
        event_id=make_event_id(SOURCE, "p1", "usage", 1),
        source=SOURCE,
        content_id="post-7",
        model="gpt-4o-mini",
        attempt=1,
        outcome=UsageOutcome.OK,
        prompt_tokens=120,
        completion_tokens=31,
        cached_tokens=64,
        cost_usd=0.000037,
        price_source="prices.default.yaml",
        latency_ms=182.5,
        created_at=NOW,
        batch_id="b-1",
        batch_size=3,
    )
    return base.model_copy(update=changes)


def dead_letter(**changes: Any) -> DeadLetter:
    """A dead letter of an undecodable record, with its headers."""
    base = DeadLetter(
        event_id=make_event_id(SOURCE, "p1", "dead_letter"),
        source=SOURCE,
        stage="decode",
        error_class="DecodeError",
        error_message="not JSON",
        attempts=0,
        payload_b64="bm90IGpzb24=",
        payload_sha256="cd" * 32,
        payload_length=8,
        headers=[Header(key="traceparent", value_b64="AA=="), Header(key="empty", value_b64=None)],
        created_at=NOW,
    )
    return base.model_copy(update=changes)
