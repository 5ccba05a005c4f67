"""The operations fields of :class:`consumer.settings.Settings`: logs, the progress line, the
metrics and health port, tracing, and the Kafka clients' retry pace during an outage."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from consumer.settings.choices import LogFormat, TracingMode


class OperationsSettings(BaseModel):
    """What the people who run modstream see (logs, metrics, probes) and its outage pace."""

    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: LogFormat = LogFormat.AUTO
    log_content: bool = Field(default=False, description="Log message text (debug only).")
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=0, description="Port of /metrics, /healthz and /readyz; 0 turns them off."
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104  (a pod's probes and scrapes come from outside it)
        description="Interface the metrics and health server binds.",
    )
    log_repeat_interval_s: Annotated[float, Field(ge=0.0)] = Field(
        default=10.0,
        description="A warning or error that repeats (same logger and message, digits aside: "
        "aiokafka's reconnect errors during a broker outage) is written at most once per this "
        "many seconds; the next line carries repeated=N, the count left out. 0 writes all.",
    )
    progress_interval_s: Annotated[float, Field(ge=0.0)] = Field(
        default=10.0,
        description="consume writes a progress line (rate, in flight, lag, dead letters, "
        "tokens, cost) every this many seconds: a short line on a terminal, else a "
        "'progress' log line. 0 turns it off.",
    )
    kafka_retry_backoff_ms: Annotated[int, Field(ge=10, le=60_000)] = Field(
        default=100,
        description="aiokafka's retry_backoff_ms for every Kafka client: the pause before a "
        "failed fetch, produce, heartbeat or coordinator lookup is retried (aiokafka's "
        "default). Higher means fewer retries during an outage, slower recovery after one. "
        "It does not pace aiokafka's metadata refresh, which retries as soon "
        "as asked during an outage (see log_repeat_interval_s for its log lines).",
    )
    tracing: TracingMode = Field(
        default=TracingMode.AUTO,
        description="OpenTelemetry spans per record (consume, classify, each model call, "
        "publish), exported over OTLP/HTTP as the standard OTEL_* variables say. auto: on "
        "when OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_TRACES_EXPORTER (not none) is set; on; off.",
    )
