"""Classify stage: one admitted content -> a Verdict (or a permanent failure), plus usage.

The model is asked for a strict ``json_schema`` reply (one score per policy category and a
rationale); the reply is validated with pydantic and the *policy* turns scores into ``flagged``
and ``action``. What can go wrong, and what happens:

====================================  ==========================================
transient (429, 5xx, timeout, drop,   retried with full-jitter exponential backoff
empty choices)                        honouring ``retry-after(-ms)``; never dead-lettered;
                                      a run of 5xx/timeouts opens the circuit (see circuit)
401 / 403                             ``ProviderAuthError``: fatal, the service stops
400 / 404 / 422                       ``RequestRejected``: dead letter
invalid JSON or schema violation      one repair request showing the error, then dead letter
``finish_reason == "length"``         one retry with twice the ``max_tokens``, then dead letter
refusal / ``content_filter``          a verdict with the policy's ``refusal_action``
====================================  ==========================================

The SDK's own retries are off (``max_retries=0`` in the app): tenacity here is the one retry
layer, so every retry re-acquires concurrency and token budget. Every HTTP call (chat, the
first tier's moderation call in :mod:`consumer.tier`, a batch in :mod:`consumer.batch`) goes
through :meth:`Classifier.with_retries`: the circuit breaker, the limiter and the backoff.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar, cast

import openai
import structlog
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_random_exponential,
)

from consumer.admit import Admitted
from consumer.circuit import CircuitBreaker
from consumer.cost import PriceTable
from consumer.errors import (
    InvalidReply,
    ModstreamError,
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
)
from consumer.limit import Limiter
from consumer.metrics import Metrics
from consumer.policy import PromptBuilder
from consumer.provider import failed_outcome, retry_after_seconds, translate
from consumer.tier import decided_rationale, moderation_scores, send_moderation
from consumer.tokens import count_tokens
from schemas import Source, TierScores, UsageEvent, UsageOutcome, Verdict, make_event_id

log = structlog.get_logger(__name__)

__all__ = [
    "Call",
    "ChatRequest",
    "Classified",
    "Classifier",
    "Recorder",
    "Tokens",
    "retry_after_seconds",
    "translate",
]

T = TypeVar("T")

#: The longest server-requested wait we honour before retrying anyway.
_RETRY_AFTER_CAP_S = 60.0

#: A 200 with no choices: recorded as such, then retried like any transient failure.
_NO_CHOICES = UsageOutcome.PROVIDER_UNAVAILABLE

#: Named in the usage events of moderation calls, which cost nothing.
MODERATION_PRICE_SOURCE = "moderations endpoint (free)"


class Tokens(NamedTuple):
    """One call's token counts."""

    prompt: int
    completion: int
    cached: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Classified:
    """What classify hands on: a verdict or a permanent failure, and one usage per call."""

    verdict: Verdict | None
    failure: PermanentError | None
    usage: list[UsageEvent]


@dataclass(slots=True)
class Call:
    """One message's conversation with the model (and the first tier), across attempts."""

    admitted: Admitted
    source: Source
    messages: list[dict[str, str]]
    max_tokens: int
    usage: list[UsageEvent] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    #: The tiers that ran so far, when the policy has a first tier.
    tiers: list[TierScores] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request: what is sent, and the token estimate for the limiter."""

    messages: list[dict[str, str]]
    max_tokens: int
    response_format: dict[str, Any]
    estimate: int


#: Records one HTTP call's usage: (outcome, tokens, perf_counter when it started).
Recorder = Callable[[UsageOutcome, Tokens, float], None]


class Classifier:
    """Asks the model for scores and lets the policy decide."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        builder: PromptBuilder,
        limiter: Limiter,
        prices: PriceTable,
        breaker: CircuitBreaker | None = None,
        max_backoff_s: float = 30.0,
        on_retry: Callable[[ModstreamError], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.builder = builder
        self.policy = builder.policy
        self.limiter = limiter
        self.prices = prices
        self.breaker = breaker or CircuitBreaker()
        self.max_backoff_s = max_backoff_s
        self.on_retry = on_retry
        self.metrics = metrics or Metrics()  # a private registry when nobody scrapes
        self.overhead_tokens = count_tokens(builder.overhead_text(), model) + 16
        self._jitter = wait_random_exponential(multiplier=0.25, max=max_backoff_s)

    async def classify(self, admitted: Admitted, source: Source) -> Classified:
        """Run the conversation to a verdict or a permanent failure; transient errors retry.

        With a first tier in the policy, the moderations endpoint goes first and may decide.
        """
        call = self.new_call(admitted, source)
        decided = await self.first_tier(call)
        return decided if decided is not None else await self.chat(call)

    def new_call(self, admitted: Admitted, source: Source) -> Call:
        """A fresh conversation for one admitted message."""
        messages = self.builder.messages(admitted.text, admitted.context)
        return Call(admitted, source, messages, self.max_tokens)

    async def first_tier(self, call: Call) -> Classified | None:
        """The first tier's verdict when it decides; ``None`` when the chat model must be asked
        (the policy has no first tier, a score fell in the uncertain band, or the moderations
        endpoint rejected the request: the chat model then decides alone)."""
        tier = self.policy.first_tier
        if tier is None:
            return None

        def record(outcome: UsageOutcome, started: float) -> None:
            usage = self.usage_event(
                call,
                outcome,
                Tokens(0, 0),  # the endpoint reports no tokens, and it is free
                started,
                cost=0.0,
                model=tier.model,
                price_source=MODERATION_PRICE_SOURCE,
            )
            self.record(call, usage)

        send = functools.partial(
            send_moderation, self.client, self.limiter, tier.model, call.admitted.text, record
        )
        try:
            result = await self.with_retries(send)
        except PermanentError as exc:
            log.warning("first tier rejected the request; asking the chat model", error=str(exc))
            return None
        scores = moderation_scores(result, self.policy)
        call.tiers.append(TierScores(name="moderation", model=tier.model, scores=scores))
        if not tier.decides(scores):
            return None
        verdict = self.verdict(call, scores, decided_rationale(tier), None, model=tier.model)
        return Classified(verdict, None, call.usage)

    async def chat(self, call: Call) -> Classified:
        """Ask the chat model (repairing, lengthening) until a verdict or a permanent failure."""
        repaired = lengthened = False
        while True:
            request = ChatRequest(
                call.messages,
                call.max_tokens,
                self.policy.response_format,
                self.overhead_tokens + call.admitted.content_tokens + call.max_tokens,
            )
            try:
                completion = await self.with_retries(
                    functools.partial(self.send_chat, request, call)
                )
            except PermanentError as exc:  # 400/404/422: dead letter, keep the usage
                return Classified(None, exc, call.usage)
            choice = completion.choices[0]
            content = choice.message.content or ""
            refusal = choice.message.refusal
            if refusal or choice.finish_reason == "content_filter":
                reason = refusal or "the provider's content filter stopped the reply"
                self._mark_last(
                    call, UsageOutcome.REFUSAL if refusal else UsageOutcome.CONTENT_FILTER
                )
                return Classified(self._refusal_verdict(call, reason), None, call.usage)
            if choice.finish_reason == "length":
                self._mark_last(call, UsageOutcome.LENGTH)
                if lengthened:
                    failure = InvalidReply(
                        f"reply cut at max_tokens={call.max_tokens} twice", reply=content
                    )
                    return Classified(None, failure, call.usage)
                lengthened = True
                call.max_tokens *= 2
                continue
            try:
                reply = self.policy.reply_model.model_validate_json(content)
            except ValidationError as exc:
                self._mark_last(call, UsageOutcome.INVALID_REPLY)
                problem = _describe(exc)
                if repaired:
                    failure = InvalidReply(
                        f"reply invalid after one repair: {problem}", reply=content
                    )
                    return Classified(None, failure, call.usage)
                repaired = True
                call.messages = [
                    *call.messages,
                    {"role": "assistant", "content": content},
                    {
                        "role": "user",
                        "content": f"That reply is invalid: {problem}. Reply again with only "
                        "JSON that matches the schema.",
                    },
                ]
                continue
            scores = self.policy.scores_from_reply(reply)
            rationale = str(getattr(reply, "rationale", ""))[:1000]
            return Classified(self.chat_verdict(call, scores, rationale), None, call.usage)

    def chat_verdict(self, call: Call, scores: dict[str, float], rationale: str) -> Verdict:
        """The verdict from the chat model's scores (recorded as its tier when tiering)."""
        if self.policy.first_tier is not None:
            call.tiers.append(TierScores(name="chat", model=self.model, scores=scores))
        return self.verdict(call, scores, rationale, None)

    async def with_retries(self, send: Callable[[], Awaitable[T]]) -> T:
        """Make the HTTP call ``send`` makes, through the breaker and the retry layer.

        ``send`` takes its own limiter slot (so every retry re-acquires budget) and records
        the usage of each attempt; transient errors are retried, anything else is raised.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, TransientError)),
            wait=self._wait,
            stop=stop_never,
            reraise=True,
            before_sleep=self._before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(send)
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        """Full-jitter exponential backoff, but never sooner than the server asked."""
        jitter = float(self._jitter(state))
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, TransientError) else None
        if asked is None:
            return jitter
        # Honour the server, within reason: a retry-after of a day would stall a message a day.
        return max(jitter, min(asked, max(_RETRY_AFTER_CAP_S, self.max_backoff_s)))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ModstreamError):
            if self.on_retry is not None:
                self.on_retry(exc)
            if isinstance(exc, RateLimited):
                self.limiter.concurrency.on_overload()
            log.debug("model call failed, retrying", kind=exc.kind, attempt=state.attempt_number)

    async def _attempt(self, send: Callable[[], Awaitable[T]]) -> T:
        """One HTTP call, gated by the circuit breaker (``send`` takes the limiter slot)."""
        probe = await self.breaker.admit()
        try:
            completion = await send()
        except ProviderUnavailable:
            self.breaker.failure()
            raise
        finally:
            if probe:
                self.breaker.end_probe()
        self.breaker.success()
        await self.limiter.concurrency.on_success()
        return completion

    async def send_chat(self, request: ChatRequest, record: Call | Recorder) -> ChatCompletion:
        """One chat completion; its usage goes to ``record`` (a call's list, or a recorder)."""
        if isinstance(record, Call):
            record = self.recorder(record)
        async with self.limiter.slot(request.estimate) as permit:
            started = time.perf_counter()
            try:
                raw = await self.client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=cast("list[ChatCompletionMessageParam]", request.messages),
                    response_format=cast("ResponseFormatJSONSchema", request.response_format),
                    max_tokens=request.max_tokens,
                    temperature=self.temperature,
                )
                self.limiter.observe_headers(raw.headers)
                completion = raw.parse()
                if not isinstance(completion, ChatCompletion) or any(
                    c.message is None for c in completion.choices or ()
                ):  # e.g. an HTML page, which the SDK hands back as a str
                    raise ValueError("the 200 reply is not a chat completion")
            except (openai.OpenAIError, ValueError) as exc:
                # ValueError: a 200 whose body is not a chat completion (a broken proxy).
                permit.settle(0)
                error = translate(exc)
                record(failed_outcome(error), Tokens(0, 0), started)
                raise error from exc
        usage = completion.usage
        if (
            usage is not None
            and isinstance(usage.prompt_tokens, int)
            and isinstance(usage.completion_tokens, int)
        ):
            cached = getattr(usage.prompt_tokens_details, "cached_tokens", None) or 0
            counts = Tokens(usage.prompt_tokens, usage.completion_tokens, cached)
        else:  # vLLM/Ollama may omit usage: count locally and say so
            text = "".join(m["content"] for m in request.messages)
            reply = completion.choices[0].message.content if completion.choices else ""
            counts = Tokens(
                count_tokens(text, self.model), count_tokens(reply or "", self.model), 0, True
            )
        permit.settle(counts.prompt + counts.completion)
        record(UsageOutcome.OK if completion.choices else _NO_CHOICES, counts, started)
        if not completion.choices:
            self.metrics.reply_problem(self.model, _NO_CHOICES.value)
            raise ProviderUnavailable("the model returned no choices")
        return completion

    def recorder(self, call: Call) -> Recorder:
        """Records each chat call's usage in ``call`` (and the metrics)."""

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            cost = self.prices.cost(self.model, tokens.prompt, tokens.completion, tokens.cached)
            self.record(call, self.usage_event(call, outcome, tokens, started, cost=cost))

        return record

    def usage_event(
        self,
        call: Call,
        outcome: UsageOutcome,
        tokens: Tokens,
        started: float,
        *,
        cost: float | None,
        model: str | None = None,
        price_source: str | None = None,
        batch: tuple[str, int] | None = None,
    ) -> UsageEvent:
        """The usage of ``call``'s next attempt (``batch``: the batch id and size, if any)."""
        attempt = len(call.usage) + 1
        return UsageEvent(
            event_id=make_event_id(call.source, self.policy.version, "usage", attempt),
            source=call.source,
            content_id=call.admitted.request.id,
            model=model or self.model,
            attempt=attempt,
            outcome=outcome,
            prompt_tokens=tokens.prompt,
            completion_tokens=tokens.completion,
            cached_tokens=tokens.cached,
            estimated=tokens.estimated,
            cost_usd=cost,
            price_source=price_source or self.prices.source,
            latency_ms=(time.perf_counter() - started) * 1000,
            created_at=datetime.now(UTC),
            batch_id=batch[0] if batch else None,
            batch_size=batch[1] if batch else 1,
        )

    def record(self, call: Call, usage: UsageEvent, *, metrics: bool = True) -> None:
        """One model call done: its usage goes with the message (and to the metrics)."""
        call.usage.append(usage)
        if metrics:
            self.metrics.model_call(usage)

    def _mark_last(self, call: Call, outcome: UsageOutcome) -> None:
        """The last call returned 200 but its reply was not usable: say so in its usage."""
        self.mark_last(call, outcome)
        self.metrics.reply_problem(self.model, outcome.value)

    @staticmethod
    def mark_last(call: Call, outcome: UsageOutcome) -> None:
        """Change the outcome of ``call``'s last usage event (no metrics)."""
        call.usage[-1] = call.usage[-1].model_copy(update={"outcome": outcome})

    def _refusal_verdict(self, call: Call, reason: str) -> Verdict:
        if self.policy.first_tier is not None:
            call.tiers.append(TierScores(name="chat", model=self.model, scores={}))
        scores = {c.name: 0.0 for c in self.policy.categories}
        verdict = self.verdict(call, scores, "the model declined to classify", reason)
        action = self.policy.refusal_action
        return verdict.model_copy(update={"action": action, "flagged": action != "allow"})

    def verdict(
        self,
        call: Call,
        scores: dict[str, float],
        rationale: str,
        refusal: str | None,
        *,
        model: str | None = None,
    ) -> Verdict:
        """The policy's decision on ``scores``, as the verdict for ``call``."""
        flagged, action, categories = self.policy.decide(scores)
        request = call.admitted.request
        return Verdict(
            event_id=make_event_id(call.source, self.policy.version, "verdict"),
            source=call.source,
            content_id=request.id,
            content_sha256=hashlib.sha256(request.text.encode()).hexdigest(),
            flagged=flagged,
            action=action,
            categories=categories,
            rationale=rationale,
            refusal=refusal,
            model=model or self.model,
            policy_version=self.policy.version,
            prompt_version=self.builder.prompt.version,
            truncated=call.admitted.truncated,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            metadata=request.metadata,
            created_at=datetime.now(UTC),
            tiers=list(call.tiers),
        )


def _describe(exc: ValidationError) -> str:
    """A validation error in a few words the model (and a person) can act on."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "reply"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
