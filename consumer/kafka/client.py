"""Kafka clients from the settings: the options every client shares, started with a clear error."""

from __future__ import annotations

import ssl
from contextlib import AsyncExitStack, suppress
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from consumer.errors import ConfigError
from consumer.settings import Settings

KafkaClient = TypeVar("KafkaClient", AIOKafkaProducer, AIOKafkaConsumer)


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
