"""Classify stage: one admitted content -> a Verdict (or a permanent failure), plus usage.

The model is asked for a strict ``json_schema`` reply (one score per policy category and a
rationale); the reply is validated with pydantic and the *policy* turns scores into ``flagged``
and ``action``. What can go wrong, and what happens:

====================================  ==========================================
transient (429, 5xx, timeout, drop,   retried with full-jitter exponential backoff
empty choices)                        honouring ``retry-after(-ms)``; never dead-lettered
                                      for an outage; a run of 5xx/timeouts opens the circuit
5xx/timeout/drop on one message       ``PersistentFailure`` dead letter after
while others succeed                  ``poison_attempts`` such failures (rule below)
401 / 403                             ``ProviderAuthError``: fatal, the service stops
404 (unknown model, wrong URL)        ``ProviderMisconfigured``: fatal, the service stops
400 / 422                             ``RequestRejected``: dead letter
400 rejecting ``response_format``     ``MODSTREAM_RESPONSE_FORMAT=auto``, before the server
before it ever accepted the mode      accepted the mode: one step down the ladder
                                      (json_schema, json_object, text), WARNING;
                                      ``FormatDowngraded``: the request is retried in the
                                      new mode (:mod:`consumer.model.request_params`)
same 400, ``misconfig_repeats``       ``ProviderMisconfigured``: fatal, the service
different messages, no 200 between    stops (the earlier ones are dead letters)
only the wrapping wrong (code fence,  salvaged locally, the reply's own values: no call
text around the JSON, unknown keys)   (:mod:`consumer.model.salvage`; usage outcome ``salvaged``)
invalid JSON or wrong values (out of  a repair request showing the error and restating the
range, missing, wrong type)           schema; a second one; then dead letter
``finish_reason == "length"``         one retry with twice the completion budget; cut again
                                      (a reasoning model that spent it all on reasoning,
                                      with no content, too), it takes a repair rung (see
                                      above), then dead letter
refusal / ``content_filter``          a verdict with the policy's ``refusal_action``
====================================  ==========================================

What a request carries besides the messages (``max_completion_tokens`` or ``max_tokens``,
``temperature``, ``reasoning_effort``, ``seed``) is
:class:`~consumer.model.request_params.RequestParams`, decided once per Classifier from the
model family table; the reply format's mode is
:class:`~consumer.model.request_params.ResponseFormats`, shared by every call of the Classifier.

The SDK's own retries are off (``max_retries=0`` in the app): tenacity here is the one retry
layer, so every retry re-acquires concurrency and token budget. Every HTTP call (chat, the
first tier's moderation call in :mod:`consumer.model.tier`, a batch in :mod:`consumer.model.batch`)
goes through :meth:`Classifier.with_retries`: the circuit breaker, the limiter and the backoff.

**Poison or outage.** In one :meth:`Classifier.with_retries` (one chat request, one first-tier
call, one batch call, with its retries), a ``ProviderUnavailable`` failure counts towards
``poison_attempts`` only if, right after it, the breaker is closed *and* has recorded a success
(any message's) since this call's previous failure; an opening of the breaker during the retries
resets the count to zero. 429s never count (rate limits are not poison). So in an outage, when
nothing succeeds or the circuit opens, nothing counts and nothing is dead-lettered, while a
message that fails alone, again and again, among messages that succeed becomes a
``PersistentFailure`` dead letter. A batch that fails so falls back to single calls, each with a
count of its own; a first-tier call that fails so leaves the decision to the chat model.

**Misconfiguration.** A 404 is fatal at once. A 400 dead-letters its message, but each one's
signature (status, code, param, provider message:
:func:`consumer.model.provider.rejection_signature`) is remembered with the message's source
offset; when the same signature has been seen for
``misconfig_repeats`` different offsets with no successful chat call in between (any 200 clears
the memory: a parameter the provider rejects lets nothing through), the service stops with
``ProviderMisconfigured``. The first ``misconfig_repeats - 1`` such messages are already in the
dead-letter topic by then (the fatal message lists them, for a replay once fixed): holding every
400 back until the pattern is clear would stall the stream on ordinary bad content instead.

**Bounded usage.** Each call's usage is one event, except failures after the first
``usage_failures_kept`` failed calls of one message: those are folded per (outcome, model,
batch size) into one event whose ``calls`` counts them and whose tokens, cost and latency are
the sums (:func:`fold_usage`); the answered witness calls made for a message (see below) are
one event too, from the first. An event's ``attempt`` is the number of the first call it stands
for, so event ids stay deterministic; :attr:`Classified.attempts` is the number of calls.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import openai
import structlog
from openai import AsyncOpenAI
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_random_exponential,
)

from consumer.errors import (
    FormatDowngraded,
    InvalidReply,
    ModstreamError,
    PermanentError,
    PersistentFailure,
    ProviderMisconfigured,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    TransientError,
)
from consumer.model.chat_client import ChatSender, Completion, SdkChat, Statics
from consumer.model.circuit import CircuitBreaker
from consumer.model.cost import PriceTable
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder
from consumer.model.provider import (
    Signature,
    failed_outcome,
    public_url,
    rejection_signature,
    retry_after_seconds,
    translate,
)
from consumer.model.request_params import (
    ReplyFormat,
    ReplyMode,
    RequestParams,
    ResponseFormats,
    choose,
    server_kind,
)
from consumer.model.salvage import MAX_REPAIRS, Reading, read, repair_request
from consumer.model.tier import decided_rationale, moderation_scores, send_moderation
from consumer.model.tokens import count_tokens
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitted
from consumer.retry import retried
from schemas import Source, TierScores, UsageEvent, UsageOutcome, Verdict, make_event_id

log = structlog.get_logger(__name__)

__all__ = [
    "Call",
    "ChatRequest",
    "Classified",
    "Classifier",
    "Recorder",
    "Tokens",
    "fold_usage",
    "retry_after_seconds",
    "translate",
]

T = TypeVar("T")

#: The longest server-requested wait we honour before retrying anyway.
_RETRY_AFTER_CAP_S = 60.0

#: The witness call's content (see ``Classifier._witness``) and how often it may be made.
_WITNESS_TEXT = "ok"
_WITNESS_INTERVAL_S = 1.0

#: A 200 with no choices: recorded as such, then retried like any transient failure.
_NO_CHOICES = UsageOutcome.PROVIDER_UNAVAILABLE

#: Named in the usage events of moderation calls, which cost nothing.
MODERATION_PRICE_SOURCE = "moderations endpoint (free)"

#: Outcomes of calls that got no usable answer: the ones folded after ``usage_failures_kept``.
FAILED_OUTCOMES = frozenset(
    {
        UsageOutcome.RATE_LIMITED,
        UsageOutcome.PROVIDER_UNAVAILABLE,
        UsageOutcome.REJECTED,
        UsageOutcome.AUTH,
    }
)

#: Request shapes whose static part is kept serialized (see ``Classifier.statics``).
_STATICS_KEPT = 64

#: Distinct 400 signatures remembered at once (the oldest is forgotten first).
_SIGNATURES_KEPT = 64


def _transient(error: BaseException) -> bool:
    return isinstance(error, TransientError)


class Tokens(NamedTuple):
    """One call's token counts."""

    prompt: int
    completion: int
    cached: int = 0
    estimated: bool = False
    #: Reasoning tokens: a part of ``completion``, as OpenAI reports them.
    reasoning: int = 0


@dataclass(frozen=True, slots=True)
class Classified:
    """What classify hands on: a verdict or a permanent failure, and one usage per call."""

    verdict: Verdict | None
    failure: PermanentError | None
    usage: list[UsageEvent]

    @property
    def attempts(self) -> int:
        """Model calls made for this message (folded failures counted one by one)."""
        return sum(u.calls for u in self.usage)


@dataclass(slots=True)
class Call:
    """One message's conversation with the model (and the first tier), across attempts."""

    admitted: Admitted
    source: Source
    messages: list[dict[str, str]]
    #: The completion budget of the next call (doubled once after a ``length`` stop).
    max_tokens: int
    usage: list[UsageEvent] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    #: The tiers that ran so far, when the policy has a first tier.
    tiers: list[TierScores] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request: what is sent, and the token estimate for the limiter.

    ``max_tokens`` is the completion budget, sent under the name the model takes;
    ``reply_format`` is shaped into the messages and ``response_format`` of the mode in force
    when the request goes out (read after the limiter slot: a downgrade while it waited
    applies to it).
    """

    messages: list[dict[str, str]]
    max_tokens: int
    reply_format: ReplyFormat
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
        poison_attempts: int = 8,
        misconfig_repeats: int = 3,
        usage_failures_kept: int = 3,
        params: RequestParams | None = None,
        formats: ResponseFormats | None = None,
        sender: ChatSender | None = None,
    ) -> None:
        """``params`` (what each request carries) default to the table's choice for ``model``
        at the client's base URL with ``max_tokens`` and ``temperature``; ``formats`` to
        ``auto``; ``sender`` (how a chat request is sent, :mod:`consumer.model.chat_client`) to the
        SDK's own path over ``client``."""
        self.client = client
        self.sender = sender or SdkChat(client)
        #: Pre-serialized static parts per request shape (see :meth:`statics`).
        self._statics: dict[tuple[str, ReplyMode, int], Statics] = {}
        self.model = model
        self.params = params or choose(
            model,
            server_kind(client.base_url),
            max_tokens=max_tokens,
            temperature=temperature,
        )
        #: The completion budget of one single call: the reply plus room for reasoning.
        self.max_tokens = self.params.completion_budget
        self.formats = formats or ResponseFormats(where=public_url(client.base_url))
        self.builder = builder
        self.policy = builder.policy
        self.limiter = limiter
        self.prices = prices
        self.breaker = breaker or CircuitBreaker()
        self.max_backoff_s = max_backoff_s
        self.on_retry = on_retry
        self.metrics = metrics or Metrics()  # a private registry when nobody scrapes
        self.overhead_tokens = count_tokens(builder.overhead_text(), model) + 16
        self.reply_format = ReplyFormat.of(self.policy.response_format)
        self.poison_attempts = poison_attempts
        self.usage_failures_kept = usage_failures_kept
        self.rejections = RejectionWatch(misconfig_repeats)
        self._jitter = wait_random_exponential(multiplier=0.25, max=max_backoff_s)
        #: At most one witness call this often (see :meth:`_witness`).
        self.witness_interval_s = _WITNESS_INTERVAL_S
        self._witness_lock = asyncio.Lock()
        self._witnessed_at = -math.inf

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
        repairs = 0
        lengthened = False
        witnessed = self.witness_recorder(call)
        while True:
            request = ChatRequest(
                call.messages,
                call.max_tokens,
                self.reply_format,
                self.overhead_tokens + call.admitted.content_tokens + call.max_tokens,
            )
            try:
                completion = await self.with_retries(
                    functools.partial(self.send_chat, request, call), witnessed
                )
            except PermanentError as exc:  # 400/422: dead letter, keep the usage
                misconfigured = self.rejections.rejected(exc, call.source, self.where)
                if misconfigured is not None:
                    raise misconfigured from exc
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
            cut = choice.finish_reason == "length"
            if cut:
                self._mark_last(call, UsageOutcome.LENGTH)
                if not lengthened:
                    lengthened = True
                    call.max_tokens *= 2
                    continue
                # Cut again with twice the budget: a rung of the repair ladder, not the end.
                reasoning = call.usage[-1].reasoning_tokens
                spent = f", {reasoning} of them on reasoning" if reasoning else ""
                problem = (
                    f"cut off at a completion budget of {call.max_tokens} tokens{spent} (twice) "
                    "before the JSON ended; keep the rationale short"
                )
                reading = Reading(None, problem=problem)
            else:
                reading = read(content, self.policy.reply_model)
            if reading.reply is None:
                gave_up = self._repair(call, content, reading, repairs, cut=cut)
                if gave_up is not None:
                    return Classified(None, gave_up, call.usage)
                repairs += 1
                continue
            reply = reading.reply
            self._used(call, reading, repairs)
            scores = self.policy.scores_from_reply(reply)
            rationale = str(getattr(reply, "rationale", ""))[:1000]
            return Classified(self.chat_verdict(call, scores, rationale), None, call.usage)

    def _repair(
        self, call: Call, content: str, reading: Reading, repairs: int, *, cut: bool
    ) -> InvalidReply | None:
        """The next rung for a reply that neither validates nor salvages (or was cut again
        after its budget was doubled): a repair request (added to ``call``'s conversation),
        or, after the last, the dead letter's reason."""
        if not cut:  # a cut reply's usage says ``length`` already
            self._mark_last(call, UsageOutcome.INVALID_REPLY)
        if repairs >= MAX_REPAIRS:
            self.metrics.reply_rung(self.model, "gave_up")
            return InvalidReply(
                f"reply invalid after {repairs} repairs: {reading.problem}", reply=content
            )
        self.metrics.reply_rung(self.model, f"repair_{repairs + 1}")
        call.messages = [
            *call.messages,
            {"role": "assistant", "content": content},
            {"role": "user", "content": repair_request(reading.problem, self.policy.reply_model)},
        ]
        return None

    def _used(self, call: Call, reading: Reading, repairs: int) -> None:
        """The reply of ``reading`` is used: its rung said in the last usage and the metrics."""
        if repairs:
            self.metrics.reply_rung(self.model, "repaired")
        if reading.salvaged is not None:
            # The verdict's values are the reply's own; the usage says it came in wrapping.
            self._mark_last(call, UsageOutcome.SALVAGED)
            self.metrics.reply_salvaged(self.model, reading.salvaged.fixes)
            log.debug(
                "reply salvaged", notes=list(reading.salvaged.notes), offset=call.source.offset
            )
        elif repairs:
            self.mark_last(call, UsageOutcome.REPAIRED)

    def chat_verdict(self, call: Call, scores: dict[str, float], rationale: str) -> Verdict:
        """The verdict from the chat model's scores (recorded as its tier when tiering)."""
        if self.policy.first_tier is not None:
            call.tiers.append(TierScores(name="chat", model=self.model, scores=scores))
        return self.verdict(call, scores, rationale, None)

    async def with_retries(
        self, send: Callable[[], Awaitable[T]], witnessed: Recorder | None = None
    ) -> T:
        """Make the HTTP call ``send`` makes, through the breaker and the retry layer.

        ``send`` takes its own limiter slot (so every retry re-acquires budget) and records
        the usage of each attempt; transient errors are retried, anything else is raised.
        ``ProviderUnavailable`` failures that look like poison (the rule in the module
        docstring) end the retries with a ``PersistentFailure`` after ``poison_attempts``.
        ``witnessed`` records the usage of the witness calls made on this call's behalf (see
        :meth:`_witness`); without it they go to the metrics only.
        """
        watch = PoisonWatch(self.breaker, self.poison_attempts)
        watch.record = witnessed
        return await retried(
            functools.partial(self._checked, send, watch),
            lambda: AsyncRetrying(
                retry=retry_if_exception(_transient),
                wait=self._wait,
                stop=stop_never,
                reraise=True,
                before_sleep=self._before_sleep,
            ),
            _transient,
        )

    async def _checked(self, send: Callable[[], Awaitable[T]], watch: PoisonWatch) -> T:
        """One attempt of :meth:`with_retries`: a failure counted towards poison (and a
        witness call made when only one can tell poison from an outage)."""
        try:
            return await self._attempt(send, watch)
        except ProviderUnavailable as exc:
            poison = watch.failed(exc)
            if poison is not None:
                log.warning("treating the message as poison", error=poison.message)
                raise poison from exc
            if watch.needs_witness():
                await self._witness(watch.record)
            raise

    async def _witness(self, record: Recorder | None) -> None:
        """Ask the provider one tiny, harmless question, to tell poison from an outage.

        A message failing while nothing else got an answer since its last failure proves
        nothing: it may be poison, or the provider may be down. With no other traffic (a quiet
        stream, or a window filled by the records held behind this very message) no answer
        would ever come, so the message could never be called poison and would stall its
        partition for good. This call is the other traffic: an answer counts as a success of
        the breaker (the message's next failure then counts towards poison), a failure as one
        more failure (towards opening the circuit). One at a time, at most once a second
        whoever asks; only while the circuit is closed. Its usage is recorded with the message
        it was made for (``record``), so every call the provider answered is paid for.
        """
        if not self.breaker.is_closed or self._witness_lock.locked():
            return
        async with self._witness_lock:
            if time.monotonic() - self._witnessed_at < self.witness_interval_s:
                return
            self._witnessed_at = time.monotonic()
            try:
                witness = functools.partial(self._witness_call, record)
                await self._attempt(witness, PoisonWatch(self.breaker, 1))
            except ModstreamError as exc:  # the breaker has counted it; nothing else to do
                log.debug("witness call failed", kind=exc.kind)

    async def _witness_call(self, record: Recorder | None) -> Completion:
        """The witness request (see :meth:`_witness`); its usage goes to ``record``, or to the
        metrics only without one."""
        messages = self.builder.messages(_WITNESS_TEXT, None)
        estimate = self.overhead_tokens + self.max_tokens + 8
        request = ChatRequest(messages, self.max_tokens, self.reply_format, estimate)

        def to_metrics(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            self.metrics.model_call(
                UsageEvent(
                    event_id="witness",
                    source=Source(topic="", partition=0, offset=0),
                    content_id=None,
                    model=self.model,
                    attempt=1,
                    outcome=outcome,
                    prompt_tokens=tokens.prompt,
                    completion_tokens=tokens.completion,
                    reasoning_tokens=tokens.reasoning,
                    reasoning_effort=self.params.reasoning_effort,
                    cost_usd=self.prices.cost(
                        self.model, tokens.prompt, tokens.completion, 0, tokens.reasoning
                    ),
                    latency_ms=(time.perf_counter() - started) * 1000,
                    created_at=datetime.now(UTC),
                )
            )

        return await self.send_chat(request, record or to_metrics)

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

    async def _attempt(self, send: Callable[[], Awaitable[T]], watch: PoisonWatch) -> T:
        """One HTTP call, gated by the circuit breaker (``send`` takes the limiter slot)."""
        deferred = watch.probe_failed
        probe = await self.breaker.admit(defer=deferred)
        watch.probe_failed = False
        if probe and deferred:
            # Nothing fresh came in to probe with (a quiet stream, or a window full of the
            # records held behind this one): probe with the witness call instead, so this
            # message's own failures cannot keep the circuit open for good.
            try:
                await self._witness_call(watch.record)
            except ProviderUnavailable:
                self.breaker.failure(self._witness_lock)  # the witness is a caller of its own
                watch.probe_failed = True
                raise
            except ModstreamError:
                self.breaker.end_probe()
                raise
            self.breaker.success()  # closed again: this message's call goes as any other
            probe = False
        try:
            completion = await send()
        except ProviderUnavailable:
            self.breaker.failure(watch)
            watch.probe_failed = probe  # next time, let another message probe first
            raise
        finally:
            if probe:
                self.breaker.end_probe()
        self.breaker.success()
        await self.limiter.concurrency.on_success()
        return completion

    async def send_chat(self, request: ChatRequest, record: Call | Recorder) -> Completion:
        """One chat completion; its usage goes to ``record`` (a call's list, or a recorder)."""
        if isinstance(record, Call):
            record = self.recorder(record)
        async with self.limiter.slot(request.estimate) as permit:
            mode = self.formats.mode  # after the wait for a slot: a downgrade meanwhile counts
            messages = request.reply_format.messages(request.messages, mode)
            statics = self.statics(request, mode)
            started = time.perf_counter()
            try:
                completion, headers = await self.sender.create(messages, statics)
                self.limiter.observe_headers(headers)
            except (openai.OpenAIError, ValueError) as exc:
                # ValueError: a 200 whose body is not a chat completion (a broken proxy).
                permit.settle(0)
                error = translate(exc, model=self.model, base_url=self.client.base_url)
                record(failed_outcome(error), Tokens(0, 0), started)
                if isinstance(error, RequestRejected) and self.formats.downgrade(mode, exc):
                    raise FormatDowngraded(error.message) from exc  # again, in the new mode
                raise error from exc
        self.rejections.success()  # the provider accepted a chat request
        self.formats.accepted(mode)
        usage = completion.usage
        if (
            usage is not None
            and usage.prompt_tokens is not None
            and usage.completion_tokens is not None
        ):
            details = usage.prompt_tokens_details
            cached = (details.cached_tokens if details else None) or 0
            spent = usage.completion_tokens_details
            reasoning = (spent.reasoning_tokens if spent else None) or 0
            counts = Tokens(
                usage.prompt_tokens, usage.completion_tokens, cached, reasoning=max(reasoning, 0)
            )
        else:  # vLLM/Ollama may omit usage: count locally and say so
            text = "".join(m["content"] for m in messages)  # as sent, schema note and all
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

    def statics(self, request: ChatRequest, mode: ReplyMode) -> Statics:
        """The static part of ``request`` in ``mode``: built once per shape (reply schema,
        mode, completion budget), so a message costs only the serialization of its own
        messages."""
        key = (request.reply_format.instructions, mode, request.max_tokens)
        statics = self._statics.get(key)
        if statics is None:
            if len(self._statics) >= _STATICS_KEPT:  # budgets vary only with a batch's size
                self._statics.clear()
            # The budget's name, temperature, reasoning_effort, seed: from the family table.
            kwargs: dict[str, Any] = {"model": self.model, **self.params.kwargs(request.max_tokens)}
            response_format = request.reply_format.response_format(mode)
            if response_format is not None:  # text mode sends none at all
                kwargs["response_format"] = response_format
            statics = self._statics[key] = Statics.of(kwargs)
        return statics

    def recorder(self, call: Call) -> Recorder:
        """Records each chat call's usage in ``call`` (and the metrics)."""

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            self.record(
                call, self.usage_event(call, outcome, tokens, started, cost=self.cost(tokens))
            )

        return record

    def witness_recorder(self, call: Call) -> Recorder:
        """Records the witness calls made on ``call``'s behalf: paid for with its usage. A
        failed one is folded like any failure; the answered ones all go into one event (a
        poison message under a slow provider may see a witness call a second for many
        seconds; its usage must stay bounded)."""
        answered: list[int] = []  # where that event is in ``call.usage``, once there is one

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            event = self.usage_event(call, outcome, tokens, started, cost=self.cost(tokens))
            if outcome in FAILED_OUTCOMES:
                self.record(call, event)
                return
            self.metrics.model_call(event)
            if answered:
                call.usage[answered[0]] = _merged(call.usage[answered[0]], event)
            else:
                answered.append(len(call.usage))
                call.usage.append(event)

        return record

    def cost(self, tokens: Tokens) -> float | None:
        """USD of one chat call's ``tokens`` (None: the model has no price)."""
        return self.prices.cost(
            self.model, tokens.prompt, tokens.completion, tokens.cached, tokens.reasoning
        )

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
        """The usage of ``call``'s next attempt (``batch``: the batch id and size, if any).

        ``model`` names another model than the chat model (the first tier's)."""
        attempt = sum(u.calls for u in call.usage) + 1
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
            reasoning_tokens=tokens.reasoning,
            reasoning_effort=self.params.reasoning_effort if model is None else None,
            estimated=tokens.estimated,
            cost_usd=cost,
            price_source=price_source or self.prices.source_for(model or self.model),
            latency_ms=(time.perf_counter() - started) * 1000,
            created_at=datetime.now(UTC),
            batch_id=batch[0] if batch else None,
            batch_size=batch[1] if batch else 1,
        )

    def record(self, call: Call, usage: UsageEvent, *, metrics: bool = True) -> None:
        """One model call done: its usage goes with the message (and to the metrics).

        Failures past the first ``usage_failures_kept`` are folded (see :func:`fold_usage`);
        the metrics see every call.
        """
        fold_usage(call.usage, usage, self.usage_failures_kept)
        if metrics:
            self.metrics.model_call(usage)

    @property
    def where(self) -> str:
        """The model and the provider's URL (no credentials), for messages."""
        return f"model {self.model!r} at {public_url(self.client.base_url)}"

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


def fold_usage(usage: list[UsageEvent], event: UsageEvent, kept: int) -> None:
    """Add one call's ``event`` to a message's ``usage``: appended, or folded.

    The first ``kept`` failed calls (:data:`FAILED_OUTCOMES`) stay events of their own; a later
    failure joins the one event after them with its outcome, model and batch size (created by
    the first such failure, whose ``attempt`` and ``event_id`` it keeps): ``calls`` grows by
    one, tokens, cost and latency are added. So a message carries at most ``kept`` plus one per
    distinct kind of failure of failure events, and every sum over its usage is unchanged.
    """
    if event.outcome in FAILED_OUTCOMES:
        failed = [i for i, u in enumerate(usage) if u.outcome in FAILED_OUTCOMES]
        if len(failed) >= kept:
            for i in failed[kept:]:
                folded = usage[i]
                if (folded.outcome, folded.model, folded.batch_size) == (
                    event.outcome,
                    event.model,
                    event.batch_size,
                ):
                    usage[i] = _merged(folded, event)
                    return
    usage.append(event)


def _merged(folded: UsageEvent, event: UsageEvent) -> UsageEvent:
    cost = (
        None
        if folded.cost_usd is None or event.cost_usd is None
        else folded.cost_usd + event.cost_usd
    )
    return folded.model_copy(
        update={
            "calls": folded.calls + event.calls,
            "prompt_tokens": folded.prompt_tokens + event.prompt_tokens,
            "completion_tokens": folded.completion_tokens + event.completion_tokens,
            "cached_tokens": folded.cached_tokens + event.cached_tokens,
            "reasoning_tokens": folded.reasoning_tokens + event.reasoning_tokens,
            "cost_usd": cost,
            "latency_ms": folded.latency_ms + event.latency_ms,
            "estimated": folded.estimated or event.estimated,
        }
    )


class PoisonWatch:
    """One call's transient failures, counted towards poison only while others succeed.

    A ``ProviderUnavailable`` failure counts when, right after it, the breaker is closed and
    has recorded a success since this call's previous failure (or since the watch began); an
    opening of the breaker since the previous failure resets the count.
    """

    def __init__(self, breaker: CircuitBreaker, limit: int) -> None:
        self.breaker = breaker
        self.limit = limit
        self.count = 0
        #: This call's last attempt was a half-open probe that failed.
        self.probe_failed = False
        self._successes = breaker.successes
        self._openings = breaker.openings
        #: Failures in a row that could not count (nobody else got an answer between them).
        self.uncounted = 0
        #: No other traffic answers: witness calls tell poison from an outage.
        self.alone = False
        #: Where the usage of witness calls made for this call goes (None: metrics only).
        self.record: Recorder | None = None

    def needs_witness(self) -> bool:
        """As many failures in a row as make poison, yet none could count: nothing else got an
        answer between them, with the circuit closed. Only other traffic (or a witness call)
        can tell poison from an outage now."""
        if self.breaker.is_closed and (self.alone or self.uncounted >= self.limit):
            self.alone = True  # from now on, a witness after every failure
            return True
        return False

    def failed(self, error: ProviderUnavailable) -> PersistentFailure | None:
        """Count ``error``; the dead letter's reason once the count reaches the limit."""
        breaker = self.breaker
        self.uncounted += 1
        if breaker.openings != self._openings:
            self.count = 0  # an outage began during the retries: start again
            self._openings = breaker.openings
        elif breaker.is_closed and breaker.successes > self._successes:
            self.count += 1
            self.uncounted = 0
        self._successes = breaker.successes
        if self.count < self.limit:
            return None
        return PersistentFailure(
            f"{self.count} attempts failed with {error.kind} while other messages succeeded: "
            f"treating this message as poison; last error: {error.message}"
        )


class RejectionWatch:
    """The same 400 for many different messages, with no chat success between: misconfigured."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self._seen: dict[Signature, dict[tuple[str, int, int], None]] = {}

    def success(self) -> None:
        """A chat request was accepted: the rejections so far were about their messages."""
        self._seen.clear()

    def rejected(
        self, error: PermanentError, source: Source, where: str
    ) -> ProviderMisconfigured | None:
        """Remember ``error`` for ``source``; the fatal error once the pattern is clear."""
        signature = rejection_signature(error)
        if signature is None:
            return None
        offsets = self._seen.pop(signature, {})
        self._seen[signature] = offsets  # most recent last
        offsets[(source.topic, source.partition, source.offset)] = None
        while len(self._seen) > _SIGNATURES_KEPT:
            del self._seen[next(iter(self._seen))]
        if len(offsets) < self.repeats:
            return None
        earlier = [f"{t}/{p}@{o}" for t, p, o in list(offsets)[:-1]]
        dead = (
            f" The earlier ones went to the dead-letter topic ({', '.join(earlier)}): replay "
            "them once the configuration is fixed."
            if earlier
            else ""
        )
        return ProviderMisconfigured(
            f"the provider rejected {len(offsets)} different messages with the same error: "
            f"{error.message} (code={signature.code}, param={signature.param}). This is a "
            f"configuration problem (the model parameters sent to {where}: see the parameter "
            "table in the README's Providers section; MODSTREAM_MODEL_FAMILY, "
            "MODSTREAM_TOKEN_LIMIT_PARAM, MODSTREAM_REASONING_EFFORT, MODSTREAM_MAX_TOKENS, "
            "MODSTREAM_TEMPERATURE, MODSTREAM_RESPONSE_FORMAT), not bad content." + dead
        )
