"""The aiohttp application: OpenAI-compatible endpoints with injected faults, and admin routes.

Per API request: log and count it, check the key and the outage switch, roll the fault dice,
admit it against the rate limits, wait the configured latency, then answer (or hang, or drop
the connection). Everything runs on one event loop, so the state needs no locks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from aiohttp import web

from consumer.fake_openai import admin_routes
from consumer.fake_openai.config import FakeConfig
from consumer.fake_openai.faults import REPLY_FAULTS, Dice, Outcome, error_body
from consumer.fake_openai.instances import SchemaError
from consumer.fake_openai.ratelimit import RateLimiter
from consumer.fake_openai.reply import (
    DEFAULT_MODERATION_MODEL,
    REFUSAL,
    completion_body,
    content_value,
    context_for,
    last_user_text,
    malformed,
    moderation_body,
    moderation_inputs,
    new_id,
    render,
    truncated,
)
from consumer.fake_openai.stats import Stats
from consumer.fake_openai.usage import PrefixCache, cut_to_tokens, prompt_tokens, tokens

DEFAULT_MAX_TOKENS = 4096
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-5-mini", "omni-moderation-latest")
_ERRORS = frozenset({Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.UNAVAILABLE})
STATE: web.AppKey[FakeState] = web.AppKey("fake_state")


class Fail(Exception):  # a control-flow signal, named for what it does
    """Stop handling and send an OpenAI-shaped error."""

    def __init__(
        self, status: int, outcome: Outcome, message: str, kind: str, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.outcome, self.kind, self.code = status, outcome, kind, code
        self.headers: dict[str, str] = {}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


class FakeState:
    """Everything the fake remembers: knobs, dice, buckets, counters and the prefix cache."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.dice = Dice(config.seed)
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.stats = Stats(config.request_log_size)
        self.prefix = PrefixCache()

    def reconfigure(self, config: FakeConfig) -> None:
        """Switch to new knobs, rebuilding only what they change."""
        old, self.config = self.config, config
        if (old.rpm, old.tpm) != (config.rpm, config.tpm):
            self.limiter = RateLimiter(config.rpm, config.tpm)
        if old.seed != config.seed:
            self.dice = Dice(config.seed)
        self.stats.resize(config.request_log_size)

    def reset(self) -> None:
        """Zero stats and the log, forget cached prefixes, refill buckets, re-seed the dice."""
        self.stats.reset()
        self.prefix.clear()
        self.limiter = RateLimiter(self.config.rpm, self.config.tpm)
        self.dice = Dice(self.config.seed)

    # -- shared steps -------------------------------------------------------------------

    async def enter(self, request: web.Request) -> Any:
        """Read, log and count the request; check the key and the outage switch."""
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.stats.request(request.method, request.path, request.headers, body)
        config = self.config
        if config.api_key is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), config.api_key.encode()):
                raise Fail(
                    401,
                    Outcome.UNAUTHORIZED,
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
        if config.outage:
            raise Fail(
                503,
                Outcome.UNAVAILABLE,
                "The server is overloaded or not ready yet.",
                "server_error",
            )
        if request.method == "POST" and not isinstance(body, dict):
            raise Fail(
                400,
                Outcome.BAD_REQUEST,
                "The request body must be a JSON object.",
                "invalid_request_error",
            )
        return body

    async def fault(self, request: web.Request, outcome: Outcome) -> None:
        """Wait the latency, then act on transport-level faults (errors, hang, drop).

        Error outcomes are counted when their response is sent (``failed``); the others here,
        before any waiting, so a test sees a hang while it is hanging.
        """
        config = self.config
        if outcome not in _ERRORS:
            self.stats.outcome(outcome)
        if outcome is Outcome.RATE_LIMITED:
            fail = Fail(
                429,
                outcome,
                "Rate limit reached (injected by the fake).",
                "requests",
                "rate_limit_exceeded",
            )
            fail.headers = self.dice.retry_after(config.retry_after_s, config.retry_after_mode)
            raise fail
        delay = self.dice.latency(config)
        if delay > 0:
            await asyncio.sleep(delay)
        if outcome is Outcome.SERVER_ERROR:
            raise Fail(
                500,
                outcome,
                "The server had an error while processing your request.",
                "server_error",
            )
        if outcome is Outcome.UNAVAILABLE:
            raise Fail(
                503,
                outcome,
                "The engine is currently overloaded, please try again later.",
                "server_error",
            )
        if outcome is Outcome.HANG:
            await asyncio.sleep(config.hang_s)
        if outcome is Outcome.DROP and request.transport is not None:
            request.transport.close()  # no status line, no headers: the client sees EOF

    # -- handlers -------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        try:
            return await self._chat(request)
        except Fail as fail:
            return self.failed(fail, self.limiter.headers())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.enter(request)
        messages, model = body.get("messages"), body.get("model")
        if not isinstance(messages, list) or not messages or not isinstance(model, str):
            raise Fail(
                400,
                Outcome.BAD_REQUEST,
                "'model' and non-empty 'messages' are required.",
                "invalid_request_error",
            )
        if body.get("stream"):
            raise Fail(
                400,
                Outcome.BAD_REQUEST,
                "The fake does not support streaming.",
                "invalid_request_error",
            )
        try:  # before any waiting: a bad schema is the caller's error, answered at once
            value = content_value(
                body.get("response_format"), context_for(last_user_text(messages))
            )
        except SchemaError as exc:
            raise Fail(
                400,
                Outcome.BAD_REQUEST,
                f"Invalid response_format: {exc}",
                "invalid_request_error",
                "invalid_schema",
            ) from exc
        outcome = self.dice.roll(self.config)
        if outcome in _ERRORS:
            await self.fault(request, outcome)
        prompt, first = prompt_tokens(messages, model)
        allowance = int(
            body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        )
        self.admit(prompt + allowance)
        used = 0
        try:  # the finally refunds the unused allowance, also when the client gives up
            await self.fault(request, outcome)
            if outcome is Outcome.DROP:
                return web.Response()
            data, used = self.reply(
                value,
                model=model,
                messages=messages,
                outcome=outcome,
                prompt=prompt,
                first=first,
                allowance=allowance,
            )
            return _json(data, headers=self.limiter.headers() | {"x-request-id": new_id("req")})
        finally:
            self.limiter.refund(allowance - used)

    def admit(self, charge: int) -> None:
        """Charge the rate limits or raise a 429 that says when to come back."""
        wait, which = self.limiter.admit(charge)
        if wait <= 0:
            return
        if wait == float("inf"):
            message = f"Request too large for {which} per min: requested {charge}."
            wait = 60.0
        else:
            message = f"Rate limit reached for {which} per min. Please try again in {wait:.3f}s."
        fail = Fail(429, Outcome.RATE_LIMITED, message, which, "rate_limit_exceeded")
        fail.headers = self.dice.retry_after(wait, self.config.retry_after_mode)
        raise fail

    def reply(
        self,
        value: Any,
        *,
        model: str,
        messages: list[Any],
        outcome: Outcome,
        prompt: int,
        first: int,
        allowance: int,
    ) -> tuple[dict[str, Any], int]:
        """The completion body for the generated ``value``, and its completion tokens."""
        content: str | None = render(value)
        refusal, finish = None, "stop"
        if outcome is Outcome.MALFORMED:
            content = malformed(value, self.dice.malformed_kind())
        elif outcome is Outcome.TRUNCATED:
            content, finish = truncated(render(value)), "length"
        elif outcome is Outcome.REFUSAL:
            content, refusal = None, REFUSAL
        elif outcome is Outcome.CONTENT_FILTER:
            content, finish = self.dice.filtered_content(), "content_filter"
        used = tokens(content or refusal or "", model)
        if used > allowance and content:
            # The reply does not fit max_tokens: cut it there, as the real API does.
            content, used, finish = cut_to_tokens(content, allowance, model), allowance, "length"
        cached = self.prefix.cached_tokens(model, messages[0], first, self.config.cache_min_tokens)
        self.stats.tokens(prompt, used, cached)
        data = completion_body(
            model=model,
            content=content,
            refusal=refusal,
            finish_reason=finish,
            prompt_tokens=prompt,
            completion_tokens=used,
            cached_tokens=cached,
        )
        return data, used

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/moderations``."""
        try:
            body = await self.enter(request)
            try:
                texts = moderation_inputs(body.get("input"))
            except SchemaError as exc:
                raise Fail(400, Outcome.BAD_REQUEST, str(exc), "invalid_request_error") from exc
            outcome = self.dice.roll(self.config)
            outcome = Outcome.OK if outcome in REPLY_FAULTS else outcome
            await self.fault(request, outcome)
            if outcome is Outcome.DROP:
                return web.Response()
            model = str(body.get("model") or DEFAULT_MODERATION_MODEL)
            return _json(moderation_body(model, texts))
        except Fail as fail:
            return self.failed(fail)

    async def models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: a short fixed list (no faults, so it works as a probe)."""
        try:
            await self.enter(request)
        except Fail as fail:
            return self.failed(fail)
        self.stats.outcome(Outcome.OK)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "modstream-fake"}
            for m in MODELS
        ]
        return _json({"object": "list", "data": data})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other ``/v1/...`` path, answered in OpenAI's error shape."""
        await request.read()
        self.stats.request(request.method, request.path, request.headers, None)
        return self.failed(
            Fail(
                404,
                Outcome.NOT_FOUND,
                f"Unknown request URL: {request.method} {request.path}.",
                "invalid_request_error",
                "unknown_url",
            )
        )

    def failed(self, fail: Fail, headers: dict[str, str] | None = None) -> web.Response:
        """Count and send an error."""
        self.stats.outcome(fail.outcome)
        return web.Response(
            body=error_body(str(fail), fail.kind, fail.code),
            status=fail.status,
            headers=(headers or {}) | fail.headers,
            content_type="application/json",
        )


def build_app(config: FakeConfig) -> web.Application:
    """The aiohttp application serving ``config``."""
    # Batch prompts can be large; the default 1 MiB body limit would reject them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state = FakeState(config)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", state.chat)
    app.router.add_post("/v1/moderations", state.moderations)
    app.router.add_get("/v1/models", state.models)
    admin_routes.add(app, state)
    app.router.add_route("*", "/v1/{tail:.*}", state.not_found)
    return app
