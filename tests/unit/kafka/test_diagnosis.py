"""consumer.kafka.diagnosis and client.start_kafka: a start that fails says why, in one line.

Each kind of failure is made for real on this machine: a port nothing listens on (refused), a
name in the ``.invalid`` domain, which never resolves (RFC 2606), a socket that listens but
never answers (no answer), and one that closes the connection on the first request. A
broker that answers is tested in tests/e2e/test_cli_kafka.py and tests/integration (SASL, TLS).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

import consumer.kafka.client as client
import consumer.kafka.diagnosis as diagnosis
from consumer.errors import ConfigError
from consumer.kafka.client import admin_client, kafka_start_problem, start_kafka
from consumer.settings import load_settings
from tests.fake_server import free_port

UNKNOWN_HOST = "nosuchhost.invalid"


def options(servers: str) -> dict[str, Any]:
    """What kafka_options gives for plaintext, pointed at ``servers``."""
    opts = client.kafka_options(load_settings())
    return opts | {"bootstrap_servers": servers}


@pytest.fixture
def silent() -> Iterator[str]:
    """A server that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def hangs_up() -> AsyncIterator[str]:
    """A server that reads the first request and closes the connection."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


# ---- kafka_start_problem --------------------------------------------------------------------


async def test_a_refused_connection_names_the_server_and_what_to_check() -> None:
    server = f"127.0.0.1:{free_port()}"
    problem = await kafka_start_problem(options(server))
    assert problem is not None
    assert problem.message.startswith(f"cannot reach Kafka at {server} ")
    assert "connection refused" in problem.message
    assert "MODSTREAM_KAFKA_BOOTSTRAP_SERVERS" in problem.message
    assert "SASL" not in problem.message  # not called a credentials problem


async def test_an_unknown_host_is_called_a_dns_problem() -> None:
    problem = await kafka_start_problem(options(f"{UNKNOWN_HOST}:9092"))
    assert problem is not None
    assert f"{UNKNOWN_HOST}:9092" in problem.message
    assert "unknown host" in problem.message
    assert "host name" in problem.message
    assert "refused" not in problem.message


async def test_a_server_that_never_answers_is_given_up_on_after_the_timeout(silent: str) -> None:
    problem = await kafka_start_problem(options(silent), timeout_s=0.2)
    assert problem is not None
    assert f"cannot reach Kafka at {silent} " in problem.message
    assert "no answer within 0.2 s" in problem.message


async def test_a_server_that_hangs_up_is_not_called_unreachable(hangs_up: str) -> None:
    problem = await kafka_start_problem(options(hangs_up), timeout_s=2)
    assert problem is not None
    assert "closed it on the first request" in problem.message
    assert "MODSTREAM_SECURITY_PROTOCOL" in problem.message


async def test_several_servers_are_each_named_with_their_reason() -> None:
    refused = f"127.0.0.1:{free_port()}"
    servers = f"{refused},{UNKNOWN_HOST}:9092"
    problem = await kafka_start_problem(options(servers))
    assert problem is not None
    message = problem.message
    assert f"any of MODSTREAM_KAFKA_BOOTSTRAP_SERVERS={servers}" in message
    assert f"{refused} connection refused" in message
    assert f"{UNKNOWN_HOST}:9092 unknown host" in message
    assert "\n" not in message


# ---- start_kafka ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient])
async def test_every_client_kind_fails_to_start_with_the_diagnosis(kind: type[Any]) -> None:
    opts = options(f"127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match="connection refused"):
        await start_kafka(kind(**opts), opts)


async def test_a_start_that_hangs_is_cut_short_by_the_probe(
    silent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiokafka alone would wait request_timeout_ms (40 s) for the silent server.
    monkeypatch.setattr(client, "SLOW_START_S", 0.1)
    monkeypatch.setattr(diagnosis, "PROBE_TIMEOUT_S", 0.2)
    opts = options(silent)
    producer = AIOKafkaProducer(**opts)
    with pytest.raises(ConfigError, match=r"no answer within 0\.2 s") as caught:
        await asyncio.wait_for(start_kafka(producer, opts), timeout=60)  # a hang guard
    # Given up on by the probe, not after aiokafka's own failure (that would be the cause).
    assert caught.value.__cause__ is None


async def test_the_admin_client_context_fails_with_the_diagnosis() -> None:
    opts = options(f"{UNKNOWN_HOST}:9092")
    with pytest.raises(ConfigError, match="unknown host"):
        async with admin_client(opts):
            pytest.fail("the admin client started")


def test_aiokafkas_bootstrap_lines_are_left_to_the_diagnosis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("aiokafka")
    with caplog.at_level(logging.INFO, logger="aiokafka"):
        log.error('Unable connect to "%s:%s": %s', "h", 1, "refused")
        log.warning('Unable to request metadata from "%s:%s": %s', "h", 1, "timeout")
        log.error("Unable connect to node with id %s: %s", 1, "refused")  # a running client
    assert [r.getMessage() for r in caplog.records] == ["Unable connect to node with id 1: refused"]
