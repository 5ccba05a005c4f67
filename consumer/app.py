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
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from typing import Any, TypeVar

import httpx2
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest
from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAioHttpClient

from consumer import __version__
from consumer.admit import Admitter
from consumer.batch import Batcher
from consumer.chat_client import ChatSender, sender
from consumer.circuit import CircuitBreaker
from consumer.classify import Classifier
from consumer.cost import PriceTable, load_prices
from consumer.errors import ConfigError
from consumer.health import HealthServer, kafka_readiness
from consumer.kafka_pacing import pace_metadata_refresh
from consumer.limit import Limiter
from consumer.logs import configure_logging
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.policy import PromptBuilder, load_policy, load_prompt
from consumer.provider import public_url
from consumer.publish import RECORD_OVERHEAD_BYTES, Outbox, Publisher, Topics
from consumer.request_params import ResponseFormats, Server
from consumer.settings import Delivery, Settings
from consumer.source import Rebalance
from consumer.workers import WorkerRole

log = structlog.get_logger(__name__)

KafkaClient = TypeVar("KafkaClient", AIOKafkaProducer, AIOKafkaConsumer)

#: The producer's largest request (aiokafka's default, set explicitly: outputs are cut to it).
MAX_REQUEST_BYTES = 1_048_576
#: The producer's batch per partition (aiokafka's default is 16 KiB). A verdict and its usage
#: event are ~1.5 KB, so 16 KiB batches filled at a few thousand messages a second and every
#: send waited for the one batch in flight per partition: a profile showed that wait, and the
#: many small produce requests, as a fifth of the CPU per message at batch size 8.
PRODUCER_BATCH_BYTES = 262_144
#: What a topic takes when its config cannot be read (Kafka's default max.message.bytes).
DEFAULT_TOPIC_MAX_BYTES = 1_048_588


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection, retry and security options shared by every Kafka client.

    Every key is one that ``AIOKafkaConsumer``, ``AIOKafkaProducer`` and ``AIOKafkaAdminClient``
    all accept. ``retry_backoff_ms`` paces their retries of failed requests; aiokafka 0.14 has
    no reconnect backoff of its own (no ``reconnect_backoff_ms``), and its metadata refresh
    retries as soon as a waiting sender or fetcher asks: ``serve`` paces that loop with
    ``consumer.kafka_pacing``, and ``consumer.logs.RepeatFilter`` collapses its log lines.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "retry_backoff_ms": settings.kafka_retry_backoff_ms,
    }
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        assert settings.sasl_password is not None  # checked by the settings validator
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if settings.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context  # noqa: PLC0415

        key_password = settings.ssl_key_password
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=settings.ssl_cafile,
                certfile=settings.ssl_certfile,
                keyfile=settings.ssl_keyfile,
                password=None if key_password is None else key_password.get_secret_value(),
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"cannot set up TLS for Kafka: {exc}. Check MODSTREAM_SSL_CAFILE, "
                "MODSTREAM_SSL_CERTFILE, MODSTREAM_SSL_KEYFILE and MODSTREAM_SSL_KEY_PASSWORD"
            ) from exc
    return options


async def kafka_start_problem(options: dict[str, Any]) -> ConfigError | None:
    """Why Kafka refused us at start-up, when it is a credentials or TLS problem.

    aiokafka logs the real cause of a failed bootstrap (a SASL or TLS error) and raises a bare
    "Unable to bootstrap from [...]". Connect to each bootstrap server once more, directly, and
    turn an authentication or TLS failure, or a listener that drops plain requests (it wants
    SASL or TLS), into a ``ConfigError`` that names it; ``None`` when the servers are simply
    unreachable (or answer now). The message never holds the password.
    """
    mechanism = options.get("sasl_mechanism")
    for host, port, _ in collect_hosts(options["bootstrap_servers"]):
        where = f"Kafka at {host}:{port}"
        try:
            conn = await create_conn(
                host,
                port,
                client_id=options["client_id"],
                request_timeout_ms=10_000,
                ssl_context=options.get("ssl_context"),
                security_protocol=options["security_protocol"],
                sasl_mechanism=mechanism,
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
            # Connected, yet the bootstrap failed: a SASL listener accepts a plain connection
            # (and even ApiVersions), then drops it on the first real request.
            try:
                await conn.send(MetadataRequest([]))
            finally:
                conn.close()
        except SaslAuthenticationFailed as exc:
            return ConfigError(
                f"{where} rejected the SASL {mechanism} login of user "
                f"{options.get('sasl_plain_username')!r}: {exc}. Check MODSTREAM_SASL_USERNAME, "
                "MODSTREAM_SASL_PASSWORD and MODSTREAM_SASL_MECHANISM"
            )
        except (UnsupportedSaslMechanismError, IllegalSaslStateError) as exc:
            return ConfigError(
                f"{where} does not accept SASL {mechanism} on this listener: {exc}. Check "
                "MODSTREAM_SASL_MECHANISM, MODSTREAM_SECURITY_PROTOCOL and the port"
            )
        except (ssl.SSLError, KafkaConnectionError) as exc:
            # create_conn raises KafkaConnectionError only once the TCP connection is up.
            tls = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
            if isinstance(tls, ssl.SSLError):
                return ConfigError(
                    f"TLS with {where} failed: {tls}. Check that the listener speaks TLS, "
                    "MODSTREAM_SSL_CAFILE (the broker's CA) and, when the broker wants a client "
                    "certificate, MODSTREAM_SSL_CERTFILE / MODSTREAM_SSL_KEYFILE"
                )
            protocol = options["security_protocol"]
            unused = (
                f" (MODSTREAM_SASL_MECHANISM is set, but {protocol} never logs in)"
                if mechanism and not protocol.startswith("SASL")
                else ""
            )
            return ConfigError(
                f"{where} accepted a {protocol} connection, then closed it on the first "
                "request: the listener probably expects SASL or TLS. Check "
                "MODSTREAM_SECURITY_PROTOCOL (SASL_PLAINTEXT, SASL_SSL or SSL) and the port"
                + unused
            )
        except ConnectionResetError:
            if options.get("ssl_context") is None:
                continue
            return ConfigError(
                f"{where} reset the connection during the TLS handshake: the listener probably "
                "does not speak TLS. Check MODSTREAM_SECURITY_PROTOCOL and the port"
            )
        except (OSError, KafkaError, TimeoutError):
            continue
    return None


async def enter_kafka(
    stack: AsyncExitStack, client: KafkaClient, options: dict[str, Any]
) -> KafkaClient:
    """Start a Kafka client on ``stack``; a credentials or TLS failure is a clear ConfigError."""
    try:
        return await stack.enter_async_context(client)
    except KafkaConnectionError as exc:
        with suppress(Exception):
            await client.stop()  # a failed start leaves the client's own resources open
        problem = await kafka_start_problem(options)
        if problem is None:
            raise
        raise problem from exc


def openai_client(settings: Settings, http_client: httpx2.AsyncClient | None = None) -> AsyncOpenAI:
    """The one AsyncOpenAI client: no SDK retries (ours re-acquire budget), short timeouts.

    With ``MODSTREAM_AZURE_ENDPOINT`` set it is an ``AsyncAzureOpenAI`` (a subclass: the same
    calls, the same errors, so :func:`consumer.provider.translate` serves both): requests go to
    the deployment (``MODSTREAM_AZURE_DEPLOYMENT``, default the model name) with the
    ``api-version`` query parameter and the ``api-key`` header. ``http_client``: a transport
    of the caller's (tests), instead of aiohttp.
    """
    timeout = httpx2.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
    if settings.azure_endpoint is not None:
        azure_key = settings.azure_api_key.get_secret_value()
        if not azure_key:
            raise ConfigError(
                "MODSTREAM_AZURE_API_KEY (or AZURE_OPENAI_API_KEY) is required "
                "with MODSTREAM_AZURE_ENDPOINT"
            )
        return AsyncAzureOpenAI(
            azure_endpoint=settings.azure_endpoint,
            azure_deployment=settings.azure_deployment or settings.model,
            api_version=settings.azure_api_version,
            api_key=azure_key,
            max_retries=0,
            timeout=timeout,
            http_client=http_client or DefaultAioHttpClient(timeout=timeout),
        )
    key = settings.openai_api_key.get_secret_value()
    if not key and settings.openai_base_url is None:
        raise ConfigError("OPENAI_API_KEY is required when OPENAI_BASE_URL is not set")
    return AsyncOpenAI(
        api_key=key or "unused",
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=timeout,
        # aiohttp under the SDK: about a quarter less CPU per call than httpcore, whose
        # connection-pool scan also grows with concurrency (tests/benchmarks/client_overhead).
        http_client=http_client or DefaultAioHttpClient(timeout=timeout),
    )


async def check_topics(consumer: AIOKafkaConsumer, settings: Settings) -> None:
    """Fail at start-up, naming the topic, rather than block on a missing one later."""
    existing = await consumer.topics()
    wanted = {
        "MODSTREAM_INPUT_TOPIC": settings.input_topic,
        "MODSTREAM_VERDICT_TOPIC": settings.verdict_topic,
        "MODSTREAM_USAGE_TOPIC": settings.usage_topic,
        "MODSTREAM_DLQ_TOPIC": settings.dlq_topic,
    }
    missing = [f"{name}={topic}" for name, topic in wanted.items() if topic not in existing]
    if missing:
        raise ConfigError("topics do not exist on the broker: " + ", ".join(missing))


async def output_limits(options: dict[str, Any], topics: Topics) -> dict[str, int]:
    """The largest record each output topic takes: its ``max.message.bytes``, within the
    producer's ``max_request_size``. Dead letters are cut to it; other outputs over it are
    dead-lettered instead of being retried forever."""
    names = [topics.verdicts, topics.usage, topics.dead_letters]
    found: dict[str, int] = {}
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        wanted = {"max.message.bytes": None}
        resources = [ConfigResource(ConfigResourceType.TOPIC, n, wanted) for n in names]
        for response in await admin.describe_configs(resources):
            for error, _, _, name, entries in response.resources:
                for entry in entries if not error else ():
                    if entry[0] == "max.message.bytes":
                        found[name] = int(entry[1])
    except (KafkaError, OSError, ValueError) as exc:  # e.g. no DescribeConfigs ACL
        log.warning("cannot read the output topics' max.message.bytes", error=str(exc))
    finally:
        await admin.close()
    limits = {n: min(found.get(n, DEFAULT_TOPIC_MAX_BYTES), MAX_REQUEST_BYTES) for n in names}
    log.debug("output size limits", **{n.replace(".", "_"): b for n, b in limits.items()})
    return limits


def model_stages(
    settings: Settings,
    client: AsyncOpenAI,
    metrics: Metrics | None = None,
    chat: ChatSender | None = None,
) -> tuple[Classifier, Admitter]:
    """The classifier and the admitter its prompt budget implies, from the settings.

    ``chat`` sends its chat requests (an entered :func:`consumer.chat_client.sender`; default
    the SDK's own path over ``client``)."""
    metrics = metrics or Metrics()
    builder = PromptBuilder(load_policy(settings.policy_file), load_prompt(settings.prompt_file))
    params = settings.request_params
    prices = PriceTable(
        "azure" if settings.server is Server.AZURE else "openai",
        load_prices(settings.prices_file) if settings.prices_file is not None else None,
    )
    prices.warn_unknown(settings.model)  # once, here: not once per message
    log.info(
        "chat request parameters",
        model=settings.model,
        response_format=settings.response_format,
        **params.describe(),
    )
    classifier = Classifier(
        client,
        model=settings.model,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        params=params,
        formats=ResponseFormats(settings.response_format, where=public_url(client.base_url)),
        builder=builder,
        limiter=Limiter(settings.concurrency, rpm=settings.rpm, tpm=settings.tpm),
        prices=prices,
        breaker=CircuitBreaker(
            failure_threshold=settings.circuit_failure_threshold,
            reset_s=settings.circuit_reset_s,
            on_change=metrics.circuit,
        ),
        max_backoff_s=settings.retry_max_backoff_s,
        on_retry=metrics.retry,
        metrics=metrics,
        poison_attempts=settings.poison_attempts,
        misconfig_repeats=settings.misconfig_repeats,
        usage_failures_kept=settings.usage_failures_kept,
        sender=chat,
    )
    budget = settings.context_window - params.completion_budget - classifier.overhead_tokens
    admitter = Admitter(
        model=settings.model,
        budget_tokens=budget,
        max_input_tokens=settings.max_input_tokens,
        oversize=settings.oversize,
    )
    return classifier, admitter


def batcher(settings: Settings, classifier: Classifier) -> Batcher | None:
    """The micro-batcher, when ``MODSTREAM_BATCH_SIZE`` is above 1."""
    if settings.batch_size <= 1:
        return None
    return Batcher(
        classifier,
        size=settings.batch_size,
        max_tokens=settings.batch_max_tokens,
        linger_s=settings.batch_linger_ms / 1000,
    )


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    exit_when_idle: float | None = None,
    metrics: Metrics | None = None,
    report_health_port: Callable[[int], None] | None = None,
) -> Pipeline:
    """Run the consumer until ``stop`` is set, a signal arrives, or it has been idle.

    ``report_health_port``: a worker of ``--workers N`` (``consumer.workers``) serves its health
    server on an ephemeral port of 127.0.0.1 and tells its supervisor which, through this.
    """
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    kafka = kafka_options(settings)
    async with AsyncExitStack() as stack:
        health = await _enter_health(stack, settings, metrics, report_health_port)
        client = await stack.enter_async_context(openai_client(settings))
        chat = await stack.enter_async_context(sender(settings.chat_client, client))
        exactly_once = settings.delivery is Delivery.EXACTLY_ONCE
        producer = AIOKafkaProducer(
            **kafka,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=MAX_REQUEST_BYTES,
            max_batch_size=PRODUCER_BATCH_BYTES,
        )
        pace_metadata_refresh(producer, settings.kafka_retry_backoff_ms / 1000)
        await enter_kafka(stack, producer, kafka)
        outbox: Outbox | None = None
        if exactly_once:
            # Verdicts and dead letters commit with their offsets; usage goes out at once on
            # the plain producer above, so every answered call is recorded whatever aborts.
            transactional = AIOKafkaProducer(
                **kafka,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_request_size=MAX_REQUEST_BYTES,
                max_batch_size=PRODUCER_BATCH_BYTES,
                transactional_id=settings.effective_transactional_id,
            )
            pace_metadata_refresh(transactional, settings.kafka_retry_backoff_ms / 1000)
            await enter_kafka(stack, transactional, kafka)
            outbox = Outbox(transactional, settings.group_id)
        consumer = AIOKafkaConsumer(
            **kafka,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_poll_records=settings.max_in_flight,
        )
        pace_metadata_refresh(consumer, settings.kafka_retry_backoff_ms / 1000)
        await enter_kafka(stack, consumer, kafka)
        await check_topics(consumer, settings)
        topics = Topics(settings.verdict_topic, settings.usage_topic, settings.dlq_topic)
        limits = await output_limits(kafka, topics)
        health.readiness = kafka_readiness(consumer, stop)
        classifier, admitter = model_stages(settings, client, metrics, chat)
        metrics.describe(
            version=__version__, model=settings.model, policy_version=classifier.policy.version
        )
        pipeline = Pipeline(
            settings,
            consumer=consumer,
            publisher=Publisher(producer, topics, limits),
            admitter=admitter,
            classifier=classifier,
            metrics=metrics,
            outbox=outbox,
            batcher=batcher(settings, classifier),
            # Room for the record's framing and our headers, which the size check counts too.
            dead_letter_max_bytes=limits[topics.dead_letters] - 2 * RECORD_OVERHEAD_BYTES,
        )
        consumer.subscribe(
            [settings.input_topic], listener=Rebalance(pipeline.on_revoked, pipeline.on_assigned)
        )
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
            first_tier=classifier.policy.first_tier is not None,
        )
        # What start-up built (clients, tokenizer tables, schemas) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it.
        gc.freeze()
        try:
            await pipeline.run(stop, exit_when_idle=exit_when_idle)
        except ExceptionGroup as group:
            # The task group wraps a fatal error (401/403, fenced) from a task: surface it.
            fatal = group.subgroup(lambda e: getattr(e, "fatal", False))
            if fatal is not None:
                raise _first(fatal) from None
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        stats = pipeline.stats
        log.info(
            "stopped",
            fetched=stats.fetched,
            verdicts=stats.verdicts,
            dead_letters=stats.dead_letters,
            commits=stats.commits,
        )
        return pipeline


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


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


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
