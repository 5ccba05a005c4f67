"""The Prometheus families behind :class:`consumer.ops.metrics.Metrics`, each declared once:
name, help text, labels, buckets, and the series that exist from the start.

What each family means, and which event moves it, is the table in :mod:`consumer.ops.metrics`;
its methods are the only code that touches these objects.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

#: Seconds; a model call takes from tens of milliseconds to the request timeout.
MODEL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds; a commit is one round trip to the group coordinator.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Families:
    """Every family of modstream's metrics, registered in ``registry`` (never the global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        # -- messages
        self.fetched = counter("modstream_messages_fetched", "Messages taken from the input topic.")
        self.processed = counter(
            "modstream_messages_processed",
            "Messages finished, by outcome; finished means every output was acknowledged.",
            "outcome",
        )
        self.dead_letters = counter(
            "modstream_dead_letters",
            "Dead letters by the stage that gave up and the error kind.",
            "stage",
            "reason",
        )
        self.in_flight = gauge(
            "modstream_messages_in_flight", "Messages between fetch and acknowledged outputs."
        )

        # -- the model
        self.model_calls = counter(
            "modstream_model_calls",
            "HTTP calls to the model provider by outcome (rate_limited is a 429).",
            "model",
            "outcome",
        )
        self.model_latency = histogram(
            "modstream_model_call_duration_seconds",
            "Duration of one model call, failed calls included.",
            MODEL_BUCKETS,
            "model",
        )
        self.reply_problems = counter(
            "modstream_model_reply_problems",
            "Model calls answered 200 whose reply could not be used as it was.",
            "model",
            "problem",
        )
        self.ladder = counter(
            "modstream_reply_ladder",
            "Steps of the repair ladder: salvaged, repair_N sent, repaired, gave_up.",
            "model",
            "rung",
        )
        self.salvage_fixes = counter(
            "modstream_reply_salvage_fixes",
            "What salvaging a reply removed (a salvaged reply may count several).",
            "model",
            "fix",
        )
        self.retries = counter(
            "modstream_retries", "Model calls retried, by the transient error's kind.", "reason"
        )
        self.tokens = counter(
            "modstream_tokens",
            "Tokens used, by model and kind (cached tokens are part of prompt tokens).",
            "model",
            "kind",
        )
        self.cost = counter(
            "modstream_cost_usd", "Cost in USD from the pinned price table.", "model"
        )
        self.circuit = gauge(
            "modstream_circuit_state",
            "1 for the model-provider circuit breaker's current state, 0 for the others.",
            "state",
        )

        # -- offsets and Kafka
        self.lag = gauge(
            "modstream_consumer_lag",
            "Messages behind: the partition's high watermark minus its commit point.",
            "topic",
            "partition",
        )
        self.assigned = gauge(
            "modstream_assigned_partitions", "Input partitions assigned to this consumer."
        )
        self.commit_latency = histogram(
            "modstream_commit_duration_seconds",
            "Duration of an acknowledged offset commit.",
            COMMIT_BUCKETS,
        )
        self.commit_failures = counter(
            "modstream_commit_failures",
            "Offset commits the broker refused (the work is redelivered).",
        )
        self.oldest = gauge(
            "modstream_oldest_in_flight_seconds",
            "Age of the oldest message fetched and not yet acknowledged downstream.",
        )
        self.publish_retries = counter(
            "modstream_publish_retries",
            "Output sends Kafka refused for now (retried with backoff), by error class.",
            "reason",
        )
        self.resets = counter(
            "modstream_partition_resets",
            "Partitions whose offsets went backwards, so their tracking restarted.",
        )
        self.broker_up = gauge(
            "modstream_broker_up",
            "1 while the Kafka consumer has a live connection to a broker, else 0.",
        )
        # -- shadow (consumer.shadow)
        self.shadow_verdicts = counter(
            "modstream_shadow_verdicts",
            "Shadow verdicts published, by whether their action agrees with production's.",
            "agreement",
        )
        self.shadow_flips = counter(
            "modstream_shadow_flips",
            "Categories the candidate decided otherwise than production, by category and by "
            "what the candidate made of it (flagged, unflagged).",
            "category",
            "to",
        )
        self.shadow_dropped = counter(
            "modstream_shadow_dropped",
            "Sampled inputs the candidate did not classify, by why (consumer.shadow.runner).",
            "reason",
        )
        self.shadow_cost = counter(
            "modstream_shadow_cost_usd", "What the candidate's calls cost, in USD."
        )
        self.info = Info("modstream", "What this consumer runs.", registry=registry)

        # Series that exist from the start, so rate() and alerts see a 0 rather than nothing.
        for outcome in ("verdict", "dead_letter"):
            self.processed.labels(outcome)
        for reason in ("rate_limited", "provider_unavailable"):
            self.retries.labels(reason)
