"""health: /metrics, /healthz and /readyz over real HTTP on an ephemeral port; readiness from
a stand-in for aiokafka's consumer (assignment, and a metadata request to the broker)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client.parser import text_string_to_metric_families

from consumer.errors import ConfigError
from consumer.ops.health import HealthServer, kafka_readiness
from consumer.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


class StandInConsumer:
    """``assignment()`` and ``topics()`` as aiokafka's consumer answers them."""

    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.broker: str = "up"  # up | down | hangs

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def topics(self) -> set[str]:
        if self.broker == "down":
            raise KafkaConnectionError("Unable to connect to localhost:1")
        if self.broker == "hangs":
            await asyncio.Event().wait()
        return {"in"}


@pytest_asyncio.fixture
async def server() -> AsyncIterator[HealthServer]:
    metrics = Metrics()
    async with HealthServer(metrics, port=0) as health:
        yield health


async def get(health: HealthServer, path: str, **headers: str) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{health.port}{path}", headers=headers) as response,
    ):
        body = await response.text()
        kind = response.headers["Content-Type"]
        return response.status, kind, body


async def ready(health: HealthServer) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{health.port}/readyz") as response,
    ):
        return response.status, await response.json()


async def test_healthz_answers_while_the_loop_runs(server: HealthServer) -> None:
    status, kind, body = await get(server, "/healthz")
    assert status == 200 and kind.startswith("application/json")
    assert '"alive"' in body


async def test_metrics_in_prometheus_text_and_openmetrics(server: HealthServer) -> None:
    server.metrics.verdict()
    status, kind, body = await get(server, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    (verdicts,) = [
        s
        for s in families["modstream_messages_processed"].samples
        if s.labels["outcome"] == "verdict"
    ]
    assert verdicts.value == 1
    status, kind, body = await get(server, "/metrics", Accept="application/openmetrics-text")
    assert status == 200 and kind.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_not_ready_while_starting(server: HealthServer) -> None:
    status, body = await ready(server)
    assert status == 503
    assert body["status"] == "not ready" and "starting" in body["reason"]


async def test_ready_only_with_partitions_and_a_reachable_broker(server: HealthServer) -> None:
    consumer = StandInConsumer()
    stop = asyncio.Event()
    server.readiness = kafka_readiness(consumer, stop, broker_timeout_s=0.05)

    status, body = await ready(server)
    assert status == 503 and "no partitions assigned" in body["reason"]

    consumer.assigned = {TopicPartition("in", 0)}
    assert await ready(server) == (200, {"status": "ready"})

    consumer.broker = "down"
    status, body = await ready(server)
    assert status == 503 and body["reason"].startswith("broker unreachable: KafkaConnectionError")

    consumer.broker = "hangs"  # a broker that never answers must not hang the probe
    status, body = await ready(server)
    assert status == 503 and body["reason"].startswith("broker unreachable: TimeoutError")

    consumer.broker = "up"
    assert (await ready(server))[0] == 200
    stop.set()
    status, body = await ready(server)
    assert status == 503 and body["reason"].startswith("stopping")


async def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}.*MODSTREAM_METRICS_PORT"):
            async with HealthServer(Metrics(), port=port):
                pass
