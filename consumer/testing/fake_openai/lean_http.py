"""A minimal HTTP/1.1 server on asyncio Protocols for benchmark mode (no aiohttp per request).

It speaks what OpenAI clients and the test harness send (:mod:`.lean_wire` reads the requests
and writes the responses): keep-alive, pipelined requests answered in order, requests split
over any number of reads, ``Expect: 100-continue``; a request it cannot read is answered with
the error and the connection closed. Routes (:func:`route`): ``POST /v1/chat/completions``,
``POST /v1/moderations``, ``GET /v1/models``, the ``/_fake/*`` admin routes (as
:mod:`.admin_routes` serves them, but for the request log and the batch counters); any other
path is a 404, a known path with another method a 405. It serves no Files or Batches API: a
batch's cost is not what benchmarks measure, so ``/v1/files`` and ``/v1/batches`` are 404s.

No task per request: an answer is computed in ``data_received`` and written at once, or after
its latency by a ``call_later`` timer; answers on one connection are written in request order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson
import structlog

from consumer.testing.fake_openai import admin_routes
from consumer.testing.fake_openai.bench import BenchApi
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Fail
from consumer.testing.fake_openai.lean_wire import (
    Answer,
    Incomplete,
    Refused,
    read_request,
    response,
)
from consumer.testing.fake_openai.state import dumps

log = structlog.get_logger("consumer.testing.fake_openai")

#: Answers queued on one connection (pipelined, waiting out their latency) before it stops
#: reading until they are written.
MAX_PENDING = 1024

Handler = Callable[[str, str, str, dict[bytes, bytes], bytes], Answer]


def route(api: BenchApi) -> Handler:
    """The request handler over ``api``: (method, path, query, headers, body) -> Answer."""
    posts = {
        "/v1/chat/completions": api.chat,
        "/v1/moderations": api.moderations,
    }
    gets = {"/v1/models": api.models}
    known = {*posts, *gets, *admin_routes.PATHS}

    def handle(
        method: str, path: str, query: str, headers: dict[bytes, bytes], body: bytes
    ) -> Answer:
        if method == "POST" and (post := posts.get(path)) is not None:
            return post(body, headers)
        if method == "GET" and (get := gets.get(path)) is not None:
            return get(body, headers)
        if path.startswith("/_fake/"):
            answer = admin(api, method, path, body)
            if answer is not None:
                return answer
        if path in known:
            message = f"Method {method} is not allowed for {path}."
            return Answer(405, Fail.bad_request(message).body())
        return api.not_found(method, path)

    return handle


def admin(api: BenchApi, method: str, path: str, raw: bytes) -> Answer | None:
    """Benchmark mode's ``/_fake/*`` routes; None for a path and method that are not one."""
    if path == "/_fake/health" and method == "GET":
        return Answer(200, b'{"status":"ok"}')
    if path == "/_fake/stats" and method == "GET":
        return Answer(200, orjson.dumps(api.counters.snapshot()))
    if path == "/_fake/reset" and method == "POST":
        api.reset()
        return Answer(200, orjson.dumps(api.counters.snapshot()))
    if path == "/_fake/config" and method == "GET":
        return Answer(200, dumps(api.config.public()))
    if path == "/_fake/config" and method == "PATCH":
        try:
            api.patch(raw)
        except ValueError as exc:
            return _refused(str(exc))
        return Answer(200, dumps(api.config.public()))
    if path == "/_fake/requests" and method == "GET":
        return _refused("benchmark mode keeps no request log (MODSTREAM_FAKE_BENCHMARK)")
    return None


def _refused(message: str) -> Answer:
    return Answer(400, Fail.bad_request(message).body())


class _Slot:
    """One answer on its way out: ``data`` is set once it may be written."""

    __slots__ = ("close", "data", "timer")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False
        self.timer: asyncio.TimerHandle | None = None


class Connection(asyncio.Protocol):
    """One client connection: parse, dispatch, answer in order."""

    def __init__(self, handler: Handler, connections: set[Connection]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # the unread rest of what arrived
        self.pending: deque[_Slot] = deque()
        self.done = False  # a response that closes was queued: read no more
        self.paused = False
        self.continued = False  # 100 Continue sent for the request being received
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast("asyncio.Transport", transport)
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for slot in self.pending:
            if slot.timer is not None:
                slot.timer.cancel()
        self.pending.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        buffer: bytes | bytearray = data
        if self.buffer:  # the rest of a request split over reads (amortised appends)
            self.buffer += data
            buffer = self.buffer
        start = 0
        size = len(buffer)
        while start < size and not self.done:
            used = self._one(buffer, start)
            if used == 0:
                break
            start = used
        if start >= size or self.done:
            self.buffer = bytearray()
        elif start or buffer is not self.buffer:
            self.buffer = bytearray(memoryview(buffer)[start:])
        if len(self.pending) >= MAX_PENDING and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _one(self, buffer: bytes | bytearray, start: int) -> int:
        """Handle the request at ``start`` if it is complete; where the next one starts, or 0
        (wait for more bytes)."""
        request = read_request(buffer, start)
        if isinstance(request, Incomplete):
            if request.expects_continue and not self.continued and self.transport is not None:
                self.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return 0
        if isinstance(request, Refused):
            self._refuse(*request)
            return 0
        self.continued = False
        method, path = request.method, request.path
        try:
            answer = self.handler(method, path, request.query, request.headers, request.body)
        except Exception:  # a bug must answer 500, not kill the connection silently
            log.exception("fake-openai benchmark handler failed", method=method, path=path)
            answer = Answer(500, Fail.server_error().body())
        self._queue(answer, close=request.close)
        return request.end

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot be read, after those before it, and close."""
        self._queue(Answer(status, Fail.bad_request(message).body()), close=True)

    def _queue(self, answer: Answer, *, close: bool) -> None:
        slot = _Slot()
        slot.close = close
        if close:
            self.done = True
        if answer.delay > 0:
            slot.timer = self.loop.call_later(answer.delay, self._ready, slot, answer)
            self.pending.append(slot)
            return
        slot.data = response(answer, close=close)
        if not self.pending:  # the common case: nothing before it, write now
            self._write(slot)
            return
        self.pending.append(slot)

    def _ready(self, slot: _Slot, answer: Answer) -> None:
        slot.timer = None
        slot.data = response(answer, close=slot.close)
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.pending[0].data is not None:
            if not self._write(self.pending.popleft()):
                return
        if self.paused and len(self.pending) < MAX_PENDING // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _write(self, slot: _Slot) -> bool:
        """Write ``slot``; False once the connection is gone or closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        assert slot.data is not None
        transport.write(slot.data)
        if slot.close:
            transport.close()
            return False
        return True


class LeanServer:
    """A listening benchmark-mode server: ``await start()``, then ``await close()``."""

    def __init__(self, config: FakeConfig) -> None:
        self.api = BenchApi(config)
        self.handler = route(self.api)
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self.handler, self.connections), host, port, backlog=1024
        )
        sockets = self.server.sockets
        return int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every connection (answers still waiting are dropped)."""
        if self.server is None:
            return
        self.server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)
        self.server = None


@contextlib.asynccontextmanager
async def lean_server(config: FakeConfig, host: str, port: int) -> AsyncIterator[Any]:
    """Serve in benchmark mode on this loop; yields the bound port."""
    server = LeanServer(config)
    bound = await server.start(host, port)
    try:
        yield bound
    finally:
        await server.close()
