"""The fake's mutable state and the steps every API request shares.

:class:`Knobs` is what both servers hold (the aiohttp app's :class:`FakeState` and benchmark
mode's :class:`~consumer.testing.fake_openai.bench.BenchApi`): the knobs in force, the fault
dice and the rate-limit buckets, so ``PATCH /_fake/config``, ``POST /_fake/reset`` and a 429
mean the same in both. Everything runs on one event loop, so the state needs no locks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

import orjson
from aiohttp import web

from consumer.testing.fake_openai.batches import BatchStore
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Dice, Fail, Outcome
from consumer.testing.fake_openai.files import FileStore
from consumer.testing.fake_openai.ratelimit import RateLimiter
from consumer.testing.fake_openai.stats import Stats
from consumer.testing.fake_openai.usage import PrefixCache

#: Outcomes answered with an error status (counted when the error is sent).
ERRORS = frozenset({Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.UNAVAILABLE})


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response, serialized with orjson (compact; the same JSON as json.dumps)."""
    return web.Response(
        body=dumps(data),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def loads(raw: bytes) -> Any:
    """Parse a request body: orjson, and json for what only json accepts (NaN, lone surrogate
    escapes), so a body parses exactly when it always did."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(data: Any) -> bytes:
    """Serialize a response: orjson, and json for what only json writes (NaN, lone surrogates,
    integers beyond 64 bits)."""
    try:
        return orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(data).encode()


class Knobs:
    """The knobs in force, and the fault dice and rate-limit buckets built from them."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.dice = Dice(config.seed)
        self.limiter = RateLimiter(config.rpm, config.tpm)

    def reconfigure(self, config: FakeConfig) -> None:
        """Switch to new knobs, rebuilding only what they change."""
        old, self.config = self.config, config
        if (old.rpm, old.tpm) != (config.rpm, config.tpm):
            self.limiter = RateLimiter(config.rpm, config.tpm)
        if old.seed != config.seed:
            self.dice = Dice(config.seed)

    def reset(self) -> None:
        """Refill the buckets and re-seed the dice."""
        self.limiter = RateLimiter(self.config.rpm, self.config.tpm)
        self.dice = Dice(self.config.seed)

    def patch(self, raw: bytes) -> None:
        """Apply a ``PATCH /_fake/config`` body; ValueError says what is wrong with it."""
        try:
            changes = loads(raw)
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object of knobs")
        self.reconfigure(self.config.patched(changes))

    def admit(self, charge: int) -> None:
        """Charge the rate limits or raise a 429 that says when to come back."""
        wait, which = self.limiter.admit(charge)
        if wait <= 0:
            return
        if wait == float("inf"):  # larger than the whole bucket: waiting will not help
            message = f"Request too large for {which} per min: requested {charge}."
            wait = 60.0
        else:
            message = f"Rate limit reached for {which} per min. Please try again in {wait:.3f}s."
        headers = self.dice.retry_after(wait, self.config.retry_after_mode)
        raise Fail.rate_limited(message, which, headers)


class FakeState(Knobs):
    """Everything the aiohttp app remembers: the knobs, the counters, the prefix cache, and
    the files and batches of the Batch API."""

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.stats = Stats(config.request_log_size)
        self.prefix = PrefixCache()
        self.files = FileStore()
        self.batches = BatchStore(self.files)

    def reconfigure(self, config: FakeConfig) -> None:
        """Switch to new knobs, rebuilding only what they change."""
        super().reconfigure(config)
        self.stats.resize(config.request_log_size)

    def reset(self) -> None:
        """Zero stats and the log, forget cached prefixes, files and batches, refill buckets,
        re-seed the dice."""
        super().reset()
        self.stats.reset()
        self.prefix.clear()
        # A reset server is a fresh one: batches left by one test must not show in the next
        # one's list, and the counters they would explain are zeroed anyway.
        self.files.clear()
        self.batches.clear()

    async def enter(self, request: web.Request) -> Any:
        """Read, log and count the request; check the key, the outage switch, and that a POST
        body is a JSON object."""
        raw = await request.read()
        try:
            body: Any = loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.check(request, body)
        if request.method == "POST" and not isinstance(body, dict):
            raise Fail.bad_request("The request body must be a JSON object.")
        return body

    def check(self, request: web.Request, body: Any) -> None:
        """Log and count a request whose body was read (``body`` is what the log keeps);
        check the key and the outage switch."""
        self.stats.request(request.method, request.path, request.headers, body)
        config = self.config
        if config.api_key is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), config.api_key.encode()):
                raise Fail.unauthorized()
        if config.outage:
            raise Fail.unavailable("The server is overloaded or not ready yet.")

    async def fault(self, request: web.Request, outcome: Outcome) -> None:
        """Wait the latency, then act on transport-level faults (errors, hang, drop).

        Error outcomes are counted when their response is sent (``failed``); the others here,
        before any waiting, so a test sees a hang while it is hanging.
        """
        config = self.config
        if outcome not in ERRORS:
            self.stats.outcome(outcome)
        if outcome is Outcome.RATE_LIMITED:  # a real 429 comes back at once
            raise self.error(outcome)
        delay = self.dice.latency(config)
        if delay > 0:
            await asyncio.sleep(delay)
        if outcome in ERRORS:
            raise self.error(outcome)
        if outcome is Outcome.HANG:
            await asyncio.sleep(config.hang_s)
        if outcome is Outcome.DROP and request.transport is not None:
            request.transport.close()  # no status line, no headers: the client sees EOF

    def error(self, outcome: Outcome) -> Fail:
        """The error an outcome in :data:`ERRORS` is answered with (over HTTP or in a batch)."""
        if outcome is Outcome.RATE_LIMITED:
            config = self.config
            headers = self.dice.retry_after(config.retry_after_s, config.retry_after_mode)
            return Fail.rate_limited(
                "Rate limit reached (injected by the fake).", "requests", headers
            )
        if outcome is Outcome.SERVER_ERROR:
            return Fail.server_error()
        return Fail.unavailable("The engine is currently overloaded, please try again later.")

    def failed(self, fail: Fail, headers: dict[str, str] | None = None) -> web.Response:
        """Count and send an error."""
        self.stats.outcome(fail.outcome)
        return web.Response(
            body=fail.body(),
            status=fail.status,
            headers=(headers or {}) | fail.headers,
            content_type="application/json",
        )
