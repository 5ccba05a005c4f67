"""Kafka clients from the settings: the options every client shares, started with a clear error.

Every client modstream starts (the consumer and producers of ``consume`` and ``replay``, the
admin client behind topics, the range readers of ``report`` and ``eval``, the producer of
``sample``) starts through :func:`start_kafka`, so a broker that cannot be reached or refuses
us is one :class:`~consumer.errors.ConfigError` line (:mod:`consumer.kafka.diagnosis`) in every
command, within seconds. Only the start: once a client runs, a broker that goes away is
transient and retried (:mod:`consumer.kafka.translate`, :mod:`consumer.kafka.pacing`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

from consumer.errors import ConfigError
from consumer.kafka.diagnosis import kafka_start_problem
from consumer.settings import Settings

__all__ = ["admin_client", "enter_kafka", "kafka_options", "kafka_start_problem", "start_kafka"]

KafkaClient = TypeVar("KafkaClient", AIOKafkaProducer, AIOKafkaConsumer)

#: How long a start may take before the servers are asked directly whether any answers.
#: aiokafka itself waits ``request_timeout_ms`` (40 s) per server and step for a silent one;
#: a broker that answers the probe is only slow, and its start is awaited to the end.
SLOW_START_S = 5.0

#: aiokafka's line per bootstrap server that failed (its client module logs as "aiokafka"),
#: written only while a client starts: a start that fails says the same, for every server, in
#: its one error (``start_kafka``); one that succeeds through another server needs neither.
_BOOTSTRAP_LINES = frozenset(
    {'Unable connect to "%s:%s": %s', 'Unable to request metadata from "%s:%s": %s'}
)


def _not_a_bootstrap_line(record: logging.LogRecord) -> bool:
    return record.msg not in _BOOTSTRAP_LINES


logging.getLogger("aiokafka").addFilter(_not_a_bootstrap_line)


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection, retry and security options shared by every Kafka client.

    Every key is one that ``AIOKafkaConsumer``, ``AIOKafkaProducer`` and ``AIOKafkaAdminClient``
    all accept. ``retry_backoff_ms`` paces their retries of failed requests; aiokafka 0.14 has
    no reconnect backoff of its own (no ``reconnect_backoff_ms``), and its metadata refresh
    retries as soon as a waiting sender or fetcher asks: ``serve`` paces that loop with
    ``consumer.kafka.pacing``, and ``consumer.ops.logs.RepeatFilter`` collapses its log lines.
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


async def start_kafka(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient, options: dict[str, Any]
) -> None:
    """Start ``client`` (built from ``options``); when it cannot, a ConfigError that says why.

    Refused, unknown host, no answer, SASL or TLS: one line naming the bootstrap servers and
    the settings to check (:func:`~consumer.kafka.diagnosis.kafka_start_problem`). A failed
    start leaves nothing open.
    """
    try:
        await _start(client, options)
    except BaseException:
        with suppress(Exception):  # a failed start leaves the client's own resources open
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        raise


async def _start(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient, options: dict[str, Any]
) -> None:
    starting = asyncio.ensure_future(client.start())
    try:
        done, _ = await asyncio.wait({starting}, timeout=SLOW_START_S)
        if not done and (problem := await kafka_start_problem(options)) is not None:
            raise problem
        await starting
    except KafkaConnectionError as exc:
        found = await kafka_start_problem(options)
        raise found or ConfigError(
            f"Kafka at {options['bootstrap_servers']} answers, yet the client could not start "
            f"({exc}); the broker may still be starting. Check MODSTREAM_KAFKA_BOOTSTRAP_SERVERS "
            "and try again"
        ) from exc
    finally:
        if not starting.done():
            starting.cancel()
            await asyncio.wait({starting})


async def enter_kafka(
    stack: AsyncExitStack, client: KafkaClient, options: dict[str, Any]
) -> KafkaClient:
    """Start a Kafka client (:func:`start_kafka`) and stop it when ``stack`` closes."""
    await start_kafka(client, options)
    stack.push_async_callback(client.stop)
    return client


@asynccontextmanager
async def admin_client(options: dict[str, Any]) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, started (:func:`start_kafka`) and closed on leaving."""
    admin = AIOKafkaAdminClient(**options)
    await start_kafka(admin, options)
    try:
        yield admin
    finally:
        await admin.close()
