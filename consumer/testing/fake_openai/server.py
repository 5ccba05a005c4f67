"""Running the fake: ``serve`` for the CLI (blocking) and ``running_fake`` for in-process use.

Normal mode is the aiohttp app on plain asyncio, access logging off (it costs more than a
reply), and handler cancellation on, so a hanging request stops when its client gives up
instead of holding a task for ``hang_s``. Benchmark mode (``benchmark``) is the lean server of
:mod:`.lean_http`, on uvloop when it is installed (``loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from consumer.errors import ConfigError
from consumer.testing.fake_openai.app import build_app
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.lean_http import LeanServer

__all__ = ["FakeConfig", "running_fake", "serve"]

log = structlog.get_logger("consumer.testing.fake_openai")

#: At shutdown, in-flight handlers get this long (twice: finish, then cancel) before the exit;
#: a hanging request must not hold a test suite for ``hang_s``.
SHUTDOWN_GRACE_S = 0.25


class _Lean:
    """The lean server behind the runner interface ``_start`` returns."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server

    async def cleanup(self) -> None:
        await self.server.close()


async def _start(config: FakeConfig, host: str, port: int) -> tuple[web.AppRunner | _Lean, int]:
    if config.benchmark:
        lean = LeanServer(config)
        return _Lean(lean), await lean.start(host, port)
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

    ``port=0`` picks a free port. Use :class:`~consumer.testing.fake_openai.admin.FakeAdmin` with
    the URL to read stats or change knobs.
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
    log.info(
        "fake-openai listening (NOT a model)",
        url=f"http://{host}:{bound}/v1",
        server="lean (benchmark mode)" if config.benchmark else "aiohttp",
        event_loop=type(loop).__module__.split(".")[0],
        **knobs,
    )
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
    if not _run(_serve(config, host, port), _loop_factory(config)):
        raise SystemExit(1)


def _loop_factory(config: FakeConfig) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when ``loop`` asks for it (auto: in benchmark mode, when installed)."""
    if config.loop == "asyncio" or (config.loop == "auto" and not config.benchmark):
        return None
    try:
        import uvloop  # noqa: PLC0415  (an optional extra: modstream[fast])
    except ImportError:
        if config.loop == "uvloop":
            raise ConfigError(
                "MODSTREAM_FAKE_LOOP=uvloop but uvloop is not installed: "
                "pip install 'modstream[fast]'"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(
    main: Coroutine[Any, Any, bool], factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> bool:
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
