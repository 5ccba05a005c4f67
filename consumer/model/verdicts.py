"""The verdict factory: a message's verdict from scores, and the triage of a chat reply first.

Every verdict modstream writes is built here, whoever decided: the chat model's scores (one call
or a batch), the first tier's, a refusal (the policy's ``refusal_action``), or a decision
answered from a cache (``modstream replay``). So the event id, the content hash, the versions,
the tiers that ran and the latency are filled in one way, and a replayed verdict reads like the
service's.

:func:`triage` is the first look at a reply's choice, before its text is read: refused or
stopped by the provider's content filter (a verdict with the refusal action, or, for a batch,
single calls), cut at the completion budget (``finish_reason == "length"``), or text to read. The
single call (:mod:`consumer.model.classify`) and the batch (:mod:`consumer.model.batch`) share it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from consumer.model.chat_client import Choice
from consumer.model.conversation import Call
from consumer.model.policy import FirstTier, Policy
from consumer.pipeline.admit import Admitted
from schemas import Action, CategoryScore, Source, TierScores, UsageOutcome, Verdict, make_event_id

__all__ = ["Decision", "Triage", "VerdictFactory", "triage"]

#: The reason of a verdict whose reply the provider's content filter stopped.
_FILTERED = "the provider's content filter stopped the reply"


@dataclass(frozen=True, slots=True)
class Triage:
    """What a reply's choice is before its text is read (see :func:`triage`)."""

    #: The reply's text ("" when it has none).
    content: str
    #: The model declined: the usage outcome (``refusal`` or ``content_filter``) and why.
    declined: tuple[UsageOutcome, str] | None = None
    #: The reply was cut at the completion budget (``finish_reason == "length"``).
    cut: bool = False


def triage(choice: Choice) -> Triage:
    """Whether ``choice`` was refused or filtered, cut at the budget, or is a reply to read."""
    content = choice.message.content or ""
    refusal = choice.message.refusal
    if refusal:
        return Triage(content, declined=(UsageOutcome.REFUSAL, refusal))
    if choice.finish_reason == "content_filter":
        return Triage(content, declined=(UsageOutcome.CONTENT_FILTER, _FILTERED))
    return Triage(content, cut=choice.finish_reason == "length")


class Decision(BaseModel):
    """The part of a verdict that depends only on the content and the settings: what a cache
    keeps (``modstream replay``), and a hit is rebuilt from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flagged: bool
    action: Action
    categories: dict[str, CategoryScore]
    rationale: str
    refusal: str | None = None
    #: Absent from what older versions cached: those hits carry no tiers.
    tiers: list[TierScores] = Field(default_factory=list)
    #: Flagged category -> the inputs the first tier flagged it for (absent from older caches).
    category_inputs: dict[str, list[str]] = Field(default_factory=dict)

    @classmethod
    def of(cls, verdict: Verdict) -> Decision:
        """The cacheable part of ``verdict``."""
        return cls.model_validate(verdict, from_attributes=True)


class VerdictFactory:
    """Builds the verdicts of one policy, prompt and chat model."""

    def __init__(self, policy: Policy, prompt_version: str, model: str) -> None:
        self.policy = policy
        self.prompt_version = prompt_version
        self.model = model

    def decide(
        self,
        call: Call,
        scores: dict[str, float],
        rationale: str,
        refusal: str | None = None,
        *,
        model: str | None = None,
    ) -> Verdict:
        """The policy's decision on ``scores``, as the verdict for ``call``.

        ``model`` names another model than the chat model (the first tier's)."""
        flagged, action, categories = self.policy.decide(scores)
        # Only categories the verdict flags: which input "drove" an unflagged one means nothing.
        inputs = {
            name: kinds
            for name, kinds in call.category_inputs.items()
            if name in categories and categories[name].flagged
        }
        return self._verdict(
            call.admitted,
            call.source,
            Decision.model_construct(
                flagged=flagged,
                action=action,
                categories=categories,
                rationale=rationale,
                refusal=refusal,
                tiers=list(call.tiers),
                category_inputs=inputs,
            ),
            model=model or self.model,
            latency_ms=(time.perf_counter() - call.started) * 1000,
        )

    def chat(self, call: Call, scores: dict[str, float], rationale: str) -> Verdict:
        """The verdict from the chat model's scores (recorded as its tier when tiering)."""
        if self.policy.first_tier is not None:
            call.tiers.append(TierScores(name="chat", model=self.model, scores=scores))
        return self.decide(call, scores, rationale)

    def from_reply(self, call: Call, reply: BaseModel) -> Verdict:
        """The verdict from the chat model's validated reply (its scores and rationale)."""
        scores = self.policy.scores_from_reply(reply)
        return self.chat(call, scores, str(getattr(reply, "rationale", ""))[:1000])

    def refused(self, call: Call, reason: str) -> Verdict:
        """The verdict when the chat model declined (refusal, content filter): the policy's
        ``refusal_action``, every score 0."""
        if self.policy.first_tier is not None:
            call.tiers.append(TierScores(name="chat", model=self.model, scores={}))
        scores = {c.name: 0.0 for c in self.policy.categories}
        verdict = self.decide(call, scores, "the model declined to classify", reason)
        action = self.policy.refusal_action
        return verdict.model_copy(update={"action": action, "flagged": action != "allow"})

    def first_tier(self, call: Call, tier: FirstTier, scores: dict[str, float]) -> Verdict:
        """The verdict when the first tier decided alone on its ``scores`` (none in its
        uncertain band)."""
        low, high = tier.uncertain_band
        rationale = (
            f"decided by the first tier ({tier.model}): no category score in the uncertain "
            f"band [{low}, {high})"
        )
        return self.decide(call, scores, rationale, model=tier.model)

    def cached(self, admitted: Admitted, source: Source, decision: Decision) -> Verdict:
        """The verdict answered from a cache, no model asked: ``decision``, at no latency."""
        return self._verdict(
            admitted, source, decision, model=self.model, latency_ms=0.0, cache_hit=True
        )

    def _verdict(
        self,
        admitted: Admitted,
        source: Source,
        decision: Decision,
        *,
        model: str,
        latency_ms: float,
        cache_hit: bool = False,
    ) -> Verdict:
        """The decision's fields, and the message's, the policy's and the prompt's."""
        request = admitted.request
        return Verdict(
            # flagged, action, categories, rationale, refusal, tiers, category_inputs
            **dict(decision),
            event_id=make_event_id(source, self.policy.version, "verdict"),
            source=source,
            content_id=request.id,
            content_sha256=_content_sha256(admitted),
            model=model,
            policy_version=self.policy.version,
            prompt_version=self.prompt_version,
            truncated=admitted.truncated,
            latency_ms=latency_ms,
            cache_hit=cache_hit,
            metadata=request.metadata,
            created_at=datetime.now(UTC),
        )


def _content_sha256(admitted: Admitted) -> str:
    """The sha256 of the request's text, and of its images' URLs after it when it has any (a
    text-only request's hash is unchanged; the same caption on another image differs)."""
    content = admitted.request.text
    if admitted.images:
        content += "\x00" + "\x1e".join(image.url for image in admitted.images)
    return hashlib.sha256(content.encode()).hexdigest()
