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
layer, so every retry re-acquires concurrency and token budget.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

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
    ProviderAuthError,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    TransientError,
)
from consumer.limit import Limiter
from consumer.metrics import Metrics
from consumer.policy import PromptBuilder
from consumer.tokens import count_tokens
from schemas import Source, UsageEvent, UsageOutcome, Verdict, make_event_id

log = structlog.get_logger(__name__)

#: The longest server-requested wait we honour before retrying anyway.
_RETRY_AFTER_CAP_S = 60.0


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a response asks for: ``retry-after-ms`` first, then ``retry-after``.

    Garbage (not a number, not an HTTP-date, not finite) is ``None``: a bad header must not
    stop the retry or make it wait forever.
    """
    if headers is None:
        return None
    if (ms := _seconds(headers.get("retry-after-ms"))) is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if (seconds := _seconds(value)) is not None or not value:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC without a zone (RFC 5322)
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds(value: str | None) -> float | None:
    """A finite, non-negative number from a header value, else ``None``."""
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


def translate(exc: Exception) -> ModstreamError:
    """The one place where openai's (and the transport's) exceptions become ours."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderUnavailable("the model did not answer within the timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnavailable(f"connection to the model failed: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        wait = retry_after_seconds(exc.response.headers)
        detail = f"HTTP {status} from the model provider: {exc.message}"
        if status == 429:
            return RateLimited(detail, retry_after=wait)
        if status in (401, 403):
            return ProviderAuthError(
                f"{detail}. Check OPENAI_API_KEY / OPENAI_BASE_URL and access to the model."
            )
        if status in (408, 409) or status >= 500:
            return ProviderUnavailable(detail, retry_after=wait)
        return RequestRejected(detail)
    return ProviderUnavailable(f"unexpected error from the model client: {exc!r}")


_OUTCOME_OF = {
    RateLimited: UsageOutcome.RATE_LIMITED,
    ProviderUnavailable: UsageOutcome.PROVIDER_UNAVAILABLE,
    ProviderAuthError: UsageOutcome.AUTH,
    RequestRejected: UsageOutcome.REJECTED,
}


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
class _Call:
    """One message's conversation with the model, across attempts."""

    admitted: Admitted
    source: Source
    messages: list[dict[str, str]]
    max_tokens: int
    usage: list[UsageEvent] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


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
        """Run the conversation to a verdict or a permanent failure; transient errors retry."""
        call = _Call(
            admitted,
            source,
            self.builder.messages(admitted.text, admitted.context),
            self.max_tokens,
        )
        repaired = lengthened = False
        while True:
            try:
                completion = await self._with_retries(call)
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
            return Classified(self._verdict(call, scores, rationale, None), None, call.usage)

    async def _with_retries(self, call: _Call) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, TransientError)),
            wait=self._wait,
            stop=stop_never,
            reraise=True,
            before_sleep=self._before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(call)
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

    async def _attempt(self, call: _Call) -> Any:
        """One HTTP call, gated by the circuit breaker and the limiter."""
        probe = await self.breaker.admit()
        try:
            completion = await self._send(call)
        except ProviderUnavailable:
            self.breaker.failure()
            raise
        finally:
            if probe:
                self.breaker.end_probe()
        self.breaker.success()
        await self.limiter.concurrency.on_success()
        return completion

    async def _send(self, call: _Call) -> Any:
        estimate = self.overhead_tokens + call.admitted.content_tokens + call.max_tokens
        attempt = len(call.usage) + 1
        async with self.limiter.slot(estimate) as permit:
            started = time.perf_counter()
            try:
                raw = await self.client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=cast("list[ChatCompletionMessageParam]", call.messages),
                    response_format=cast("ResponseFormatJSONSchema", self.policy.response_format),
                    max_tokens=call.max_tokens,
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
                outcome = _OUTCOME_OF.get(type(error), UsageOutcome.PROVIDER_UNAVAILABLE)
                self._record(call, self._usage(call, attempt, outcome, Tokens(0, 0), started))
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
            text = "".join(m["content"] for m in call.messages)
            reply = completion.choices[0].message.content if completion.choices else ""
            counts = Tokens(
                count_tokens(text, self.model), count_tokens(reply or "", self.model), 0, True
            )
        permit.settle(counts.prompt + counts.completion)
        self._record(call, self._usage(call, attempt, UsageOutcome.OK, counts, started))
        if not completion.choices:
            self._mark_last(call, UsageOutcome.PROVIDER_UNAVAILABLE)
            raise ProviderUnavailable("the model returned no choices")
        return completion

    def _usage(
        self,
        call: _Call,
        attempt: int,
        outcome: UsageOutcome,
        tokens: Tokens,
        started: float,
    ) -> UsageEvent:
        return UsageEvent(
            event_id=make_event_id(call.source, self.policy.version, "usage", attempt),
            source=call.source,
            content_id=call.admitted.request.id,
            model=self.model,
            attempt=attempt,
            outcome=outcome,
            prompt_tokens=tokens.prompt,
            completion_tokens=tokens.completion,
            cached_tokens=tokens.cached,
            estimated=tokens.estimated,
            cost_usd=self.prices.cost(self.model, tokens.prompt, tokens.completion, tokens.cached),
            price_source=self.prices.source,
            latency_ms=(time.perf_counter() - started) * 1000,
            created_at=datetime.now(UTC),
        )

    def _record(self, call: _Call, usage: UsageEvent) -> None:
        """One model call done: its usage goes with the message and to the metrics."""
        call.usage.append(usage)
        self.metrics.model_call(usage)

    def _mark_last(self, call: _Call, outcome: UsageOutcome) -> None:
        """The last call returned 200 but its reply was not usable: say so in its usage."""
        call.usage[-1] = call.usage[-1].model_copy(update={"outcome": outcome})
        self.metrics.reply_problem(self.model, outcome.value)

    def _refusal_verdict(self, call: _Call, reason: str) -> Verdict:
        scores = {c.name: 0.0 for c in self.policy.categories}
        verdict = self._verdict(call, scores, "the model declined to classify", reason)
        action = self.policy.refusal_action
        return verdict.model_copy(update={"action": action, "flagged": action != "allow"})

    def _verdict(
        self, call: _Call, scores: dict[str, float], rationale: str, refusal: str | None
    ) -> Verdict:
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
            model=self.model,
            policy_version=self.policy.version,
            prompt_version=self.builder.prompt.version,
            truncated=call.admitted.truncated,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            metadata=request.metadata,
            created_at=datetime.now(UTC),
        )


def _describe(exc: ValidationError) -> str:
    """A validation error in a few words the model (and a person) can act on."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "reply"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
