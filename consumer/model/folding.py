"""Bounded usage: a message's failed calls past the first few folded into one event per kind.

A message that fails again and again (an outage it waits out, a rate limit, a poison message
counted towards ``poison_attempts``) would otherwise carry one usage event per attempt, without
bound. Each call's usage is one event, except failures after the first ``usage_failures_kept``
failed calls of one message: those are folded per (outcome, model, batch size) into one event
whose ``calls`` counts them and whose tokens, cost and latency are the sums (:func:`fold_usage`).
An event's ``attempt`` is the number of the first call it stands for, so event ids stay
deterministic; :attr:`consumer.model.classify.Classified.attempts` is the number of calls. Pure
functions over the events, apart from the ledger (:mod:`consumer.model.ledger`) that uses them,
so the rule can be checked on its own (``tests/unit/model/test_hardening.py``).
"""

from __future__ import annotations

from schemas import UsageEvent, UsageOutcome

__all__ = ["FAILED_OUTCOMES", "fold_usage", "merged"]

#: Outcomes of calls that got no usable answer: the ones folded after ``usage_failures_kept``.
FAILED_OUTCOMES = frozenset(
    {
        UsageOutcome.RATE_LIMITED,
        UsageOutcome.PROVIDER_UNAVAILABLE,
        UsageOutcome.REJECTED,
        UsageOutcome.AUTH,
    }
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
                    usage[i] = merged(folded, event)
                    return
    usage.append(event)


def merged(folded: UsageEvent, event: UsageEvent) -> UsageEvent:
    """``folded`` with ``event`` added: one more call, and the sums of tokens, cost, latency."""
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
