"""Prometheus metrics: one ``Metrics`` object per app, with one method per event.

The stages call typed methods (``metrics.verdict()``, ``metrics.model_call(usage)``, ...) and
never touch a prometheus-client object; every metric lives in the object's own
``CollectorRegistry`` (never the global default one), so tests can build as many as they like.
``consumer.ops.health`` serves the registry on ``/metrics``; the families are declared in
:mod:`consumer.ops.families`. Readers in the process (the stop line, the progress line) take
:meth:`Metrics.totals`, a typed snapshot, rather than reading samples by name.

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
modstream_shadow_verdicts_total            counter  ``agreement``: agree | disagree, the shadow
                                                    verdict's action against production's
modstream_shadow_flips_total               counter  ``category``, ``to``: flagged | unflagged, a
                                                    category the candidate decided otherwise
modstream_shadow_dropped_total             counter  ``reason``: a sampled input not classified in
                                                    shadow (consumer.shadow.runner lists them)
modstream_shadow_cost_usd_total            counter  what the candidate's calls cost
modstream_info                             info     ``version``, ``model``, ``policy_version``
=========================================  =======  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from consumer.errors import ModstreamError
from consumer.model.circuit import CircuitState
from consumer.ops.families import Families
from schemas import UsageEvent, UsageOutcome

__all__ = ["Metrics", "Totals", "kafka_connected"]


class Totals(NamedTuple):
    """What a run has done so far, as its metrics count it (see :meth:`Metrics.totals`)."""

    fetched: int
    verdicts: int
    dead_letters: int
    commits: int  # acknowledged
    in_flight: int
    lag: int  # over the assigned partitions, as the committer last read it
    tokens: int  # prompt + completion (cached tokens are part of prompt)
    cost_usd: float
    retries: int

    @property
    def processed(self) -> int:
        """Messages finished: verdicts and dead letters."""
        return self.verdicts + self.dead_letters


def _sum(family: Any, sample: str, **labels: str) -> float:
    """The sum of ``family``'s samples named ``sample`` whose labels include ``labels``."""
    wanted = labels.items()
    return float(
        sum(
            s.value
            for metric in family.collect()
            for s in metric.samples
            if s.name == sample and wanted <= s.labels.items()
        )
    )


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
        self._families = Families(self.registry)
        self._model_series: dict[tuple[str, UsageOutcome], _ModelSeries] = {}
        self.circuit(CircuitState.CLOSED)

    def totals(self) -> Totals:
        """A snapshot of the run's figures (the stop line's, the progress line's)."""
        f = self._families
        processed = "modstream_messages_processed_total"
        return Totals(
            fetched=int(_sum(f.fetched, "modstream_messages_fetched_total")),
            verdicts=int(_sum(f.processed, processed, outcome="verdict")),
            dead_letters=int(_sum(f.processed, processed, outcome="dead_letter")),
            commits=int(_sum(f.commit_latency, "modstream_commit_duration_seconds_count")),
            in_flight=int(_sum(f.in_flight, "modstream_messages_in_flight")),
            lag=int(_sum(f.lag, "modstream_consumer_lag")),
            tokens=int(_sum(f.tokens, "modstream_tokens_total", kind="prompt"))
            + int(_sum(f.tokens, "modstream_tokens_total", kind="completion")),
            cost_usd=_sum(f.cost, "modstream_cost_usd_total"),
            retries=int(_sum(f.retries, "modstream_retries_total")),
        )

    # -- what the consumer runs -------------------------------------------------------------

    def describe(self, *, version: str, model: str, policy_version: str) -> None:
        """Name the code, model and policy this process runs (``modstream_info``)."""
        labels = {"version": version, "model": model, "policy_version": policy_version}
        self._families.info.info(labels)

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        """Read the in-flight count at scrape time (exact, and free between scrapes)."""
        self._families.in_flight.set_function(count)

    def watch_oldest_in_flight(self, age_s: Callable[[], float]) -> None:
        """Read the oldest in-flight message's age at scrape time."""
        self._families.oldest.set_function(age_s)

    def watch_assignment(self, count: Callable[[], int]) -> None:
        """Read the number of assigned partitions at scrape time."""
        self._families.assigned.set_function(count)

    def watch_broker(self, up: Callable[[], bool]) -> None:
        """Read whether the broker is reachable at scrape time (e.g. :func:`kafka_connected`).

        Until this is called the gauge reads 0: a consumer that never connected is not up.
        """
        self._families.broker_up.set_function(lambda: 1.0 if up() else 0.0)

    # -- messages ---------------------------------------------------------------------------

    def fetched(self) -> None:
        """One message was taken from the input topic."""
        self._families.fetched.inc()

    def verdict(self) -> None:
        """One message ended as an acknowledged verdict."""
        self._families.processed.labels("verdict").inc()

    def dead_letter(self, stage: str, reason: str) -> None:
        """One message ended as an acknowledged dead letter."""
        self._families.processed.labels("dead_letter").inc()
        self._families.dead_letters.labels(stage, reason).inc()

    # -- the model --------------------------------------------------------------------------

    def model_call(self, usage: UsageEvent) -> None:
        """One HTTP call to the model, as its usage event records it."""
        series = self._model_series.get((usage.model, usage.outcome))
        if series is None:
            series = self._model_series[(usage.model, usage.outcome)] = _ModelSeries(
                self._families.model_calls.labels(usage.model, usage.outcome.value),
                self._families.model_latency.labels(usage.model),
                self._families.tokens.labels(usage.model, "prompt"),
                self._families.tokens.labels(usage.model, "completion"),
                self._families.tokens.labels(usage.model, "cached"),
                self._families.cost.labels(usage.model),
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
        self._families.reply_problems.labels(model, problem).inc()

    def reply_rung(self, model: str, rung: str) -> None:
        """A reply took a step of the repair ladder (see :mod:`consumer.model.salvage`)."""
        self._families.ladder.labels(model, rung).inc()

    def reply_salvaged(self, model: str, fixes: Iterable[str]) -> None:
        """A reply was used after a local salvage that removed ``fixes``."""
        self._families.ladder.labels(model, "salvaged").inc()
        for fix in fixes:
            self._families.salvage_fixes.labels(model, fix).inc()

    def retry(self, error: ModstreamError) -> None:
        """A model call failed transiently and will be retried."""
        self._families.retries.labels(error.kind).inc()

    def circuit(self, state: CircuitState) -> None:
        """The circuit breaker moved to ``state``."""
        for each in CircuitState:
            self._families.circuit.labels(each.value).set(1 if each is state else 0)

    # -- offsets ----------------------------------------------------------------------------

    def lag(self, tp: TopicPartition, messages: int) -> None:
        """``messages`` are behind the commit point of ``tp``."""
        self._families.lag.labels(tp.topic, str(tp.partition)).set(messages)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions were revoked: their lag is another member's to report now."""
        for tp in partitions:
            with suppress(KeyError):  # never reported: nothing to remove
                self._families.lag.remove(tp.topic, str(tp.partition))

    def commit(self, latency_s: float) -> None:
        """An offset commit was acknowledged after ``latency_s`` seconds."""
        self._families.commit_latency.observe(latency_s)

    def commit_failed(self) -> None:
        """The broker refused an offset commit."""
        self._families.commit_failures.inc()

    def publish_retry(self, reason: str) -> None:
        """Kafka refused an output for now; it is sent again after a backoff."""
        self._families.publish_retries.labels(reason).inc()

    def partition_reset(self) -> None:
        """A partition's offsets went backwards and its tracking restarted."""
        self._families.resets.inc()

    # -- shadow -----------------------------------------------------------------------------

    def shadow_verdict(
        self, *, agrees: bool, flagged: Iterable[str], unflagged: Iterable[str]
    ) -> None:
        """A shadow verdict was published; ``flagged``/``unflagged``: the categories the
        candidate flags and production does not, and the other way round."""
        f = self._families
        f.shadow_verdicts.labels("agree" if agrees else "disagree").inc()
        for category in flagged:
            f.shadow_flips.labels(category, "flagged").inc()
        for category in unflagged:
            f.shadow_flips.labels(category, "unflagged").inc()

    def shadow_cost(self, usd: float) -> None:
        """The candidate's calls for one input cost ``usd``."""
        self._families.shadow_cost.inc(usd)

    def shadow_dropped(self, reason: str) -> None:
        """A sampled input was not classified in shadow, for ``reason``."""
        self._families.shadow_dropped.labels(reason).inc()


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
