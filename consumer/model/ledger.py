"""The usage ledger: every model call is one usage event, priced, paid for by its message.

Each HTTP call to the provider (a chat call, a first-tier moderation call, a batch call, a
witness call) is recorded once it ends, answered or not: its tokens (the provider's counts, or
local ones marked ``estimated`` when it reports none), its cost from the price table, its
latency and its outcome. The event goes into the :class:`~consumer.model.conversation.Call` it
was made for, and so out with that message's verdict or dead letter, and to the metrics.

**Bounded usage.** Each call's usage is one event, except failures after the first
``usage_failures_kept`` failed calls of one message, which are folded
(:mod:`consumer.model.folding`); the answered witness calls made for a message are one event
too, from the first.

**Batches.** The provider reports one batch call's tokens. Each message of the batch gets one
event with an even share of them (:func:`split_tokens`), all with the same ``batch_id`` and
``batch_size``: the events of one ``batch_id`` add up exactly to the provider's counts. The
metrics count the call once, with its whole tokens.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from consumer.model.conversation import Call
from consumer.model.cost import PriceTable
from consumer.model.folding import FAILED_OUTCOMES, fold_usage, merged
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitted
from schemas import Source, UsageEvent, UsageOutcome, make_event_id

__all__ = [
    "MODERATION_PRICE_SOURCE",
    "ModerationRecorder",
    "Recorder",
    "Tokens",
    "UsageLedger",
    "split_tokens",
]

#: Named in the usage events of moderation calls, which cost nothing.
MODERATION_PRICE_SOURCE = "moderations endpoint (free)"


class Tokens(NamedTuple):
    """One call's token counts."""

    prompt: int
    completion: int
    cached: int = 0
    estimated: bool = False
    #: Reasoning tokens: a part of ``completion``, as OpenAI reports them.
    reasoning: int = 0


#: Records one chat call's usage: (outcome, tokens, perf_counter when it started).
Recorder = Callable[[UsageOutcome, Tokens, float], None]

#: Records one moderation call's usage: (outcome, perf_counter when it started).
ModerationRecorder = Callable[[UsageOutcome, float], None]


class UsageLedger:
    """Turns each model call into a usage event and keeps it with its message."""

    def __init__(
        self,
        *,
        model: str,
        policy_version: str,
        reasoning_effort: str | None,
        prices: PriceTable,
        metrics: Metrics,
        failures_kept: int = 3,
    ) -> None:
        """``model``: the chat model (a call to another one names it); ``failures_kept``: the
        failed calls of one message kept as events of their own (:mod:`consumer.model.folding`).
        """
        self.model = model
        self.policy_version = policy_version
        self.reasoning_effort = reasoning_effort
        self.prices = prices
        self.metrics = metrics
        self.failures_kept = failures_kept

    def cost(self, tokens: Tokens) -> float | None:
        """USD of one chat call's ``tokens`` (None: the model has no price)."""
        return self.prices.cost(
            self.model, tokens.prompt, tokens.completion, tokens.cached, tokens.reasoning
        )

    def event(
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
            event_id=make_event_id(call.source, self.policy_version, "usage", attempt),
            source=call.source,
            content_id=call.admitted.request.id,
            model=model or self.model,
            attempt=attempt,
            outcome=outcome,
            prompt_tokens=tokens.prompt,
            completion_tokens=tokens.completion,
            cached_tokens=tokens.cached,
            reasoning_tokens=tokens.reasoning,
            reasoning_effort=self.reasoning_effort if model is None else None,
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

        Failures past the first ``failures_kept`` are folded (:mod:`consumer.model.folding`);
        the metrics see every call.
        """
        fold_usage(call.usage, usage, self.failures_kept)
        if metrics:
            self.metrics.model_call(usage)

    def recorder(self, call: Call) -> Recorder:
        """Records each chat call's usage in ``call`` (and the metrics)."""

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            self.record(call, self.event(call, outcome, tokens, started, cost=self.cost(tokens)))

        return record

    def witness_recorder(self, call: Call) -> Recorder:
        """Records the witness calls made on ``call``'s behalf: paid for with its usage. A
        failed one is folded like any failure; the answered ones all go into one event (a
        poison message under a slow provider may see a witness call a second for many
        seconds; its usage must stay bounded)."""
        answered: list[int] = []  # where that event is in ``call.usage``, once there is one

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            event = self.event(call, outcome, tokens, started, cost=self.cost(tokens))
            if outcome in FAILED_OUTCOMES:
                self.record(call, event)
                return
            self.metrics.model_call(event)
            if answered:
                call.usage[answered[0]] = merged(call.usage[answered[0]], event)
            else:
                answered.append(len(call.usage))
                call.usage.append(event)

        return record

    def unattributed(self) -> Recorder:
        """Records a call made for no message (a witness call probing the breaker): the
        metrics only."""

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
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
                    reasoning_effort=self.reasoning_effort,
                    cost_usd=self.cost(tokens._replace(cached=0)),
                    latency_ms=(time.perf_counter() - started) * 1000,
                    created_at=datetime.now(UTC),
                )
            )

        return record

    def moderation_recorder(self, call: Call, model: str) -> ModerationRecorder:
        """Records ``call``'s first-tier calls to the moderation ``model``: no tokens (the
        endpoint reports none), and free."""

        def record(outcome: UsageOutcome, started: float) -> None:
            usage = self.event(
                call,
                outcome,
                Tokens(0, 0),
                started,
                cost=0.0,
                model=model,
                price_source=MODERATION_PRICE_SOURCE,
            )
            self.record(call, usage)

        return record

    def batch_recorder(self, calls: Sequence[Call]) -> Recorder:
        """Records one batch call for all of ``calls``: each gets its share of the tokens and
        the cost; the metrics count the call once, whole."""
        count = len(calls)

        def record(outcome: UsageOutcome, tokens: Tokens, started: float) -> None:
            batch = (uuid.uuid4().hex, count)
            events = []
            for call, share in zip(calls, split_tokens(tokens, count), strict=True):
                usage = self.event(
                    call, outcome, share, started, cost=self.cost(share), batch=batch
                )
                self.record(call, usage, metrics=False)  # a failure may fold into an earlier
                events.append(usage)
            whole = {
                "prompt_tokens": tokens.prompt,
                "completion_tokens": tokens.completion,
                "cached_tokens": tokens.cached,
                "reasoning_tokens": tokens.reasoning,
                "cost_usd": self.cost(tokens),
            }
            self.metrics.model_call(events[0].model_copy(update=whole))

        return record

    def cache_hit(self, admitted: Admitted, source: Source) -> UsageEvent:
        """The usage of a verdict answered from a cache: no call made, nothing spent."""
        return UsageEvent(
            event_id=make_event_id(source, self.policy_version, "usage", 1),
            source=source,
            content_id=admitted.request.id,
            model=self.model,
            attempt=1,
            outcome=UsageOutcome.CACHE_HIT,
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            price_source=self.prices.source,
            latency_ms=0.0,
            created_at=datetime.now(UTC),
        )

    @staticmethod
    def mark_last(call: Call, outcome: UsageOutcome) -> None:
        """Change the outcome of ``call``'s last usage event (no metrics)."""
        call.usage[-1] = call.usage[-1].model_copy(update={"outcome": outcome})

    def reply_problem(self, calls: Sequence[Call], outcome: UsageOutcome) -> None:
        """The last call (one for all of ``calls`` when they were a batch) returned 200, but
        its reply was not usable as it came: its usage says so, and the metrics (once)."""
        for call in calls:
            self.mark_last(call, outcome)
        self.metrics.reply_problem(self.model, outcome.value)


def split_tokens(tokens: Tokens, count: int) -> list[Tokens]:
    """``tokens`` in ``count`` even shares that add up exactly (the first ones get the rest)."""

    def shares(total: int) -> list[int]:
        whole, rest = divmod(total, count)
        return [whole + (1 if i < rest else 0) for i in range(count)]

    return [
        Tokens(prompt, completion, cached, tokens.estimated, reasoning)
        for prompt, completion, cached, reasoning in zip(
            shares(tokens.prompt),
            shares(tokens.completion),
            shares(tokens.cached),
            shares(tokens.reasoning),
            strict=True,
        )
    ]
