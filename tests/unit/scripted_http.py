"""A scripted provider served over real HTTP on 127.0.0.1, for the lean chat sender.

The SDK path's unit tests script the provider with ``httpx2.MockTransport``; the lean path
sends over aiohttp, which no httpx transport intercepts. :class:`ScriptedServer` answers with
the same script: a handler that takes an ``httpx2.Request`` and returns an
``httpx2.Response`` (or raises httpx2's transport errors) is run per request, and what it
answers goes back over the socket: a response as is; a timeout as silence (the client's read
timeout ends it); a connection error or a dropped connection as an aborted connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from aiohttp import web

Handler = Callable[[httpx2.Request], httpx2.Response | Awaitable[httpx2.Response]]


class ScriptedServer:
    """One aiohttp server; each base URL ``/<n>/...`` answers from the handler ``n``."""

    def __init__(self) -> None:
        self.handlers: list[Handler] = []
        #: A ``BaseException`` a handler raised (``ScriptExhausted``): the test must fail.
        self.escaped: list[BaseException] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._silence = asyncio.Event()  # never set: a "timeout" waits on it

    def base_url(self, handler: Handler) -> str:
        """A base URL answered by ``handler``."""
        self.handlers.append(handler)
        return f"http://127.0.0.1:{self.port}/{len(self.handlers) - 1}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{n}/{path:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._silence.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        handler = self.handlers[int(request.match_info["n"])]
        asked = httpx2.Request(
            request.method,
            str(request.url),
            headers=list(request.headers.items()),
            content=await request.read(),
        )
        try:
            answer: Any = handler(asked)
            if isinstance(answer, Awaitable):
                answer = await answer
        except httpx2.TimeoutException:
            await self._silence.wait()
            raise web.HTTPServiceUnavailable() from None
        except httpx2.TransportError:
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPServiceUnavailable() from None  # written nowhere: the socket is gone
        except BaseException as exc:  # a script run out: fail the test, stop the retries
            self.escaped.append(exc)
            return web.Response(status=401, text=f"the script ran out: {exc}")
        assert isinstance(answer, httpx2.Response)
        body = answer.read()
        headers = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        }
        return web.Response(status=answer.status_code, body=body, headers=headers)
