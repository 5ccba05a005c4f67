"""The operations HTTP server: ``/metrics``, ``/healthz`` and ``/readyz`` (aiohttp).

Started first in the app's lifespan on ``MODSTREAM_METRICS_PORT`` (0: no server) and stopped
last, so probes and scrapes answer during start-up and shutdown too.

- ``/metrics``: the app's own registry, in the Prometheus text format (OpenMetrics when the
  scraper asks for it).
- ``/healthz``: liveness. Answering at all proves the event loop runs; nothing else is checked,
  so a slow provider or broker never gets the pod restarted.
- ``/readyz``: readiness. 200 only when this member owns input partitions and the broker
  answers a metadata request; otherwise 503 with ``{"status": "not ready", "reason": ...}``
  (starting, stopping, no partitions assigned, broker unreachable).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Self

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from prometheus_client.exposition import choose_encoder

from consumer.ops.metrics import Metrics
from consumer.ops.port import probes, serve_site

log = structlog.get_logger(__name__)

#: Why the consumer is not ready, or ``None`` when it is.
Readiness = Callable[[], Awaitable[str | None]]


async def _starting() -> str | None:
    return "starting: the Kafka clients are not running yet"


def kafka_readiness(
    consumer: AIOKafkaConsumer, stop: asyncio.Event, *, broker_timeout_s: float = 2.0
) -> Readiness:
    """Ready = not stopping, partitions assigned, and the broker answers within the timeout."""

    async def check() -> str | None:
        if stop.is_set():
            return "stopping: intake stopped, draining in-flight work"
        if not consumer.assignment():
            return (
                "no partitions assigned (joining the group, a rebalance in progress, or more "
                "consumers than input partitions)"
            )
        try:
            async with asyncio.timeout(broker_timeout_s):
                await consumer.topics()
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"broker unreachable: {type(exc).__name__}: {exc}"
        return None

    return check


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port``, as an async context."""

    def __init__(self, metrics: Metrics, *, port: int, host: str = "127.0.0.1") -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        #: Replaced by the app once the Kafka clients run (see :func:`kafka_readiness`).
        self.readiness: Readiness = _starting
        self._runner = probes(metrics=self._metrics, healthz=self._healthz, readyz=self._readyz)

    async def __aenter__(self) -> Self:
        self.port = await serve_site(self._runner, self.host, self.port)
        log.info("serving /metrics, /healthz, /readyz", host=self.host, port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(
            body=encode(self.metrics.registry), headers={"Content-Type": content_type}
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        reason = await self.readiness()
        body: dict[str, Any] = (
            {"status": "ready"} if reason is None else {"status": "not ready", "reason": reason}
        )
        return web.json_response(body, status=200 if reason is None else 503)
