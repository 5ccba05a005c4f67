"""The verdict factory and triage(choice): one way to build a verdict, one look at a reply.

triage is shared by the single call and the batch, so its table is tested here once: a refusal
(even with another finish reason), the content filter, a cut at the budget, and text to read.
The factory's verdicts are checked for what the pipeline relies on: deterministic ids, the
content hash, the tiers that ran, the refusal action, and a cache hit rebuilt from a Decision.
"""

from __future__ import annotations

import hashlib

import pytest

from consumer.model.chat_client import Choice, Completion
from consumer.model.conversation import Call
from consumer.model.policy import FirstTier, PromptBuilder
from consumer.model.verdicts import Decision, VerdictFactory, triage
from schemas import TierScores, UsageOutcome, make_event_id
from tests.unit.model.test_classify import MODEL, POLICY, PROMPT, SOURCE, admitted

TIERED = POLICY.model_copy(update={"first_tier": FirstTier(), "version": "tiered"})


def choice(content: str | None, finish: str | None = "stop", refusal: str | None = None) -> Choice:
    body = {"message": {"content": content, "refusal": refusal}, "finish_reason": finish}
    return Completion.model_validate({"choices": [body]}).choices[0]


@pytest.mark.parametrize(
    ("made", "declined", "cut", "content"),
    [
        (choice('{"x": 1}'), None, False, '{"x": 1}'),
        (choice(None), None, False, ""),
        (choice('{"x"', "length"), None, True, '{"x"'),
        (choice("", "content_filter"), UsageOutcome.CONTENT_FILTER, False, ""),
        (choice(None, refusal="I can't help with that"), UsageOutcome.REFUSAL, False, ""),
        # A refusal is a refusal whatever the finish reason says.
        (choice(None, "content_filter", refusal="no"), UsageOutcome.REFUSAL, False, ""),
        (choice("{}", "length", refusal="no"), UsageOutcome.REFUSAL, False, "{}"),
        (choice("{}", refusal=""), None, False, "{}"),  # an empty refusal is none
    ],
)
def test_triage(made: Choice, declined: UsageOutcome | None, cut: bool, content: str) -> None:
    seen = triage(made)
    assert (seen.declined[0] if seen.declined else None) == declined
    assert seen.cut == cut
    assert seen.content == content


def test_a_declined_reply_says_why() -> None:
    assert triage(choice(None, refusal="not this")).declined == (UsageOutcome.REFUSAL, "not this")
    reason = triage(choice(None, "content_filter")).declined
    assert reason is not None and "content filter" in reason[1]


def scores(**given: float) -> dict[str, float]:
    """A score for every category: 0.0 unless given (by category name, ``-`` as ``_``)."""
    return {
        c.name: given.get(c.name.replace("-", "_").replace("/", "_"), 0.0)
        for c in POLICY.categories
    }


def factory(tiered: bool = False) -> VerdictFactory:
    policy = TIERED if tiered else POLICY
    return VerdictFactory(policy, PromptBuilder(policy, PROMPT).prompt.version, MODEL)


def call() -> Call:
    return Call(admitted("have a nice day"), SOURCE, [], 200)


def test_a_chat_verdict_is_the_policys_decision_with_the_ids_the_pipeline_relies_on() -> None:
    made = factory()
    one = call()
    verdict = made.chat(one, scores(), "ordinary")
    assert verdict.event_id == make_event_id(SOURCE, POLICY.version, "verdict")
    assert verdict.content_sha256 == hashlib.sha256(b"have a nice day").hexdigest()
    assert verdict.model == MODEL and verdict.prompt_version == PROMPT.version
    assert verdict.tiers == [] and one.tiers == [], "no first tier: no tiers"
    assert not verdict.cache_hit and verdict.latency_ms >= 0.0


def test_with_a_first_tier_the_chat_models_scores_are_its_tier() -> None:
    one = call()
    one.tiers.append(TierScores(name="moderation", model="m", scores={"hate": 0.5}))
    verdict = factory(tiered=True).chat(one, scores(hate=0.9), "hateful")
    assert [(t.name, t.scores.get("hate")) for t in verdict.tiers] == [
        ("moderation", 0.5),
        ("chat", 0.9),
    ]


def test_a_refusal_takes_the_policys_refusal_action_with_every_score_zero() -> None:
    verdict = factory(tiered=True).refused(call(), "no")
    assert verdict.action == POLICY.refusal_action
    assert verdict.flagged == (POLICY.refusal_action != "allow")
    assert verdict.refusal == "no"
    assert all(c.score == 0.0 for c in verdict.categories.values())
    assert [(t.name, t.scores) for t in verdict.tiers] == [("chat", {})]


def test_a_cache_hit_is_the_cached_decision_at_no_latency() -> None:
    made = factory(tiered=True)
    one = call()
    one.tiers.append(TierScores(name="moderation", model="m", scores={"hate": 0.5}))
    original = made.chat(one, scores(hate=0.9), "hateful")
    hit = made.cached(one.admitted, SOURCE, Decision.of(original))
    assert hit.cache_hit and hit.latency_ms == 0.0
    keep = {"event_id", "flagged", "action", "categories", "rationale", "refusal", "tiers"}
    assert hit.model_dump(include=keep) == original.model_dump(include=keep)
