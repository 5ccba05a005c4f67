"""The operations port (``MODSTREAM_METRICS_PORT``): one aiohttp app of three routes started
on it.

Shared by the consumer's health server (:mod:`consumer.ops.health`) and the ``--workers``
supervisor's (:mod:`consumer.ops.workers_health`), which must not import Kafka's client to serve it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from consumer.errors import ConfigError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def probes(*, metrics: Handler, healthz: Handler, readyz: Handler) -> web.AppRunner:
    """The app of ``/metrics``, ``/healthz`` and ``/readyz``, with no access log (probes and
    scrapes would flood it)."""
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return web.AppRunner(app, access_log=None)


async def serve_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Start ``runner`` on ``host:port``; the port it listens on (the kernel's pick for 0).
    A port that cannot be had is a :class:`ConfigError` naming MODSTREAM_METRICS_PORT."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}. "
            "Choose another MODSTREAM_METRICS_PORT (0 turns the server off)"
        ) from exc
    sockets = [s for s in runner.addresses if isinstance(s, tuple)]
    return int(sockets[0][1]) if sockets else port
