"""Prometheus metrics: one ``Metrics`` object per app, with one method per event.

The stages call typed methods (``metrics.verdict()``, ``metrics.model_call(usage)``, ...) and
never touch a prometheus-client object; every metric lives in the object's own
``CollectorRegistry`` (never the global default one), so tests can build as many as they like.
``consumer.ops.health`` serves the registry on ``/metrics``.

=========================================  =======  ==============================================
metric                                     type     labels, meaning
=========================================  =======  ==============================================
modstream_messages_fetched_total           counter  messages taken from the input topic
modstream_messages_processed_total         counter  ``outcome``: verdict | dead_letter
modstream_dead_letters_total               counter  ``stage``, ``reason`` (the error's ``kind``)
modstream_messages_in_flight               gauge    fetched, not yet acknowledged downstream
modstream_model_calls_total                counter  ``model``, ``outcome`` (UsageOutcome at the
                                                    HTTP level: ok, rate_limited (the 429s),
                                                    provider_unavailable, auth, rejected)
modstream_model_call_duration_seconds      histo    ``model``: one HTTP call, failures included
modstream_model_reply_problems_total       counter  ``model``, ``problem``: a 200 whose reply was
                                                    unusable (invalid_reply, length, refusal,
                                                    content_filter, provider_unavailable,
                                                    salvaged)
modstream_reply_ladder_total               counter  ``model``, ``rung``: a step of the repair
                                                    ladder (consumer.model.salvage): salvaged (used
                                                    after a local salvage), repair_1, repair_2
                                                    (a repair request sent), repaired (a repair's
                                                    reply used), gave_up (dead letter)
modstream_reply_salvage_fixes_total        counter  ``model``, ``fix``: what a salvage removed:
                                                    code_fence | extra_text | unknown_keys
modstream_retries_total                    counter  ``reason``: rate_limited | provider_unavailable
modstream_tokens_total                     counter  ``model``, ``kind``: prompt | completion |
                                                    cached (cached is part of prompt)
modstream_cost_usd_total                   counter  ``model``: from the pinned price table
modstream_circuit_state                    gauge    ``state``: 1 for the breaker's current state
modstream_consumer_lag                     gauge    ``topic``, ``partition``: high watermark minus
                                                    the acknowledged commit, per assigned partition
modstream_assigned_partitions              gauge    input partitions this member owns
modstream_commit_duration_seconds          histo    one offset commit, acknowledged
modstream_commit_failures_total            counter  commits the broker refused (rebalance)
modstream_oldest_in_flight_seconds         gauge    age of the oldest message fetched and not yet
                                                    acknowledged downstream (0 when none)
modstream_publish_retries_total            counter  ``reason``: output sends Kafka refused for now
                                                    (the error's class); retried with backoff
modstream_partition_resets_total           counter  a partition's offsets went backwards (seek,
                                                    reset, re-assignment): its tracking restarted
modstream_broker_up                        gauge    1 while the Kafka consumer holds a live
                                                    connection to a broker, 0 when it holds none
                                                    (broker down or unreachable); read at scrape
                                                    time, see :func:`kafka_connected`
modstream_info                             info     ``version``, ``model``, ``policy_version``
=========================================  =======  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any, Literal, NamedTuple

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from consumer.errors import ModstreamError
from consumer.model.circuit import CircuitState
from schemas import UsageEvent, UsageOutcome

#: Seconds; a model call takes from tens of milliseconds to the request timeout.
MODEL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds; a commit is one round trip to the group coordinator.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Outcome = Literal["verdict", "dead_letter"]


class _ModelSeries(NamedTuple):
    """The labelled series one model call touches: looked up once per (model, outcome), not
    per call (``labels()`` costs more than the increment)."""

    calls: Any
    latency: Any
    prompt: Any
    completion: Any
    cached: Any
    cost: Any


class Metrics:
    """modstream's metrics in a private registry; one method per thing that happens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._model_series: dict[tuple[str, UsageOutcome], _ModelSeries] = {}
        r = self.registry
        self._fetched = Counter(
            "modstream_messages_fetched", "Messages taken from the input topic.", registry=r
        )
        self._processed = Counter(
            "modstream_messages_processed",
            "Messages finished, by outcome; finished means every output was acknowledged.",
            ["outcome"],
            registry=r,
        )
        self._dead_letters = Counter(
            "modstream_dead_letters",
            "Dead letters by the stage that gave up and the error kind.",
            ["stage", "reason"],
            registry=r,
        )
        self._in_flight = Gauge(
            "modstream_messages_in_flight",
            "Messages between fetch and acknowledged outputs.",
            registry=r,
        )
        self._model_calls = Counter(
            "modstream_model_calls",
            "HTTP calls to the model provider by outcome (rate_limited is a 429).",
            ["model", "outcome"],
            registry=r,
        )
        self._model_latency = Histogram(
            "modstream_model_call_duration_seconds",
            "Duration of one model call, failed calls included.",
            ["model"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self._reply_problems = Counter(
            "modstream_model_reply_problems",
            "Model calls answered 200 whose reply could not be used as it was.",
            ["model", "problem"],
            registry=r,
        )
        self._ladder = Counter(
            "modstream_reply_ladder",
            "Steps of the repair ladder: salvaged, repair_N sent, repaired, gave_up.",
            ["model", "rung"],
            registry=r,
        )
        self._salvage_fixes = Counter(
            "modstream_reply_salvage_fixes",
            "What salvaging a reply removed (a salvaged reply may count several).",
            ["model", "fix"],
            registry=r,
        )
        self._retries = Counter(
            "modstream_retries",
            "Model calls retried, by the transient error's kind.",
            ["reason"],
            registry=r,
        )
        self._tokens = Counter(
            "modstream_tokens",
            "Tokens used, by model and kind (cached tokens are part of prompt tokens).",
            ["model", "kind"],
            registry=r,
        )
        self._cost = Counter(
            "modstream_cost_usd", "Cost in USD from the pinned price table.", ["model"], registry=r
        )
        self._circuit = Gauge(
            "modstream_circuit_state",
            "1 for the model-provider circuit breaker's current state, 0 for the others.",
            ["state"],
            registry=r,
        )
        self._lag = Gauge(
            "modstream_consumer_lag",
            "Messages behind: the partition's high watermark minus its commit point.",
            ["topic", "partition"],
            registry=r,
        )
        self._assigned = Gauge(
            "modstream_assigned_partitions",
            "Input partitions assigned to this consumer.",
            registry=r,
        )
        self._commit_latency = Histogram(
            "modstream_commit_duration_seconds",
            "Duration of an acknowledged offset commit.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self._commit_failures = Counter(
            "modstream_commit_failures",
            "Offset commits the broker refused (the work is redelivered).",
            registry=r,
        )
        self._oldest = Gauge(
            "modstream_oldest_in_flight_seconds",
            "Age of the oldest message fetched and not yet acknowledged downstream.",
            registry=r,
        )
        self._publish_retries = Counter(
            "modstream_publish_retries",
            "Output sends Kafka refused for now (retried with backoff), by error class.",
            ["reason"],
            registry=r,
        )
        self._resets = Counter(
            "modstream_partition_resets",
            "Partitions whose offsets went backwards, so their tracking restarted.",
            registry=r,
        )
        self._broker_up = Gauge(
            "modstream_broker_up",
            "1 while the Kafka consumer has a live connection to a broker, else 0.",
            registry=r,
        )
        self._info = Info("modstream", "What this consumer runs.", registry=r)
        # Series that exist from the start, so rate() and alerts see a 0 rather than nothing.
        for outcome in ("verdict", "dead_letter"):
            self._processed.labels(outcome)
        for reason in ("rate_limited", "provider_unavailable"):
            self._retries.labels(reason)
        self.circuit(CircuitState.CLOSED)

    # -- what the consumer runs -------------------------------------------------------------

    def describe(self, *, version: str, model: str, policy_version: str) -> None:
        """Name the code, model and policy this process runs (``modstream_info``)."""
        self._info.info({"version": version, "model": model, "policy_version": policy_version})

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        """Read the in-flight count at scrape time (exact, and free between scrapes)."""
        self._in_flight.set_function(count)

    def watch_oldest_in_flight(self, age_s: Callable[[], float]) -> None:
        """Read the oldest in-flight message's age at scrape time."""
        self._oldest.set_function(age_s)

    def watch_assignment(self, count: Callable[[], int]) -> None:
        """Read the number of assigned partitions at scrape time."""
        self._assigned.set_function(count)

    def watch_broker(self, up: Callable[[], bool]) -> None:
        """Read whether the broker is reachable at scrape time (e.g. :func:`kafka_connected`).

        Until this is called the gauge reads 0: a consumer that never connected is not up.
        """
        self._broker_up.set_function(lambda: 1.0 if up() else 0.0)

    # -- messages ---------------------------------------------------------------------------

    def fetched(self) -> None:
        """One message was taken from the input topic."""
        self._fetched.inc()

    def verdict(self) -> None:
        """One message ended as an acknowledged verdict."""
        self._processed.labels("verdict").inc()

    def dead_letter(self, stage: str, reason: str) -> None:
        """One message ended as an acknowledged dead letter."""
        self._processed.labels("dead_letter").inc()
        self._dead_letters.labels(stage, reason).inc()

    # -- the model --------------------------------------------------------------------------

    def model_call(self, usage: UsageEvent) -> None:
        """One HTTP call to the model, as its usage event records it."""
        series = self._model_series.get((usage.model, usage.outcome))
        if series is None:
            series = self._model_series[(usage.model, usage.outcome)] = _ModelSeries(
                self._model_calls.labels(usage.model, usage.outcome.value),
                self._model_latency.labels(usage.model),
                self._tokens.labels(usage.model, "prompt"),
                self._tokens.labels(usage.model, "completion"),
                self._tokens.labels(usage.model, "cached"),
                self._cost.labels(usage.model),
            )
        series.calls.inc()
        series.latency.observe(usage.latency_ms / 1000)
        if usage.prompt_tokens:
            series.prompt.inc(usage.prompt_tokens)
        if usage.completion_tokens:
            series.completion.inc(usage.completion_tokens)
        if usage.cached_tokens:
            series.cached.inc(usage.cached_tokens)
        if usage.cost_usd:
            series.cost.inc(usage.cost_usd)

    def reply_problem(self, model: str, problem: str) -> None:
        """A call answered 200 but its reply was unusable as it was (refusal, cut, invalid)."""
        self._reply_problems.labels(model, problem).inc()

    def reply_rung(self, model: str, rung: str) -> None:
        """A reply took a step of the repair ladder (see :mod:`consumer.model.salvage`)."""
        self._ladder.labels(model, rung).inc()

    def reply_salvaged(self, model: str, fixes: Iterable[str]) -> None:
        """A reply was used after a local salvage that removed ``fixes``."""
        self._ladder.labels(model, "salvaged").inc()
        for fix in fixes:
            self._salvage_fixes.labels(model, fix).inc()

    def retry(self, error: ModstreamError) -> None:
        """A model call failed transiently and will be retried."""
        self._retries.labels(error.kind).inc()

    def circuit(self, state: CircuitState) -> None:
        """The circuit breaker moved to ``state``."""
        for each in CircuitState:
            self._circuit.labels(each.value).set(1 if each is state else 0)

    # -- offsets ----------------------------------------------------------------------------

    def lag(self, tp: TopicPartition, messages: int) -> None:
        """``messages`` are behind the commit point of ``tp``."""
        self._lag.labels(tp.topic, str(tp.partition)).set(messages)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions were revoked: their lag is another member's to report now."""
        for tp in partitions:
            with suppress(KeyError):  # never reported: nothing to remove
                self._lag.remove(tp.topic, str(tp.partition))

    def commit(self, latency_s: float) -> None:
        """An offset commit was acknowledged after ``latency_s`` seconds."""
        self._commit_latency.observe(latency_s)

    def commit_failed(self) -> None:
        """The broker refused an offset commit."""
        self._commit_failures.inc()

    def publish_retry(self, reason: str) -> None:
        """Kafka refused an output for now; it is sent again after a backoff."""
        self._publish_retries.labels(reason).inc()

    def partition_reset(self) -> None:
        """A partition's offsets went backwards and its tracking restarted."""
        self._resets.inc()


def kafka_connected(client: object) -> bool:
    """Whether an aiokafka consumer or producer holds at least one live broker connection.

    Cheap and honest: it reads the connections aiokafka keeps (``client._client._conns``, the
    private state of aiokafka 0.14, pinned), asks nothing of the broker, and costs nothing
    between scrapes. A running consumer always holds one (fetches, heartbeats); when the broker
    stops, every socket sees EOF within moments and no reconnect succeeds until it is back. Any
    surprise in aiokafka's internals reads as "not connected" rather than raising in a scrape.
    """
    try:
        conns = client._client._conns.values()  # type: ignore[attr-defined]
        return any(conn.connected() for conn in list(conns))
    except Exception:  # noqa: BLE001  (a scrape must never fail on aiokafka internals)
        return False
