"""Classify stage: one admitted content -> a Verdict (or a permanent failure), plus usage.

The model is asked for a strict ``json_schema`` reply (one score per policy category and a
rationale); the reply is validated with pydantic and the *policy* turns scores into ``flagged``
and ``action``. What can go wrong, and what happens:

====================================  ==========================================
transient (429, 5xx, timeout, drop,   retried with full-jitter exponential backoff
empty choices)                        honouring ``retry-after(-ms)``; never dead-lettered
                                      for an outage; a run of 5xx/timeouts opens the circuit
                                      (:mod:`consumer.model.calls`)
5xx/timeout/drop on one message       ``PersistentFailure`` dead letter after
while others succeed                  ``poison_attempts`` such failures
                                      (:mod:`consumer.model.watches`)
401 / 403                             ``ProviderAuthError``: fatal, the service stops
404 (unknown model, wrong URL)        ``ProviderMisconfigured``: fatal, the service stops
400 / 422                             ``RequestRejected``: dead letter
400 rejecting ``response_format``     ``MODSTREAM_RESPONSE_FORMAT=auto``, before the server
before it ever accepted the mode      accepted the mode: one step down the ladder
                                      (json_schema, json_object, text), WARNING;
                                      ``FormatDowngraded``: the request is retried in the
                                      new mode (:mod:`consumer.model.reply_format`)
same 400, ``misconfig_repeats``       ``ProviderMisconfigured``: fatal, the service
different messages, no 200 between    stops (the earlier ones are dead letters)
only the wrapping wrong (code fence,  salvaged locally, the reply's own values: no call
text around the JSON, unknown keys)   (:mod:`consumer.model.salvage`; usage outcome ``salvaged``)
invalid JSON or wrong values (out of  a repair request showing the error and restating the
range, missing, wrong type)           schema; a second one; then dead letter
                                      (:mod:`consumer.model.ladder`)
``finish_reason == "length"``         one retry with twice the completion budget; cut again
                                      (a reasoning model that spent it all on reasoning,
                                      with no content, too), it takes a repair rung (see
                                      above), then dead letter
refusal / ``content_filter``          a verdict with the policy's ``refusal_action``
====================================  ==========================================

The :class:`Classifier` is the conversation: the first tier, then the chat model, then the
repair ladder, until a verdict or a permanent failure. Its parts, each one job, are built here
from one set of arguments and public for batching and replay: the model calls with retries and
the breaker (``calls``, :class:`~consumer.model.calls.ModelCalls`), the usage ledger
(``ledger``, :class:`~consumer.model.ledger.UsageLedger`) and the verdict factory
(``verdicts``, :class:`~consumer.model.verdicts.VerdictFactory`). What a request carries
besides the messages is :class:`~consumer.model.request_params.RequestParams`, decided once
from the model family table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from openai import AsyncOpenAI

from consumer.errors import InvalidReply, ModstreamError, PermanentError, PersistentFailure
from consumer.model.calls import ModelCalls
from consumer.model.chat_call import ChatCall, ChatRequest
from consumer.model.chat_client import ChatSender, Completion, SdkChat
from consumer.model.circuit import CircuitBreaker
from consumer.model.conversation import Call
from consumer.model.cost import PriceTable
from consumer.model.image_parts import moderation_input
from consumer.model.ladder import MAX_REPAIRS, Reading, read, repair_request
from consumer.model.ledger import Tokens, UsageLedger
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder
from consumer.model.provider import failed_outcome, public_url
from consumer.model.reply_format import ReplyFormat, ResponseFormats
from consumer.model.request_params import RequestParams
from consumer.model.tier import applied_inputs, moderation_scores, send_moderation
from consumer.model.tokens import count_tokens
from consumer.model.verdicts import Triage, VerdictFactory, triage
from consumer.model.watches import RejectionWatch
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitted
from schemas import Source, TierScores, UsageEvent, UsageOutcome, Verdict

log = structlog.get_logger(__name__)

__all__ = ["Classified", "Classifier"]

#: The witness call's content (see :mod:`consumer.model.calls`).
_WITNESS_TEXT = "ok"


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


class Classifier:
    """Asks the model for scores and lets the policy decide."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str,
        params: RequestParams,
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
        formats: ResponseFormats | None = None,
        sender: ChatSender | None = None,
    ) -> None:
        """``params``: what each request carries (:func:`consumer.model.request_params.choose`);
        ``formats``: the reply format's mode, default ``auto``; ``sender``: how a chat request
        is sent (:mod:`consumer.model.chat_client`), default the SDK's own path over
        ``client``."""
        self.client = client
        self.model = model
        self.params = params
        #: The completion budget of one single call: the reply plus room for reasoning.
        self.max_tokens = params.completion_budget
        self.builder = builder
        self.policy = builder.policy
        self.metrics = metrics or Metrics()  # a private registry when nobody scrapes
        self.overhead_tokens = count_tokens(builder.overhead_text(), model) + 16
        self.reply_format = ReplyFormat.of(self.policy.response_format)
        self.formats = formats or ResponseFormats(where=public_url(client.base_url))
        self.rejections = RejectionWatch(misconfig_repeats)
        self.ledger = UsageLedger(
            model=model,
            policy_version=self.policy.version,
            reasoning_effort=params.reasoning_effort,
            prices=prices,
            metrics=self.metrics,
            failures_kept=usage_failures_kept,
        )
        self.verdicts = VerdictFactory(self.policy, builder.prompt.version, model)
        chat = ChatCall(
            client,
            sender or SdkChat(client),
            model=model,
            params=params,
            formats=self.formats,
            limiter=limiter,
            metrics=self.metrics,
            on_accepted=self.rejections.success,  # any 200 clears the memory of 400s
        )
        witness = ChatRequest(
            builder.messages(_WITNESS_TEXT, None),
            self.max_tokens,
            self.reply_format,
            self.overhead_tokens + self.max_tokens + 8,
        )
        self.calls = ModelCalls(
            chat,
            breaker=breaker or CircuitBreaker(),
            limiter=limiter,
            witness=witness,
            unattributed=self.ledger.unattributed(),
            poison_attempts=poison_attempts,
            max_backoff_s=max_backoff_s,
            on_retry=on_retry,
        )

    @property
    def breaker(self) -> CircuitBreaker:
        """The provider's circuit breaker (the pipeline fetches only while it admits intake)."""
        return self.calls.breaker

    @property
    def limiter(self) -> Limiter:
        """Concurrency, requests and tokens per minute, shared by every call."""
        return self.calls.limiter

    @property
    def where(self) -> str:
        """The model and the provider's URL (no credentials), for messages."""
        return f"model {self.model!r} at {public_url(self.client.base_url)}"

    async def classify(self, admitted: Admitted, source: Source) -> Classified:
        """Run the conversation to a verdict or a permanent failure; transient errors retry.

        With a first tier in the policy, the moderations endpoint goes first and may decide.
        """
        call = self.new_call(admitted, source)
        decided = await self.first_tier(call)
        return decided if decided is not None else await self.chat(call)

    def new_call(self, admitted: Admitted, source: Source) -> Call:
        """A fresh conversation for one admitted message."""
        messages = self.builder.messages(admitted.text, admitted.context, admitted.images)
        return Call(admitted, source, messages, self.max_tokens)

    async def first_tier(self, call: Call) -> Classified | None:
        """The first tier's verdict when it decides; ``None`` when the chat model must be asked
        (the policy has no first tier, a score fell in the uncertain band, or the moderations
        endpoint rejected the request: the chat model then decides alone)."""
        tier = self.policy.first_tier
        if tier is None:
            return None
        record = self.ledger.moderation_recorder(call, tier.model)
        admitted = call.admitted
        send = functools.partial(
            send_moderation,
            self.client,
            self.limiter,
            tier.model,
            moderation_input(admitted.text, admitted.images),
            record,
        )
        try:
            result = await self.calls.with_retries(send)
        except PermanentError as exc:
            log.warning("first tier rejected the request; asking the chat model", error=str(exc))
            return None
        scores = moderation_scores(result, self.policy)
        call.tiers.append(TierScores(name="moderation", model=tier.model, scores=scores))
        call.category_inputs = applied_inputs(result, self.policy, len(admitted.images))
        if not tier.decides(scores):
            return None
        return Classified(self.verdicts.first_tier(call, tier, scores), None, call.usage)

    def request(self, call: Call) -> ChatRequest:
        """The chat request for ``call``'s conversation as it stands (its messages, budget)."""
        return ChatRequest(
            call.messages,
            call.max_tokens,
            self.reply_format,
            self.overhead_tokens + call.admitted.content_tokens + call.max_tokens,
        )

    def request_body(self, call: Call) -> dict[str, Any]:
        """The JSON body of ``call``'s first chat request, as the chat call would send it
        (model, messages, ``response_format``, the budget's name, reasoning parameters): what a
        Batch API line carries (:mod:`consumer.tools.batch_requests`)."""
        return self.calls.chat_call.body(self.request(call))

    def read_reply(
        self,
        call: Call,
        completion: Completion | None,
        tokens: Tokens,
        error: ModstreamError | None,
    ) -> Classified:
        """One reply that came some other way (a Batch API output line) read as a chat call's
        is, with no further call: recorded in the usage ledger, then a refusal's verdict, or
        the ladder's local rungs (valid, salvaged). A reply cut at the budget, one the ladder
        cannot read, or ``error`` (an error line; ``completion`` None) is the message's
        permanent failure: a batch has no retry with a longer budget and no repair call."""
        record = self.ledger.recorder(call)
        started = call.started
        if error is not None or completion is None or not completion.choices:
            error = error or InvalidReply("the batch answered with no choices")
            record(failed_outcome(error), Tokens(0, 0), started)
            # A transient error is final too: the batch ran the line once; a new replay retries.
            failure = (
                error
                if isinstance(error, PermanentError)
                else PersistentFailure(
                    f"{error.kind}: {error.message} (a batch line is not retried)"
                )
            )
            return Classified(None, failure, call.usage)
        record(UsageOutcome.OK, tokens, started)
        seen = triage(completion.choices[0])
        if (refused := self._refused(call, seen)) is not None:
            return refused
        if seen.cut:
            self.ledger.reply_problem([call], UsageOutcome.LENGTH)
            problem = (
                f"cut off at a completion budget of {call.max_tokens} tokens (batch: no retry)"
            )
            return Classified(None, InvalidReply(problem, reply=seen.content), call.usage)
        reading = read(seen.content, self.policy.reply_model)
        if reading.reply is None:
            self.ledger.reply_problem([call], UsageOutcome.INVALID_REPLY)
            self.metrics.reply_rung(self.model, "gave_up")
            failure = InvalidReply(f"reply invalid (batch: no repair): {reading.problem}")
            return Classified(None, failure, call.usage)
        self._used(call, reading, 0)
        return Classified(self.verdicts.from_reply(call, reading.reply), None, call.usage)

    def _refused(self, call: Call, seen: Triage) -> Classified | None:
        """A refused or filtered reply as its verdict (counted in the ledger); None otherwise."""
        if seen.declined is None:
            return None
        outcome, reason = seen.declined
        self.ledger.reply_problem([call], outcome)
        return Classified(self.verdicts.refused(call, reason), None, call.usage)

    async def chat(self, call: Call) -> Classified:
        """Ask the chat model (repairing, lengthening) until a verdict or a permanent failure."""
        repairs = 0
        lengthened = False
        record = self.ledger.recorder(call)
        witnessed = self.ledger.witness_recorder(call)
        while True:
            request = self.request(call)
            try:
                completion = await self.calls.chat(request, record, witnessed)
            except PermanentError as exc:  # 400/422: dead letter, keep the usage
                misconfigured = self.rejections.rejected(exc, call.source, self.where)
                if misconfigured is not None:
                    raise misconfigured from exc
                return Classified(None, exc, call.usage)
            seen = triage(completion.choices[0])
            if (refused := self._refused(call, seen)) is not None:
                return refused
            if seen.cut:
                self.ledger.reply_problem([call], UsageOutcome.LENGTH)
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
                reading = read(seen.content, self.policy.reply_model)
            if reading.reply is None:
                gave_up = self._repair(call, seen.content, reading, repairs, cut=seen.cut)
                if gave_up is not None:
                    return Classified(None, gave_up, call.usage)
                repairs += 1
                continue
            self._used(call, reading, repairs)
            return Classified(self.verdicts.from_reply(call, reading.reply), None, call.usage)

    def _repair(
        self, call: Call, content: str, reading: Reading, repairs: int, *, cut: bool
    ) -> InvalidReply | None:
        """The next rung for a reply that neither validates nor salvages (or was cut again
        after its budget was doubled): a repair request (added to ``call``'s conversation),
        or, after the last, the dead letter's reason."""
        if not cut:  # a cut reply's usage says ``length`` already
            self.ledger.reply_problem([call], UsageOutcome.INVALID_REPLY)
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
            self.ledger.reply_problem([call], UsageOutcome.SALVAGED)
            self.metrics.reply_salvaged(self.model, reading.salvaged.fixes)
            log.debug(
                "reply salvaged", notes=list(reading.salvaged.notes), offset=call.source.offset
            )
        elif repairs:
            self.ledger.mark_last(call, UsageOutcome.REPAIRED)
