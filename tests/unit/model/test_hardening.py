"""classify hardening: poison that looks transient, misconfiguration, folded failure usage.

Against a provider answered by a function of the request (``httpx2.MockTransport``): "other
messages succeed" is simulated by telling the breaker a success from inside the transport, the
way a concurrent message's 200 would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from consumer.errors import (
    PersistentFailure,
    ProviderMisconfigured,
    RequestRejected,
)
from consumer.model.batch import Batcher
from consumer.model.circuit import CircuitBreaker
from consumer.model.classify import Classified, Classifier
from consumer.model.cost import PriceTable
from consumer.model.folding import FAILED_OUTCOMES, fold_usage
from consumer.model.limit import Limiter
from consumer.model.policy import FirstTier
from consumer.model.request_params import choose, server_kind
from schemas import Source, UsageEvent, UsageOutcome, make_event_id
from tests.unit.model.test_batch import batch_reply, item, short, source
from tests.unit.model.test_classify import (
    BUILDER,
    MODEL,
    POLICY,
    PROMPT,
    admitted,
    ok,
    reply_text,
    status,
)

pytestmark = pytest.mark.timeout(60)

KEY = "sk-secret-do-not-print"
Route = Callable[[httpx2.Request, dict[str, Any]], httpx2.Response]


class Scripted:
    """A provider answering by ``route(request, body)``; counts requests per path."""

    def __init__(self) -> None:
        self.route: Route = lambda request, body: ok()
        self.paths: list[str] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.paths.append(request.url.path)
        return self.route(request, json.loads(request.content))


Make = Callable[..., tuple[Classifier, Scripted]]


@pytest_asyncio.fixture
async def make(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    real_sleep = asyncio.sleep

    async def only_yield(delay: float, result: Any = None) -> Any:
        await real_sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", only_yield)
    clients: list[httpx2.AsyncClient] = []

    def build(**options: Any) -> tuple[Classifier, Scripted]:
        provider = Scripted()
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(provider))
        clients.append(http)
        client = AsyncOpenAI(
            base_url="http://user:pw@test:8080/v1",
            api_key=KEY,
            max_retries=0,
            http_client=http,
        )
        builder = options.pop("builder", BUILDER)
        model = options.pop("model", MODEL)
        classifier = Classifier(
            client,
            model=model,
            params=choose(model, server_kind(client.base_url), max_tokens=200, temperature=0.0),
            builder=builder,
            limiter=Limiter(8),
            prices=PriceTable(),
            max_backoff_s=0.01,
            **options,
        )
        return classifier, provider

    yield build
    for http in clients:
        await http.aclose()


def user_text(body: dict[str, Any]) -> str:
    return "".join(m["content"] for m in body.get("messages", []) if m["role"] == "user")


def error(
    code: int, message: str, err: str | None = None, param: str | None = None
) -> httpx2.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": err}}
    body["error"]["param"] = param
    return httpx2.Response(code, json=body)


# ---- 6. poison that looks transient ----------------------------------------------------------


async def test_a_message_failing_alone_is_dead_lettered_after_poison_attempts(
    make: Make,
) -> None:
    classifier, provider = make(poison_attempts=5)

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        classifier.breaker.success()  # meanwhile another message got its answer
        return status(500)

    provider.route = route
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    assert isinstance(result.failure, PersistentFailure)
    assert result.failure.kind == "persistent_failure"
    assert len(provider.paths) == 5
    assert result.failure.message.startswith(
        "5 attempts failed with provider_unavailable while other messages succeeded: "
        "treating this message as poison; last error: HTTP 500"
    )
    assert result.attempts == 5
    assert {u.outcome for u in result.usage} == {UsageOutcome.PROVIDER_UNAVAILABLE}


async def test_a_poison_message_with_no_other_traffic_is_told_apart_by_witness_calls(
    make: Make,
) -> None:
    """The window full of records held behind the poison message: it is the only call. After
    poison_attempts failures that could not count, witness calls (a harmless "ok") show the
    provider answers, so its failures count and it ends as a dead letter instead of stalling
    its partition for good."""
    classifier, provider = make(poison_attempts=3)
    classifier.calls.witness_interval_s = 0.0
    witness = BUILDER.messages("ok", None)[-1]["content"]
    witnesses = 0

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        nonlocal witnesses
        if user_text(body) == witness:
            witnesses += 1
            return ok(reply_text())
        return status(500)

    provider.route = route
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    assert isinstance(result.failure, PersistentFailure)
    assert witnesses == 3  # one before each counted failure
    # 3 uncounted, 3 counted, and the witness calls, paid for with this message's usage.
    assert result.attempts == len(provider.paths) == 3 + 3 + witnesses
    # ... folded into one event of their own: the usage of a message stays bounded however
    # many witness calls its retries needed.
    answered = [u for u in result.usage if u.outcome is UsageOutcome.OK]
    assert [u.calls for u in answered] == [witnesses]
    assert classifier.breaker.is_closed


async def test_witness_calls_that_fail_too_mean_an_outage_not_poison(make: Make) -> None:
    classifier, provider = make(poison_attempts=3, breaker=CircuitBreaker(failure_threshold=1000))
    classifier.calls.witness_interval_s = 0.0
    answers = [status(503)] * 30 + [ok(reply_text())] * 5
    provider.route = lambda request, body: answers[min(len(provider.paths), len(answers)) - 1]
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    assert result.failure is None and result.verdict is not None  # never dead-lettered


async def test_failures_with_no_success_elsewhere_never_count(make: Make) -> None:
    """An outage that has not opened the circuit yet (threshold not reached): nothing counts."""
    classifier, provider = make(poison_attempts=3, breaker=CircuitBreaker(failure_threshold=1000))
    answers = [status(503)] * 40 + [ok(reply_text())]
    provider.route = lambda request, body: answers[len(provider.paths) - 1]
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    assert result.failure is None and result.verdict is not None
    assert len(provider.paths) == 41


async def test_rate_limits_never_make_poison(make: Make) -> None:
    classifier, provider = make(poison_attempts=2)

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        if len(provider.paths) > 30:
            return ok(reply_text())
        classifier.breaker.success()
        return status(429, {"retry-after-ms": "1"})

    provider.route = route
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    assert result.verdict is not None
    assert result.attempts == 31


async def test_an_opening_of_the_circuit_resets_the_count(make: Make) -> None:
    """Three counted failures, then an outage opens the circuit: the count starts again."""
    ticks = itertools.count(0.0, 5.0)  # every reading is 5 s later: the probe goes at once
    breaker = CircuitBreaker(failure_threshold=3, reset_s=1.0, clock=lambda: next(ticks))
    classifier, provider = make(poison_attempts=4, breaker=breaker)
    others = (object(), object())

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        n = len(provider.paths)
        if n == 4:  # two other messages fail too: three callers, three in a row, open it
            breaker.failure(others[0])
            breaker.failure(others[1])
        else:
            breaker.success()
        return status(500) if n < 8 else ok(reply_text())

    provider.route = route
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    # 1-3 count (3); 4 opens the circuit: reset; 5 (the probe), 6, 7 count (3 < 4); 8 answers.
    # Without the reset, 5 would have been the 4th and made it poison.
    assert result.verdict is not None, result.failure
    assert len(provider.paths) == 8
    assert breaker.openings == 1


async def test_poison_in_a_batch_falls_back_and_only_the_poison_is_dead_lettered(
    make: Make,
) -> None:
    classifier, provider = make(poison_attempts=3)
    batcher = Batcher(classifier, size=3, max_tokens=50, linger_s=60)

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        text = user_text(body)
        if "POISON" in text:
            classifier.breaker.success()  # the others get through meanwhile
            return status(500)
        if 'index="1"' in text:
            return ok(batch_reply(item(0), item(1), item(2)))
        return ok(reply_text())

    provider.route = route
    texts = ["fine zero", "POISON here", "fine two"]
    results = await asyncio.gather(
        *(batcher.classify(short(i, t), source(i)) for i, t in enumerate(texts))
    )
    assert [r.verdict is not None for r in results] == [True, False, True]
    assert isinstance(results[1].failure, PersistentFailure)
    # the batch call failed 3 times, then one single call each; the poison's 3 more times
    assert len(provider.paths) == 3 + 2 + 3
    assert results[1].attempts == 6
    assert results[0].attempts == 4


async def test_poison_on_the_first_tier_leaves_the_decision_to_the_chat_model(
    make: Make,
) -> None:
    tiered = POLICY.model_copy(
        update={"first_tier": FirstTier(model="omni-moderation-latest", uncertain_band=(0, 1))}
    )
    from consumer.model.policy import PromptBuilder  # noqa: PLC0415

    classifier, provider = make(poison_attempts=2, builder=PromptBuilder(tiered, PROMPT))

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        if request.url.path.endswith("/moderations"):
            classifier.breaker.success()
            return status(502)
        return ok(reply_text(hate=0.9))

    provider.route = route
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    assert result.verdict is not None
    assert provider.paths == ["/v1/moderations"] * 2 + ["/v1/chat/completions"]


# ---- 8. misconfiguration ---------------------------------------------------------------------


async def test_404_unknown_model_is_fatal_and_names_model_and_url_not_the_key(
    make: Make,
) -> None:
    classifier, provider = make(model="llama3:70b")
    provider.route = lambda request, body: error(
        404, "model 'llama3:70b' not found, try pulling it first", "model_not_found"
    )
    with pytest.raises(ProviderMisconfigured) as info:
        await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))
    message = info.value.message
    assert info.value.fatal
    assert "try pulling it first" in message
    assert "'llama3:70b'" in message
    assert "http://test:8080/v1" in message
    assert KEY not in message and "pw" not in message
    assert len(provider.paths) == 1  # never retried


async def test_404_on_the_first_tier_is_fatal(make: Make) -> None:
    tiered = POLICY.model_copy(
        update={"first_tier": FirstTier(model="omni-nope", uncertain_band=(0.1, 0.9))}
    )
    from consumer.model.policy import PromptBuilder  # noqa: PLC0415

    classifier, provider = make(builder=PromptBuilder(tiered, PROMPT))
    provider.route = lambda request, body: error(
        404, "The model `omni-nope` does not exist", "model_not_found"
    )
    with pytest.raises(ProviderMisconfigured, match="omni-nope"):
        await classifier.classify(admitted(), Source(topic="in", partition=0, offset=1))


UNSUPPORTED = "Unsupported parameter: 'max_tokens' is not supported with this model."


async def test_the_same_400_for_n_different_messages_is_fatal(make: Make) -> None:
    classifier, provider = make(misconfig_repeats=3)
    provider.route = lambda request, body: error(
        400, UNSUPPORTED, "unsupported_parameter", "max_tokens"
    )
    first = [
        await classifier.classify(admitted(), Source(topic="in", partition=0, offset=o))
        for o in (1, 2)
    ]
    assert all(isinstance(r.failure, RequestRejected) for r in first)
    # the same message again (a redelivery) is not a different message
    again = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=2))
    assert isinstance(again.failure, RequestRejected)
    with pytest.raises(ProviderMisconfigured) as info:
        await classifier.classify(admitted(), Source(topic="in", partition=1, offset=2))
    message = info.value.message
    assert message.startswith("the provider rejected 3 different messages with the same error")
    assert UNSUPPORTED in message
    assert "configuration problem" in message and "not bad content" in message
    assert "in/0@1, in/0@2" in message  # the ones already dead-lettered, to replay
    assert KEY not in message


async def test_a_400_about_content_stays_a_dead_letter(make: Make) -> None:
    classifier, provider = make(misconfig_repeats=2)

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        text = user_text(body)
        if "bad" in text:  # each message's own error text differs
            return error(400, f"Invalid content: {text[-40:]}", "invalid_value", "messages")
        return ok(reply_text())

    provider.route = route
    for offset in range(5):
        result = await classifier.classify(
            admitted(f"bad text {offset}"), Source(topic="in", partition=0, offset=offset)
        )
        assert isinstance(result.failure, RequestRejected)


async def test_the_provider_flagging_content_is_never_a_misconfiguration(make: Make) -> None:
    classifier, provider = make(misconfig_repeats=2)
    provider.route = lambda request, body: error(
        400, "Invalid prompt: flagged as potentially violating our usage policy", "invalid_prompt"
    )
    for offset in range(4):
        result = await classifier.classify(
            admitted(), Source(topic="in", partition=0, offset=offset)
        )
        assert isinstance(result.failure, RequestRejected)


async def test_a_success_between_identical_400s_clears_the_pattern(make: Make) -> None:
    classifier, provider = make(misconfig_repeats=2)

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        if "bad" in user_text(body):
            return error(400, "Invalid 'messages': nope", "invalid_value", "messages")
        return ok(reply_text())

    provider.route = route
    for offset in range(6):
        text = "bad" if offset % 2 == 0 else "good"
        result = await classifier.classify(
            admitted(text), Source(topic="in", partition=0, offset=offset)
        )
        assert (result.failure is None) == (text == "good")


# ---- 9. failed attempts' usage is bounded ----------------------------------------------------


async def test_a_long_429_storm_folds_into_one_event(make: Make) -> None:
    classifier, provider = make(usage_failures_kept=3)

    def route(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        n = len(provider.paths)
        if n <= 200:
            return status(429, {"retry-after-ms": "1"})
        if n <= 210:
            return status(500)
        return ok(reply_text())

    provider.route = route
    result = await classifier.classify(admitted(), Source(topic="in", partition=0, offset=7))
    assert result.verdict is not None
    assert [(u.outcome, u.calls, u.attempt) for u in result.usage] == [
        (UsageOutcome.RATE_LIMITED, 1, 1),
        (UsageOutcome.RATE_LIMITED, 1, 2),
        (UsageOutcome.RATE_LIMITED, 1, 3),
        (UsageOutcome.RATE_LIMITED, 197, 4),
        (UsageOutcome.PROVIDER_UNAVAILABLE, 10, 201),
        (UsageOutcome.OK, 1, 211),
    ]
    # After poison_attempts (8) failures that could not count (nothing else answered), one
    # witness call asks whether the provider is up (it got one of the scripted 500s); made on
    # this message's behalf, it is in the message's usage.
    assert result.attempts == 211 == len(provider.paths)
    ids = [u.event_id for u in result.usage]
    assert ids == [
        make_event_id(result.usage[0].source, POLICY.version, "usage", u.attempt)
        for u in result.usage
    ]


def event(attempt: int, outcome: UsageOutcome, tokens: int, cost: float, model: str) -> UsageEvent:
    src = Source(topic="in", partition=0, offset=1)
    return UsageEvent(
        event_id=make_event_id(src, "v", "usage", attempt),
        source=src,
        content_id="c",
        model=model,
        attempt=attempt,
        outcome=outcome,
        prompt_tokens=tokens,
        completion_tokens=tokens // 2,
        reasoning_tokens=tokens // 4,
        cost_usd=cost,
        latency_ms=float(tokens),
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


OUTCOMES = [
    UsageOutcome.RATE_LIMITED,
    UsageOutcome.PROVIDER_UNAVAILABLE,
    UsageOutcome.REJECTED,
    UsageOutcome.OK,
]


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(OUTCOMES),
            st.integers(0, 1000),
            st.floats(0, 1, allow_nan=False),
            st.sampled_from(["chat", "moderation"]),
        ),
        max_size=300,
    ),
    kept=st.integers(1, 6),
)
def test_fold_keeps_every_sum_and_bounds_the_events(
    calls: list[tuple[UsageOutcome, int, float, str]], kept: int
) -> None:
    usage: list[UsageEvent] = []
    for outcome, tokens, cost, model in calls:
        attempt = sum(u.calls for u in usage) + 1
        fold_usage(usage, event(attempt, outcome, tokens, cost, model), kept)
    assert Classified(None, None, usage).attempts == len(calls)
    assert sum(u.prompt_tokens for u in usage) == sum(t for _, t, _, _ in calls)
    assert sum(u.completion_tokens for u in usage) == sum(t // 2 for _, t, _, _ in calls)
    assert sum(u.reasoning_tokens for u in usage) == sum(t // 4 for _, t, _, _ in calls)
    assert sum(u.latency_ms for u in usage) == pytest.approx(sum(float(t) for _, t, _, _ in calls))
    assert sum(u.cost_usd or 0 for u in usage) == pytest.approx(sum(c for _, _, c, _ in calls))
    failures = [u for u in usage if u.outcome in FAILED_OUTCOMES]
    kinds = {(o, m) for o, _, _, m in calls if o in FAILED_OUTCOMES}
    assert len(failures) <= kept + len(kinds)
    assert sum(1 for u in usage if u.outcome not in FAILED_OUTCOMES) == sum(
        1 for o, _, _, _ in calls if o not in FAILED_OUTCOMES
    )
    for kind in {(u.outcome, u.model) for u in failures}:
        assert sum(1 for u in failures[kept:] if (u.outcome, u.model) == kind) <= 1
    attempts = [u.attempt for u in usage]
    assert attempts == sorted(set(attempts))  # unique and increasing: deterministic ids
    assert all(u.calls == 1 for u in usage if u.outcome not in FAILED_OUTCOMES)


def test_public_url_drops_credentials_query_and_fragment() -> None:
    from consumer.model.provider import public_url  # noqa: PLC0415

    assert public_url("https://u:secret@host:8443/v1/?api-key=k#x") == "https://host:8443/v1/"
    assert public_url("http://localhost:11434/v1") == "http://localhost:11434/v1"
    assert public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
