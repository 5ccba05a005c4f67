"""Running the fake: ``serve`` for the CLI (blocking) and ``running_fake`` for in-process use.

Plain asyncio (uvloop is not a dependency), access logging off (it costs more than a reply),
and handler cancellation on, so a hanging request stops when its client gives up instead of
holding a task for ``hang_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from consumer.fake_openai.app import build_app
from consumer.fake_openai.config import FakeConfig

__all__ = ["FakeConfig", "running_fake", "serve"]

log = structlog.get_logger("consumer.fake_openai")

#: At shutdown, in-flight handlers get this long (twice: finish, then cancel) before the exit;
#: a hanging request must not hold a test suite for ``hang_s``.
SHUTDOWN_GRACE_S = 0.25


async def _start(config: FakeConfig, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        build_app(config),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def running_fake(
    config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve the fake on this event loop; yields its base URL, e.g. ``http://127.0.0.1:PORT/v1``.

    ``port=0`` picks a free port. Use :class:`~consumer.fake_openai.admin.FakeAdmin` with the
    URL to read stats or change knobs.
    """
    runner, bound = await _start(config or FakeConfig(), host, port)
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        await runner.cleanup()


async def _serve(config: FakeConfig, host: str, port: int) -> bool:
    """Serve until a signal; False when the address could not be bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner, bound = await _start(config, host, port)
    except OSError as exc:
        log.error("fake-openai cannot listen", host=host, port=port, error=str(exc))
        return False
    changed = config.model_dump(exclude_defaults=True)
    knobs = {k: v for k, v in config.public().items() if k in changed}
    log.info("fake-openai listening (NOT a model)", url=f"http://{host}:{bound}/v1", **knobs)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("fake-openai stopped")
    return True


def serve(config: FakeConfig, *, host: str = "127.0.0.1", port: int = 8400) -> None:
    """Serve until SIGINT or SIGTERM, then return (exit status 0).

    When the address cannot be bound, log why and exit with status 1 (no traceback).
    """
    if not asyncio.run(_serve(config, host, port)):
        raise SystemExit(1)
