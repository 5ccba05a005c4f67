"""metrics: each method moves exactly its series, registries are private, the docs are complete,
and the stages (classifier, circuit breaker, pipeline lag) report through them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx2
import prometheus_client
import pytest
from aiokafka import TopicPartition
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

import consumer.ops.metrics
from consumer.errors import ProviderUnavailable, RateLimited
from consumer.model.circuit import CircuitBreaker, CircuitState
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.limit import Limiter
from consumer.model.request_params import choose, server_kind
from consumer.ops.metrics import Metrics
from consumer.pipeline.delivery import AtLeastOnce
from consumer.pipeline.runner import Pipeline
from consumer.settings import Settings
from schemas import UsageEvent, UsageOutcome
from tests.unit.model.test_classify import (
    BUILDER,
    MODEL,
    SOURCE,
    Provider,
    admitted,
    ok,
    reply_text,
    status,
)

pytestmark = pytest.mark.timeout(60)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def usage(outcome: UsageOutcome = UsageOutcome.OK, **fields: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "event_id": "e",
        "source": SOURCE,
        "content_id": "c",
        "model": MODEL,
        "attempt": 1,
        "outcome": outcome,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cached_tokens": 64,
        "cost_usd": 0.0002,
        "latency_ms": 250.0,
        "created_at": datetime.now(UTC),
    }
    return UsageEvent(**(base | fields))


def exported_names(metrics: Metrics) -> set[str]:
    """Every metric name as a scraper sees it (counters with _total, info with _info)."""
    suffix = {"counter": "_total", "info": "_info"}
    return {m.name + suffix.get(m.type, "") for m in metrics.registry.collect()}


# ---- the Metrics object on its own ---------------------------------------------------------


def test_registries_are_private_and_independent() -> None:
    first, second = Metrics(), Metrics()
    first.verdict()
    assert value(first, "modstream_messages_processed_total", outcome="verdict") == 1
    assert value(second, "modstream_messages_processed_total", outcome="verdict") == 0
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "modstream_" not in default, "nothing may land in the global default registry"


def test_module_docs_list_exactly_the_exported_metrics() -> None:
    doc = consumer.ops.metrics.__doc__ or ""
    documented = set(re.findall(r"^(modstream_\w+)\s", doc, re.MULTILINE))
    assert documented == exported_names(Metrics())


def test_exposition_parses_and_holds_every_metric() -> None:
    metrics = Metrics()
    metrics.lag(TopicPartition("in", 0), 1)
    text = prometheus_client.generate_latest(metrics.registry).decode()
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    # Labelled metrics with no child yet have no sample; the rest all show up.
    assert {
        "modstream_messages_fetched_total",
        "modstream_messages_processed_total",
        "modstream_messages_in_flight",
        "modstream_retries_total",
        "modstream_circuit_state",
        "modstream_consumer_lag",
        "modstream_assigned_partitions",
        "modstream_commit_duration_seconds_count",
        "modstream_commit_failures_total",
    } <= samples


def test_series_exist_at_zero_from_the_start() -> None:
    metrics = Metrics()
    for outcome in ("verdict", "dead_letter"):
        assert (
            metrics.registry.get_sample_value(
                "modstream_messages_processed_total", {"outcome": outcome}
            )
            == 0
        )
    for reason in ("rate_limited", "provider_unavailable"):
        assert metrics.registry.get_sample_value("modstream_retries_total", {"reason": reason}) == 0
    assert value(metrics, "modstream_circuit_state", state="closed") == 1


def test_messages_in_and_out_by_outcome() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.fetched()
    metrics.verdict()
    metrics.dead_letter("decode", "decode")
    metrics.dead_letter("classify", "invalid_reply")
    assert value(metrics, "modstream_messages_fetched_total") == 3
    assert value(metrics, "modstream_messages_processed_total", outcome="verdict") == 1
    assert value(metrics, "modstream_messages_processed_total", outcome="dead_letter") == 2
    assert value(metrics, "modstream_dead_letters_total", stage="decode", reason="decode") == 1
    assert (
        value(metrics, "modstream_dead_letters_total", stage="classify", reason="invalid_reply")
        == 1
    )


def test_model_call_counts_latency_tokens_and_cost() -> None:
    metrics = Metrics()
    metrics.model_call(usage())
    metrics.model_call(
        usage(
            UsageOutcome.RATE_LIMITED,
            prompt_tokens=0,
            completion_tokens=0,
            cached_tokens=0,
            cost_usd=None,
            latency_ms=3.0,
        )
    )
    assert value(metrics, "modstream_model_calls_total", model=MODEL, outcome="ok") == 1
    assert value(metrics, "modstream_model_calls_total", model=MODEL, outcome="rate_limited") == 1
    assert value(metrics, "modstream_model_call_duration_seconds_count", model=MODEL) == 2
    assert value(metrics, "modstream_model_call_duration_seconds_sum", model=MODEL) == (
        pytest.approx(0.253)
    )
    # 0.25 s falls in the 0.25 bucket, 3 ms in every bucket from 0.025 up.
    assert (
        value(metrics, "modstream_model_call_duration_seconds_bucket", model=MODEL, le="0.1") == 1
    )
    assert (
        value(metrics, "modstream_model_call_duration_seconds_bucket", model=MODEL, le="0.25") == 2
    )
    assert value(metrics, "modstream_tokens_total", model=MODEL, kind="prompt") == 100
    assert value(metrics, "modstream_tokens_total", model=MODEL, kind="completion") == 20
    assert value(metrics, "modstream_tokens_total", model=MODEL, kind="cached") == 64
    assert value(metrics, "modstream_cost_usd_total", model=MODEL) == pytest.approx(0.0002)


def test_retries_by_reason_and_reply_problems() -> None:
    metrics = Metrics()
    metrics.retry(RateLimited("429"))
    metrics.retry(RateLimited("429"))
    metrics.retry(ProviderUnavailable("503"))
    metrics.reply_problem(MODEL, "length")
    assert value(metrics, "modstream_retries_total", reason="rate_limited") == 2
    assert value(metrics, "modstream_retries_total", reason="provider_unavailable") == 1
    assert (
        value(metrics, "modstream_model_reply_problems_total", model=MODEL, problem="length") == 1
    )


@pytest.mark.parametrize("state", list(CircuitState))
def test_circuit_state_is_one_hot(state: CircuitState) -> None:
    metrics = Metrics()
    metrics.circuit(state)
    for each in CircuitState:
        expected = 1 if each is state else 0
        assert value(metrics, "modstream_circuit_state", state=each.value) == expected


def test_lag_per_partition_and_forgotten_on_revoke() -> None:
    metrics = Metrics()
    a, b = TopicPartition("in", 0), TopicPartition("in", 1)
    metrics.lag(a, 12)
    metrics.lag(b, 0)
    assert value(metrics, "modstream_consumer_lag", topic="in", partition="0") == 12
    metrics.lag(a, 3)
    assert value(metrics, "modstream_consumer_lag", topic="in", partition="0") == 3
    metrics.forget([a, TopicPartition("in", 5)])  # 5 was never reported: ignored
    assert (
        metrics.registry.get_sample_value(
            "modstream_consumer_lag", {"topic": "in", "partition": "0"}
        )
        is None
    )
    assert value(metrics, "modstream_consumer_lag", topic="in", partition="1") == 0


def test_watched_gauges_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    in_flight = [4]
    metrics.watch_in_flight(lambda: in_flight[0])
    metrics.watch_assignment(lambda: 6)
    assert value(metrics, "modstream_messages_in_flight") == 4
    in_flight[0] = 0
    assert value(metrics, "modstream_messages_in_flight") == 0
    assert value(metrics, "modstream_assigned_partitions") == 6


def test_commits_and_info() -> None:
    metrics = Metrics()
    metrics.commit(0.004)
    metrics.commit(0.3)
    metrics.commit_failed()
    metrics.describe(version="1.2.3", model=MODEL, policy_version="p7")
    assert value(metrics, "modstream_commit_duration_seconds_count") == 2
    assert value(metrics, "modstream_commit_duration_seconds_bucket", le="0.005") == 1
    assert value(metrics, "modstream_commit_failures_total") == 1
    info = {"version": "1.2.3", "model": MODEL, "policy_version": "p7"}
    assert value(metrics, "modstream_info", **info) == 1


# ---- the stages report through it -----------------------------------------------------------


async def test_classifier_reports_each_call_retry_and_reply_problem() -> None:
    metrics = Metrics()
    provider = Provider(
        [status(429, {"retry-after": "0"}), ok("{not json"), ok(reply_text(hate=0.9))]
    )
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(provider)) as http:
        client = AsyncOpenAI(
            base_url="http://test/v1", api_key="k", max_retries=0, http_client=http
        )
        classifier = Classifier(
            client,
            model=MODEL,
            params=choose(MODEL, server_kind(client.base_url), max_tokens=200, temperature=0.0),
            builder=BUILDER,
            limiter=Limiter(4),
            prices=PriceTable(),
            max_backoff_s=0.01,
            on_retry=metrics.retry,
            metrics=metrics,
        )
        result = await classifier.classify(admitted(), SOURCE)
    assert result.verdict is not None and provider.requests == 3
    assert value(metrics, "modstream_model_calls_total", model=MODEL, outcome="rate_limited") == 1
    assert value(metrics, "modstream_model_calls_total", model=MODEL, outcome="ok") == 2
    assert value(metrics, "modstream_retries_total", reason="rate_limited") == 1
    assert (
        value(metrics, "modstream_model_reply_problems_total", model=MODEL, problem="invalid_reply")
        == 1
    )
    assert value(metrics, "modstream_model_call_duration_seconds_count", model=MODEL) == 3
    # The usage events the message carries and the metrics agree on the tokens.
    prompt = sum(u.prompt_tokens for u in result.usage)
    assert prompt == 240
    assert value(metrics, "modstream_tokens_total", model=MODEL, kind="prompt") == prompt
    assert value(metrics, "modstream_cost_usd_total", model=MODEL) == pytest.approx(
        sum(u.cost_usd or 0 for u in result.usage)
    )


def test_breaker_reports_every_state_change() -> None:
    metrics = Metrics()
    now = [0.0]
    breaker = CircuitBreaker(
        failure_threshold=2, reset_s=1.0, clock=lambda: now[0], on_change=metrics.circuit
    )
    breaker.failure()
    assert value(metrics, "modstream_circuit_state", state="closed") == 1
    breaker.failure()
    assert value(metrics, "modstream_circuit_state", state="open") == 1
    assert value(metrics, "modstream_circuit_state", state="closed") == 0
    breaker.success()
    assert value(metrics, "modstream_circuit_state", state="closed") == 1


class FakeConsumer:
    """What the pipeline's lag reading asks of aiokafka's consumer."""

    def __init__(self, highwater: dict[TopicPartition, int | None], position: int = 0) -> None:
        self._highwater = highwater
        self._position = position
        self.revoked: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, tp: TopicPartition) -> int | None:
        assert tp not in self.revoked, "Partition is not assigned"  # as aiokafka does
        return self._highwater[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self._position

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed = offsets


def pipeline(consumer: FakeConsumer, metrics: Metrics) -> Pipeline:
    return Pipeline(
        Settings(),
        consumer=consumer,
        stages=None,  # type: ignore[arg-type]
        delivery=AtLeastOnce(None, consumer, metrics),  # type: ignore[arg-type]
        breaker=CircuitBreaker(),
        metrics=metrics,
    )


async def test_pipeline_lag_is_highwater_minus_acknowledged_commit() -> None:
    tracked, idle, unfetched, gone = (TopicPartition("in", p) for p in range(4))
    consumer = FakeConsumer({tracked: 10, idle: 7, unfetched: None, gone: 5}, position=7)
    consumer.revoked.add(gone)
    metrics = Metrics()
    pipe = pipeline(consumer, metrics)
    for offset in (3, 4, 5):
        pipe.tracker.track(tracked, offset)
    pipe.tracker.done(tracked, 3)
    pipe.tracker.done(tracked, 5)  # 4 is still in flight: the commit point is 4

    await pipe.committer.observe_lag()  # nothing acknowledged yet for the tracked partition
    assert (
        metrics.registry.get_sample_value(
            "modstream_consumer_lag", {"topic": "in", "partition": "0"}
        )
        is None
    )
    pipe.tracker.mark_committed({tracked: 4})  # what the commit loop does once Kafka acks
    await pipe.committer.observe_lag()

    assert value(metrics, "modstream_consumer_lag", topic="in", partition="0") == 6
    assert value(metrics, "modstream_consumer_lag", topic="in", partition="1") == 0
    for partition in ("2", "3"):  # no fetch yet / revoked meanwhile: not reported
        assert (
            metrics.registry.get_sample_value(
                "modstream_consumer_lag", {"topic": "in", "partition": partition}
            )
            is None
        )
    assert value(metrics, "modstream_messages_in_flight") == 1
    assert value(metrics, "modstream_assigned_partitions") == 4

    pipe.tracker.done(tracked, 4)
    await pipe.committer.observe_lag()  # done, not yet committed: the group still says 4
    assert value(metrics, "modstream_consumer_lag", topic="in", partition="0") == 6
    pipe.tracker.mark_committed({tracked: 6})
    await pipe.committer.observe_lag()
    assert value(metrics, "modstream_consumer_lag", topic="in", partition="0") == 4
    await pipe.on_revoked({tracked})
    assert (
        metrics.registry.get_sample_value(
            "modstream_consumer_lag", {"topic": "in", "partition": "0"}
        )
        is None
    )
