"""The app's lifespan: build every client once, run the pipeline, stop cleanly.

Clients (the Kafka consumer and producer, the OpenAI client) are created here, entered with
``async with`` and passed down; no stage builds or finds a client of its own. SIGTERM and
SIGINT set one stop event: intake stops, in-flight work finishes within the grace period, the
done watermark is committed, the clients close, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer import __version__
from consumer.errors import ConfigError, first_fatal
from consumer.kafka.client import enter_kafka, kafka_options
from consumer.kafka.pacing import pace_metadata_refresh
from consumer.kafka.registry import enter_input_registry
from consumer.kafka.registry_outputs import output_encoder, service_outputs
from consumer.kafka.topics import MAX_REQUEST_BYTES, check_topics, output_limits
from consumer.model.build import batcher, log_request_params, model_stages, openai_client
from consumer.model.chat_client import sender
from consumer.ops.health import HealthServer, kafka_readiness
from consumer.ops.logs import configure_logging
from consumer.ops.metrics import Metrics
from consumer.ops.progress import progress_lines
from consumer.ops.tracing import tracing
from consumer.ops.workers import WorkerRole
from consumer.pipeline.delivery import AtLeastOnce, ExactlyOnce
from consumer.pipeline.outbox import Outbox
from consumer.pipeline.publish import RECORD_OVERHEAD_BYTES, Publisher, Topics
from consumer.pipeline.runner import Pipeline
from consumer.pipeline.source import Rebalance
from consumer.pipeline.stages import Stages
from consumer.settings import Delivery, Settings
from consumer.shadow.build import candidate_settings, candidate_stages, shadow_stage

log = structlog.get_logger(__name__)


#: The producer's batch per partition (aiokafka's default is 16 KiB). A verdict and its usage
#: event are ~1.5 KB, so 16 KiB batches filled at a few thousand messages a second and every
#: send waited for the one batch in flight per partition: a profile showed that wait, and the
#: many small produce requests, as a fifth of the CPU per message at batch size 8.
PRODUCER_BATCH_BYTES = 262_144


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    exit_when_idle: float | None = None,
    metrics: Metrics | None = None,
    report_health_port: Callable[[int], None] | None = None,
) -> Pipeline:
    """Run the consumer until ``stop`` is set, a signal arrives, or it has been idle.

    ``report_health_port``: a worker of ``--workers N`` (``consumer.ops.workers``) serves its health
    server on an ephemeral port of 127.0.0.1 and tells its supervisor which, through this.
    """
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    kafka = kafka_options(settings)
    async with AsyncExitStack() as stack:
        # Entered first, left last: the spans of the drain are ended before it flushes them.
        traces = await stack.enter_async_context(tracing(settings))
        health = await _enter_health(stack, settings, metrics, report_health_port)
        client = await stack.enter_async_context(openai_client(settings))
        chat = await stack.enter_async_context(sender(settings.chat_client, client))
        # Before Kafka: a bad policy, prompt or prices file is told without a broker running.
        classifier, admitter = model_stages(settings, client, metrics, chat)
        candidate = candidate_stages(settings, client, chat) if settings.shadow_share else None
        metrics.describe(
            version=__version__, model=settings.model, policy_version=classifier.policy.version
        )
        # Before Kafka too: an output schema that would break its subject's readers stops here.
        encoder = await output_encoder(settings, service_outputs(settings))
        producer = await _enter_producer(stack, settings, kafka)
        transactional = None
        if settings.delivery is Delivery.EXACTLY_ONCE:
            # Verdicts and dead letters commit with their offsets on this one; usage goes out at
            # once on the plain producer, so every answered call is recorded whatever aborts.
            # Entered before the consumer: a revoke that closing the consumer runs still commits.
            transactional = await _enter_producer(
                stack, settings, kafka, transactional_id=settings.effective_transactional_id
            )
        # Entered after the producer it publishes on: left (drained) before it closes.
        shadow = None
        if candidate is not None:
            shadow = await stack.enter_async_context(
                shadow_stage(
                    settings,
                    candidate,
                    producer,
                    production=classifier.limiter,
                    metrics=metrics,
                    inject=traces.injector,
                    encoder=encoder,
                )
            )
        consumer = _consumer(settings, kafka)
        await enter_kafka(stack, consumer, kafka)
        await check_topics(consumer, settings)
        _log_request_params(settings, shadow=candidate is not None)
        topics = Topics(settings.verdict_topic, settings.usage_topic, settings.dlq_topic)
        limits = await output_limits(kafka, topics)
        health.readiness = kafka_readiness(consumer, stop)
        publisher = Publisher(
            producer,
            topics,
            limits,
            carry=settings.carried_headers,
            inject=traces.injector,
            encoder=encoder,
        )
        delivery = (
            AtLeastOnce(publisher, consumer, metrics)
            if transactional is None
            else ExactlyOnce(publisher, Outbox(transactional, settings.group_id), metrics)
        )
        # Micro-batching: short messages share a chat call, each still delivered alone.
        batching = batcher(settings, classifier)
        stages = Stages(
            settings,
            admitter=admitter,
            classify=classifier.classify if batching is None else batching.classify,
            publisher=publisher,
            delivery=delivery,
            metrics=metrics,
            policy_version=classifier.policy.version,
            # Room for the record's framing and our headers, which the size check counts too.
            dead_letter_max_bytes=limits[topics.dead_letters] - 2 * RECORD_OVERHEAD_BYTES,
            shadow=shadow,
            registry=await enter_input_registry(stack, settings),
            tracing=traces,
        )
        pipeline = Pipeline(
            settings,
            consumer=consumer,
            stages=stages,
            delivery=delivery,
            breaker=classifier.breaker,
            metrics=metrics,
        )
        consumer.subscribe(
            [settings.input_topic], listener=Rebalance(pipeline.on_revoked, pipeline.on_assigned)
        )
        # Entered last, left first: the lines run through the drain, stop before the clients.
        await stack.enter_async_context(progress_lines(settings, metrics))
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_kafka_futures)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "consuming",
            topic=settings.input_topic,
            group=settings.group_id,
            model=settings.model,
            policy=classifier.policy.version,
            concurrency=settings.concurrency,
            max_in_flight=settings.max_in_flight,
            batch_size=settings.batch_size,
            tracing=traces.enabled,
            first_tier=classifier.policy.first_tier is not None,
            shadow=None
            if candidate is None
            else f"{settings.shadow_share:.0%} to {candidate[0].model}",
        )
        # What start-up built (clients, tokenizer tables, schemas) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it.
        gc.freeze()
        try:
            await pipeline.run(stop, exit_when_idle=exit_when_idle)
        except ExceptionGroup as group:
            # The task group wraps a fatal error (401/403, fenced) from a task: surface it.
            fatal = first_fatal(group)
            if fatal is not None:
                raise fatal from None
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("stopped", **summary(metrics)._asdict())
        return pipeline


def _consumer(settings: Settings, kafka: dict[str, Any]) -> AIOKafkaConsumer:
    """The group's consumer: commits are ours, and a poll takes at most the work window."""
    consumer = AIOKafkaConsumer(
        **kafka,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        max_poll_records=settings.max_in_flight,
    )
    pace_metadata_refresh(consumer, settings.kafka_retry_backoff_ms / 1000)
    return consumer


class Summary(NamedTuple):
    """What a run did, as its stop line says it: read from its metrics, which count each once."""

    fetched: int
    verdicts: int
    dead_letters: int
    commits: int


def summary(metrics: Metrics) -> Summary:
    """The run's figures so far, read from ``metrics`` (the pipeline keeps no counts of its own)."""
    totals = metrics.totals()
    return Summary(totals.fetched, totals.verdicts, totals.dead_letters, totals.commits)


async def _enter_producer(
    stack: AsyncExitStack,
    settings: Settings,
    kafka: dict[str, Any],
    *,
    transactional_id: str | None = None,
) -> AIOKafkaProducer:
    """An idempotent producer (``acks=all``) entered on ``stack``; with ``transactional_id``,
    exactly-once's transactional one."""
    producer = AIOKafkaProducer(
        **kafka,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=PRODUCER_BATCH_BYTES,
        transactional_id=transactional_id,
    )
    pace_metadata_refresh(producer, settings.kafka_retry_backoff_ms / 1000)
    return await enter_kafka(stack, producer, kafka)


async def _enter_health(
    stack: AsyncExitStack,
    settings: Settings,
    metrics: Metrics,
    report_port: Callable[[int], None] | None,
) -> HealthServer:
    """The health server, entered first on ``stack`` (last out: probes answer through start
    and stop) when it serves: on ``MODSTREAM_METRICS_PORT``, or, for a worker, on an ephemeral
    port of 127.0.0.1 reported through ``report_port``."""
    if report_port is None:
        health = HealthServer(metrics, port=settings.metrics_port, host=settings.metrics_host)
        if settings.metrics_port:
            await stack.enter_async_context(health)
        return health
    health = await stack.enter_async_context(HealthServer(metrics, port=0, host="127.0.0.1"))
    report_port(health.port)
    return health


def _quiet_kafka_futures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiokafka leaves internal futures failed and unobserved once its producer fails for good
    (fenced): log those at DEBUG, not as ERROR tracebacks after our own clear message."""
    error = context.get("exception")
    if isinstance(error, KafkaError) and "never retrieved" in str(context.get("message")):
        log.debug("aiokafka left a failed future unobserved", error=repr(error))
        return
    loop.default_exception_handler(context)


def _log_request_params(settings: Settings, *, shadow: bool) -> None:
    log_request_params(settings)
    if shadow:
        log_request_params(candidate_settings(settings), shadow=True)


def run_consumer(
    settings: Settings, *, exit_when_idle: float | None = None, role: WorkerRole | None = None
) -> None:
    """Blocking entry for the CLI; ``role``: this process is a worker of a supervisor."""
    configure_logging(settings)
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        if role is None:
            runner.run(serve(settings, exit_when_idle=exit_when_idle))
        else:
            runner.run(_serve_worker(settings, role, exit_when_idle))


async def _serve_worker(settings: Settings, role: WorkerRole, exit_when_idle: float | None) -> None:
    """``serve`` as worker ``role.index``: its lines say so, its health port goes to the
    supervisor, and it stops by itself when the supervisor is gone."""
    structlog.contextvars.bind_contextvars(worker=role.index)
    stop = asyncio.Event()
    watch = asyncio.create_task(role.watch_parent(stop))
    try:
        await serve(
            settings, stop=stop, exit_when_idle=exit_when_idle, report_health_port=role.report_port
        )
    finally:
        watch.cancel()


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``MODSTREAM_EVENT_LOOP`` asks for (None: asyncio's own)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415  (an optional extra: modstream[fast])
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "MODSTREAM_EVENT_LOOP=uvloop but uvloop is not installed: "
                "pip install 'modstream[fast]'"
            ) from None
        return None
    return uvloop.new_event_loop


#: Young-generation threshold: each message allocates a few thousand short-lived objects
#: (pydantic models, dicts, coroutines), so the default 700 runs a collection every message.
#: Not higher: at 50,000 the lean path's RSS grew ~24 KB per message without bound (545 MB
#: after 15k messages, 5 GB over a 500k backlog, where 5,000 and 20,000 held ~180 MB); the
#: full collections that free it come too seldom. ``make bench``'s memory section checks it.
_GC_GEN0 = 5_000


def tune_gc() -> None:
    """Collect the young generation less often (see ``_GC_GEN0``); cycles are still found."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0, gen1, gen2)
