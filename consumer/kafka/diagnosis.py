"""Why a Kafka client could not start, in one line a person can act on.

aiokafka logs the real cause of a failed bootstrap and raises a bare "Unable to bootstrap from
[...]" (and against a server that never answers, it waits ``request_timeout_ms``, 40 s, per
server and step first). :func:`kafka_start_problem` asks each bootstrap server once more,
directly and briefly, and names what it found: an unknown host, a refused connection, no
answer, a SASL login the broker rejected, a TLS handshake that failed, or a listener that
drops plain requests (it wants SASL or TLS). Every message names the servers and the settings
to check; none holds the password.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from consumer.errors import ConfigError

#: How long the diagnosis waits for one server (connect, ApiVersions, SASL, Metadata each).
PROBE_TIMEOUT_S = 5.0

_SERVERS = "MODSTREAM_KAFKA_BOOTSTRAP_SERVERS"


@dataclass(frozen=True, slots=True)
class Unreachable:
    """One bootstrap server that did not answer: why, and what to check (after "Check")."""

    server: str
    why: str
    check: str


async def kafka_start_problem(
    options: dict[str, Any], *, timeout_s: float | None = None
) -> ConfigError | None:
    """Why no Kafka client can start with ``options``; ``None`` when a server answers now.

    Each bootstrap server is asked in turn (at most ``timeout_s``, default
    :data:`PROBE_TIMEOUT_S`, per step). A credentials, SASL or TLS problem is named as soon as
    one server shows it; otherwise, when no server answers, the error lists each server with
    its reason (unknown host, refused, no answer).
    """
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    servers = options["bootstrap_servers"]
    unreachable: list[Unreachable] = []
    for host, port, _ in collect_hosts(servers):
        found = await _probe(host, port, options, timeout_s)
        if found is None:
            return None
        if isinstance(found, ConfigError):
            return found
        unreachable.append(found)
    return _cannot_reach(servers, unreachable)


def _cannot_reach(servers: str | list[str], unreachable: list[Unreachable]) -> ConfigError:
    checks = "Check " + "; ".join(dict.fromkeys(u.check for u in unreachable))
    if len(unreachable) == 1:
        [one] = unreachable
        return ConfigError(f"cannot reach Kafka at {one.server} ({_SERVERS}): {one.why}. {checks}")
    listed = servers if isinstance(servers, str) else ",".join(servers)
    reasons = "; ".join(f"{u.server} {u.why}" for u in unreachable)
    return ConfigError(f"cannot reach Kafka at any of {_SERVERS}={listed}: {reasons}. {checks}")


async def _probe(
    host: str, port: int, options: dict[str, Any], timeout_s: float
) -> Unreachable | ConfigError | None:
    server = f"{host}:{port}"
    where = f"Kafka at {server}"
    mechanism = options.get("sasl_mechanism")
    try:
        conn = await create_conn(
            host,
            port,
            client_id=options["client_id"],
            request_timeout_ms=int(timeout_s * 1000),
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
        return _dropped(where, exc, options)
    except ConnectionResetError:
        if options.get("ssl_context") is None:
            return Unreachable(server, "reset the connection", "the host and port")
        return ConfigError(
            f"{where} reset the connection during the TLS handshake: the listener probably "
            "does not speak TLS. Check MODSTREAM_SECURITY_PROTOCOL and the port"
        )
    except socket.gaierror:
        return Unreachable(
            server,
            f"unknown host (no DNS entry for {host!r})",
            "the host name",
        )
    except ConnectionRefusedError:
        return Unreachable(
            server,
            "connection refused (nothing listens on that port)",
            "the host and port, and that the broker runs (`make kafka-up` starts a local one)",
        )
    except TimeoutError:
        return Unreachable(
            server,
            f"no answer within {timeout_s:g} s",
            "the host and port, that no firewall drops the traffic, and that the port is Kafka's",
        )
    except OSError as exc:  # e.g. network unreachable
        return Unreachable(server, exc.strerror or str(exc), "the host and port")
    except KafkaError as exc:
        return Unreachable(server, f"{type(exc).__name__}: {exc}", "the host and port")
    return None


def _dropped(
    where: str, exc: ssl.SSLError | KafkaConnectionError, options: dict[str, Any]
) -> ConfigError:
    tls = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(tls, ssl.SSLError):
        return ConfigError(
            f"TLS with {where} failed: {tls}. Check that the listener speaks TLS, "
            "MODSTREAM_SSL_CAFILE (the broker's CA) and, when the broker wants a client "
            "certificate, MODSTREAM_SSL_CERTFILE / MODSTREAM_SSL_KEYFILE"
        )
    protocol = options["security_protocol"]
    mechanism = options.get("sasl_mechanism")
    unused = (
        f" (MODSTREAM_SASL_MECHANISM is set, but {protocol} never logs in)"
        if mechanism and not protocol.startswith("SASL")
        else ""
    )
    return ConfigError(
        f"{where} accepted a {protocol} connection, then closed it on the first "
        "request: the listener probably expects SASL or TLS, or is not Kafka's. Check "
        f"MODSTREAM_SECURITY_PROTOCOL (SASL_PLAINTEXT, SASL_SSL or SSL), the port and {_SERVERS}"
        + unused
    )
