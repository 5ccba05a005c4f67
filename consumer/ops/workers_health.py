"""The supervisor's operations server: one ``/metrics``, ``/healthz`` and ``/readyz`` for all
workers of ``modstream consume --workers N`` (see :mod:`consumer.ops.workers`).

Each worker serves its own :class:`consumer.ops.health.HealthServer` on an ephemeral port of
127.0.0.1 and tells the supervisor which; the supervisor serves ``MODSTREAM_METRICS_PORT``:

- ``/metrics``: every worker's registry, scraped (OpenMetrics) at request time, each sample with
  a ``worker="i"`` label, merged family by family (HELP and TYPE once), plus the supervisor's
  own series (restarts, workers up); in the format the scraper asks for. A worker that does
  not answer (restarting) is left out of that scrape; its counters start again from 0 when it
  is back, which Prometheus reads as a counter reset of that ``worker`` series.
- ``/readyz``: 200 only when every worker answers its own ``/readyz`` with 200; otherwise 503
  naming each worker that is not ready and why.
- ``/healthz``: 200 while the supervisor's loop answers and no worker is crash-looping
  (:meth:`consumer.ops.restarts.RestartPolicy.crash_looping`); 503 when one is, so the kubelet
  restarts the pod instead of it restarting the same worker forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from consumer.ops.port import probes, serve_site

log = structlog.get_logger(__name__)

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Label added to every worker sample.
WORKER_LABEL = "worker"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What the supervisor knows of one worker when a probe or scrape comes in."""

    index: int
    state: str  # starting | running | restarting | exited | stopping
    port: int | None  # the worker's own health server, once it reported it
    crash_looping: bool = False


def merge_metrics(scrapes: Mapping[int, str], own: Iterable[Metric] = ()) -> list[Metric]:
    """Worker scrapes (OpenMetrics text by worker index) as one list of families.

    Every worker sample gets ``worker="i"``; a family keeps the HELP and TYPE of the first
    worker that has it (a family another worker sends with another type, as during a rolling
    upgrade, is left out for that worker). ``own`` (the supervisor's families, labelled by the
    caller) come first. Samples of one worker stay together, so each histogram's buckets stay
    contiguous per label set.
    """
    merged: dict[str, Metric] = {}
    for family in own:
        merged[family.name] = family
    for index in sorted(scrapes):
        try:
            families = list(text_string_to_metric_families(scrapes[index]))  # type: ignore[no-untyped-call]
        except ValueError as exc:
            log.warning("unreadable worker metrics left out", worker=index, error=str(exc))
            continue
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif target.type != family.type:
                log.debug("metric type differs between workers", metric=family.name)
                continue
            label = {WORKER_LABEL: str(index)}
            target.samples.extend(s._replace(labels={**s.labels, **label}) for s in family.samples)
    return list(merged.values())


def render(families: Sequence[Metric], accept: str) -> tuple[bytes, str]:
    """The families encoded as the ``Accept`` header asks (OpenMetrics or Prometheus text)."""

    class _Static(Collector):
        def collect(self) -> Iterable[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static())
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


def merge_readiness(reasons: Mapping[int, str | None]) -> str | None:
    """``None`` (ready) when every worker is ready; else why not, worker by worker."""
    if not reasons:
        return "no workers"
    waiting = [f"worker {i}: {reasons[i]}" for i in sorted(reasons) if reasons[i] is not None]
    return "; ".join(waiting) or None


class GroupHealth:
    """The supervisor's ``/metrics``, ``/healthz`` and ``/readyz``, as an async context."""

    def __init__(
        self,
        statuses: Callable[[], list[WorkerStatus]],
        registry: CollectorRegistry,
        *,
        port: int,
        host: str,
        stopping: Callable[[], bool],
        timeout_s: float = 3.0,
    ) -> None:
        self._statuses = statuses
        self._registry = registry
        self._stopping = stopping
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.host = host
        self.port = port
        self._runner = probes(metrics=self._metrics, healthz=self._healthz, readyz=self._readyz)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self.port = await serve_site(self._runner, self.host, self.port)
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        log.info("serving /metrics, /healthz, /readyz for all workers", port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        await self._runner.cleanup()

    async def _get(self, port: int, path: str, **headers: str) -> tuple[int, str]:
        assert self._session is not None
        url = f"http://127.0.0.1:{port}{path}"
        async with self._session.get(url, headers=headers) as response:
            return response.status, await response.text()

    async def _scrape(self, status: WorkerStatus) -> str | None:
        if status.port is None:
            return None
        try:
            code, text = await self._get(status.port, "/metrics", Accept=OPENMETRICS)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return text if code == 200 else None

    async def _ready(self, status: WorkerStatus) -> str | None:
        if status.state != "running" or status.port is None:
            return status.state
        try:
            code, text = await self._get(status.port, "/readyz")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"its health server does not answer: {type(exc).__name__}"
        if code == 200:
            return None
        try:
            reason = json.loads(text).get("reason")
        except (ValueError, AttributeError):
            reason = None
        return str(reason or f"HTTP {code}")

    async def _metrics(self, request: web.Request) -> web.Response:
        statuses = self._statuses()
        texts = await asyncio.gather(*(self._scrape(s) for s in statuses))
        scrapes = {s.index: t for s, t in zip(statuses, texts, strict=True) if t is not None}
        families = merge_metrics(scrapes, self._registry.collect())
        body, content_type = render(families, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, _: web.Request) -> web.Response:
        looping = [s.index for s in self._statuses() if s.crash_looping]
        if looping:
            body = {"status": "crash-looping", "workers": looping}
            return web.json_response(body, status=503)
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        statuses = self._statuses()
        if self._stopping():
            reasons: dict[int, str | None] = {s.index: "stopping" for s in statuses}
        else:
            found = await asyncio.gather(*(self._ready(s) for s in statuses))
            reasons = {s.index: r for s, r in zip(statuses, found, strict=True)}
        reason = merge_readiness(reasons)
        workers = {str(i): r or "ready" for i, r in sorted(reasons.items())}
        body: dict[str, Any] = {"status": "ready" if reason is None else "not ready"}
        if reason is not None:
            body["reason"] = reason
        body["workers"] = workers
        return web.json_response(body, status=200 if reason is None else 503)
