"""runner: Shadow offers, sheds, bounds, drops and publishes, never in production's way.

The candidate's classifier is a stand-in with scripted outcomes (the real one, over HTTP, is
the e2e test's); the publisher is the real one on the in-memory producer of kafka_fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from consumer.errors import (
    ModstreamError,
    PermanentError,
    ProviderMisconfigured,
    ProviderUnavailable,
    RateLimited,
)
from consumer.model.classify import Classified, Classifier
from consumer.model.limit import Limiter
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitted, Admitter
from consumer.pipeline.publish import Publisher, Topics
from consumer.pipeline.source import Envelope
from consumer.settings import OversizePolicy
from consumer.shadow.runner import Candidate, Shadow, give_up
from consumer.shadow.sample import in_share
from schemas import ModerationRequest, Source, Verdict
from tests.e2e.harness import Scrape
from tests.unit.kafka_fakes import FakeProducer, usage_for, verdict_for

pytestmark = pytest.mark.timeout(60)

Outcome = Callable[[Admitted, Source], Awaitable[Classified]]


class StandIn:
    """The part of Classifier the shadow uses, its outcome scripted per test."""

    model = "candidate-model"

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.calls = 0

    async def classify(self, admitted: Admitted, source: Source) -> Classified:
        self.calls += 1
        return await self.outcome(admitted, source)


async def flags_violence(admitted: Admitted, source: Source) -> Classified:
    verdict = verdict_for(admitted, source, violence=0.99)
    return Classified(verdict, None, [usage_for(source, admitted.request.id)])


def make(
    outcome: Outcome = flags_violence,
    *,
    capacity: int = 8,
    deadline_s: float = 5.0,
    drain_s: float = 0.05,
) -> tuple[Shadow, StandIn, FakeProducer, Metrics, Limiter]:
    producer = FakeProducer()
    classifier = StandIn(outcome)
    admitter = Admitter(
        model="gpt-4o-mini",
        budget_tokens=4000,
        max_input_tokens=32_000,
        oversize=OversizePolicy.TRUNCATE,
    )
    publisher = Publisher(producer, Topics("shadow", "shadow.usage", ""))
    production = Limiter(8)
    metrics = Metrics()
    shadow = Shadow(
        Candidate(cast(Classifier, classifier), admitter, publisher),
        share=1.0,
        deadline_s=deadline_s,
        drain_s=drain_s,
        capacity=capacity,
        production=production,
        metrics=metrics,
    )
    return shadow, classifier, producer, metrics, production


def offered(
    offset: int, content_id: str | None = None
) -> tuple[Envelope, ModerationRequest, Verdict]:
    envelope = Envelope("in", 0, offset, None, b"{}", (), None)
    request = ModerationRequest(id=content_id or f"m{offset}", text="hello there")
    admitted = Admitted(request, request.text, None, False, 3)
    return envelope, request, verdict_for(admitted, envelope.source)


def dropped(metrics: Metrics) -> dict[str, float]:
    return Scrape.of(metrics).by("modstream_shadow_dropped_total", "reason")


async def test_a_sampled_input_gets_a_shadow_verdict_naming_the_production_one() -> None:
    shadow, _, producer, metrics, _ = make()
    envelope, request, production = offered(1)
    async with shadow:
        shadow.offer(envelope, request, production)
        assert shadow.running == 1  # offer never waits
    [verdict_record, usage_record] = producer.acked
    assert (verdict_record.topic, usage_record.topic) == ("shadow", "shadow.usage")
    verdict = Verdict.model_validate_json(verdict_record.value)
    assert verdict.shadow_of == production.event_id
    scrape = Scrape.of(metrics)
    assert scrape.get("modstream_shadow_verdicts_total", agreement="disagree") == 1
    assert scrape.get("modstream_shadow_flips_total", category="violence", to="flagged") == 1
    assert dropped(metrics) == {}


async def test_an_input_outside_the_share_is_not_offered() -> None:
    shadow, classifier, _, metrics, _ = make()
    shadow.share = 0.3
    outside = next(f"x{i}" for i in range(1000) if not in_share(f"x{i}", 0.3))
    async with shadow:
        shadow.offer(*offered(1, outside))
    assert classifier.calls == 0
    assert dropped(metrics) == {}


async def test_shadow_is_shed_while_production_meets_429s() -> None:
    shadow, classifier, _, metrics, production = make()
    production.concurrency.on_overload()  # a 429 cut production's concurrency
    async with shadow:
        shadow.offer(*offered(1))
    assert classifier.calls == 0
    assert dropped(metrics) == {"shed": 1}


async def test_beyond_capacity_an_offer_is_dropped_not_queued() -> None:
    gate = asyncio.Event()

    async def waits(admitted: Admitted, source: Source) -> Classified:
        await gate.wait()
        return await flags_violence(admitted, source)

    shadow, _, producer, metrics, _ = make(waits, capacity=2, drain_s=5)
    async with shadow:
        for offset in range(5):
            shadow.offer(*offered(offset))
        assert shadow.running == 2
        gate.set()
    assert dropped(metrics) == {"full": 3}
    assert len([r for r in producer.acked if r.topic == "shadow"]) == 2


@pytest.mark.parametrize(
    ("error", "reason"),
    [(RateLimited("429"), "rate_limited"), (ProviderUnavailable("503"), "unavailable")],
)
async def test_a_call_that_would_retry_gives_up_instead(error: ModstreamError, reason: str) -> None:
    async def retries(admitted: Admitted, source: Source) -> Classified:
        give_up(error)  # what the candidate's ModelCalls calls before a retry
        raise AssertionError("unreachable")

    shadow, _, producer, metrics, _ = make(retries)
    async with shadow:
        shadow.offer(*offered(1))
    assert dropped(metrics) == {reason: 1}
    assert producer.acked == []
    assert shadow.running == 0


async def test_a_call_past_the_deadline_is_dropped() -> None:
    async def slow(admitted: Admitted, source: Source) -> Classified:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    shadow, _, _, metrics, _ = make(slow, deadline_s=0.01, drain_s=5)
    async with shadow:
        shadow.offer(*offered(1))
    assert dropped(metrics) == {"deadline": 1}


async def test_a_candidate_that_cannot_work_turns_shadow_off() -> None:
    async def misconfigured(admitted: Admitted, source: Source) -> Classified:
        raise ProviderMisconfigured("404 model_not_found")

    shadow, classifier, _, metrics, _ = make(misconfigured, drain_s=5)
    async with shadow:
        shadow.offer(*offered(1))
        await asyncio.sleep(0)  # let the first one fail
        while shadow.running:
            await asyncio.sleep(0)
        assert not shadow.enabled
        shadow.offer(*offered(2))
    assert classifier.calls == 1
    assert dropped(metrics) == {"failed": 1}


async def test_a_bug_in_the_candidate_is_counted_not_raised() -> None:
    async def broken(admitted: Admitted, source: Source) -> Classified:
        raise KeyError("oops")

    shadow, _, _, metrics, _ = make(broken, drain_s=5)
    async with shadow:
        shadow.offer(*offered(1))
    assert dropped(metrics) == {"failed": 1}


async def test_work_still_running_at_the_stop_is_dropped_after_the_drain() -> None:
    async def slow(admitted: Admitted, source: Source) -> Classified:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    shadow, _, _, metrics, _ = make(slow, drain_s=0.01)
    async with shadow:
        shadow.offer(*offered(1))
        shadow.offer(*offered(2))
    assert dropped(metrics) == {"stopped": 2}
    assert shadow.running == 0


async def test_no_usable_verdict_publishes_the_usage_and_counts_a_failure() -> None:
    async def unusable(admitted: Admitted, source: Source) -> Classified:
        failure = PermanentError("the reply never parsed")
        return Classified(None, failure, [usage_for(source, admitted.request.id)])

    shadow, _, producer, metrics, _ = make(unusable)
    async with shadow:
        shadow.offer(*offered(1))
    assert [r.topic for r in producer.acked] == ["shadow.usage"]
    assert dropped(metrics) == {"failed": 1}
