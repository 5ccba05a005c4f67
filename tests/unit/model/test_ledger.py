"""The usage ledger: each call one priced event, kept with the message it was made for.

Through the Classifier the ledger is exercised by every classify test; here, what only the
ledger says: a batch call's shares add up to the call and the metrics see it once, a cache hit
costs nothing and says so, a reply problem marks every message of a batch but counts once.
"""

from __future__ import annotations

import time

from consumer.model.conversation import Call
from consumer.model.cost import PriceTable
from consumer.model.ledger import Tokens, UsageLedger
from consumer.ops.metrics import Metrics
from schemas import Source, UsageOutcome, make_event_id
from tests.unit.model.test_classify import MODEL, POLICY, admitted


def ledger(metrics: Metrics) -> UsageLedger:
    return UsageLedger(
        model=MODEL,
        policy_version=POLICY.version,
        reasoning_effort=None,
        prices=PriceTable(),
        metrics=metrics,
    )


def calls(count: int) -> list[Call]:
    return [
        Call(admitted(f"text {i}"), Source(topic="in", partition=0, offset=i), [], 100)
        for i in range(count)
    ]


def model_calls(metrics: Metrics, outcome: str) -> float:
    labels = {"model": MODEL, "outcome": outcome}
    return metrics.registry.get_sample_value("modstream_model_calls_total", labels) or 0.0


def test_a_batch_calls_shares_add_up_to_the_call_and_the_metrics_count_it_once() -> None:
    metrics = Metrics()
    made = ledger(metrics)
    batch = calls(3)
    whole = Tokens(1001, 302, 100, reasoning=7)
    made.batch_recorder(batch)(UsageOutcome.OK, whole, time.perf_counter())
    events = [c.usage[0] for c in batch]
    assert sum(e.prompt_tokens for e in events) == whole.prompt
    assert sum(e.completion_tokens for e in events) == whole.completion
    assert sum(e.cached_tokens for e in events) == whole.cached
    assert sum(e.reasoning_tokens for e in events) == whole.reasoning
    assert len({e.batch_id for e in events}) == 1 and {e.batch_size for e in events} == {3}
    assert model_calls(metrics, "ok") == 1.0


def test_a_cache_hit_costs_nothing_and_says_so() -> None:
    made = ledger(Metrics())
    [one] = calls(1)
    event = made.cache_hit(one.admitted, one.source)
    assert event.outcome is UsageOutcome.CACHE_HIT
    assert (event.prompt_tokens, event.completion_tokens, event.cost_usd) == (0, 0, 0.0)
    assert event.latency_ms == 0.0 and event.attempt == 1
    assert event.event_id == make_event_id(one.source, POLICY.version, "usage", 1)


def test_a_reply_problem_marks_each_message_of_a_batch_and_counts_once() -> None:
    metrics = Metrics()
    made = ledger(metrics)
    batch = calls(2)
    made.batch_recorder(batch)(UsageOutcome.OK, Tokens(10, 10), time.perf_counter())
    made.reply_problem(batch, UsageOutcome.INVALID_REPLY)
    assert [c.usage[-1].outcome for c in batch] == [UsageOutcome.INVALID_REPLY] * 2
    labels = {"model": MODEL, "problem": "invalid_reply"}
    problems = metrics.registry.get_sample_value("modstream_model_reply_problems_total", labels)
    assert problems == 1.0
