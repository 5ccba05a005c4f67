"""The aiohttp application: OpenAI-compatible endpoints with injected faults, and admin routes.

Per API request: log and count it, check the key and the outage switch, the model name (404
for one the fake does not serve), an unsupported parameter, a reasoning model's parameter rules
and a rejected ``json_schema`` (:mod:`.rules`, shared with benchmark mode), the poison marker, roll
the fault dice, admit it against the rate limits, wait the configured latency, then answer (or
hang, or drop the connection). A batch line (:meth:`Endpoints.answer`, for :mod:`.batches`) takes
the same checks, dice and reply, without the connection's steps (rate limits, latency, hang,
drop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from consumer.testing.fake_openai import admin_routes, batch_routes, reasoning
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import MALFORMED_KINDS, REPLY_FAULTS, Fail, Outcome
from consumer.testing.fake_openai.images import image_urls
from consumer.testing.fake_openai.instances import SchemaError
from consumer.testing.fake_openai.reply import (
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
    prompt_schema,
    render,
    truncated,
    user_images,
)
from consumer.testing.fake_openai.rules import DEFAULT_MAX_TOKENS, MODELS, check_chat, check_model
from consumer.testing.fake_openai.state import ERRORS, FakeState, json_response
from consumer.testing.fake_openai.usage import cut_to_tokens, prompt_tokens, tokens

STATE: web.AppKey[FakeState] = web.AppKey("fake_state")


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat request that passed its checks: what its reply is made from."""

    messages: list[Any]
    model: str
    effort: str | None
    value: Any
    prompt: int
    """Prompt tokens."""
    first: int
    """Tokens of the first message (the cacheable prefix)."""
    allowance: int
    """max_completion_tokens, max_tokens or the default."""


class Endpoints:
    """The ``/v1`` handlers over one :class:`FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``; every answer carries the x-ratelimit-* headers."""
        try:
            return await self._chat(request)
        except Fail as fail:
            return self.state.failed(fail, self.state.limiter.headers())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        call = self.prepare_chat(await state.enter(request))
        outcome = state.dice.roll(state.config)
        if outcome in ERRORS:
            await state.fault(request, outcome)
        state.admit(call.prompt + call.allowance)
        unused = call.allowance
        try:  # the finally refunds the allowance when no reply is sent (drop, client gone)
            await state.fault(request, outcome)
            if outcome is Outcome.DROP:
                return web.Response()
            data, used = self.chat_reply(call, outcome)
            # Refund before the headers are written, so they show the bucket after this call.
            state.limiter.refund(call.allowance - used)
            unused = 0
            headers = state.limiter.headers() | {"x-request-id": new_id("req")}
            return json_response(data, headers=headers)
        finally:
            state.limiter.refund(unused)

    def prepare_chat(self, body: Any) -> ChatCall:
        """Check a chat request body (the 4xx it earns, the poison marker) and work out its
        reply's value and prompt tokens; raises :class:`Fail`. Draws no dice."""
        messages, model = body.get("messages"), body.get("model")
        if not isinstance(messages, list) or not messages or not isinstance(model, str):
            raise Fail.bad_request("'model' and non-empty 'messages' are required.")
        effort = check_chat(body, model, self.state.config)
        response_format = body.get("response_format")
        self.check_poison(messages)
        context = context_for(last_user_text(messages), user_images(messages))
        try:  # before any waiting: a bad schema is the caller's error, answered at once
            value = content_value(response_format, context, prompt_schema(messages))
        except SchemaError as exc:
            raise Fail.bad_request(f"Invalid response_format: {exc}", "invalid_schema") from exc
        prompt, first = prompt_tokens(messages, model)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        return ChatCall(
            messages, model, effort, value, prompt, first, int(limit or DEFAULT_MAX_TOKENS)
        )

    def chat_reply(self, call: ChatCall, outcome: Outcome) -> tuple[dict[str, Any], int]:
        """The completion body for a prepared call with the drawn ``outcome``, and its
        completion tokens; counts the tokens served."""
        state = self.state
        cached = state.prefix.cached_tokens(
            call.model, call.messages[0], call.first, state.config.cache_min_tokens
        )
        effort = call.effort
        thought = 0 if effort is None else reasoning.spent(effort, call.prompt - call.first)
        data, used = self.reply(
            call.value,
            model=call.model,
            outcome=outcome,
            usage=(call.prompt, cached),
            allowance=call.allowance,
            reasoning_tokens=thought,
        )
        state.stats.tokens(call.prompt, used, cached)
        return data, used

    def reply(
        self,
        value: Any,
        *,
        model: str,
        outcome: Outcome,
        usage: tuple[int, int],
        allowance: int,
        reasoning_tokens: int = 0,
    ) -> tuple[dict[str, Any], int]:
        """The completion body for the generated ``value`` and its completion tokens.

        ``usage`` is (prompt tokens, cached tokens); ``allowance`` is max_tokens or the default.
        ``reasoning_tokens`` are spent first, inside the allowance, as a reasoning model does:
        what is left is the reply's, and nothing left means empty content, ``length``.
        """
        content: str | None = render(value)
        refusal, finish = None, "stop"
        if outcome is Outcome.MALFORMED:
            content = malformed(value, self.state.dice.malformed_kind())
        elif outcome in MALFORMED_KINDS:  # each kind its own knob, named as the kind
            content = malformed(value, outcome.value)
        elif outcome is Outcome.TRUNCATED:
            content, finish = truncated(render(value)), "length"
        elif outcome is Outcome.REFUSAL:
            content, refusal = None, REFUSAL
        elif outcome is Outcome.CONTENT_FILTER:
            content, finish = self.state.dice.filtered_content(), "content_filter"
        thought = min(reasoning_tokens, allowance)
        room = allowance - thought
        used = tokens(content or refusal or "", model)
        if room == 0 and thought:
            content, refusal, used, finish = "", None, 0, "length"  # all spent on reasoning
        elif used > room and content:
            # The reply does not fit max_tokens: cut it there, as the real API does.
            content, used, finish = cut_to_tokens(content, room, model), room, "length"
        used += thought
        data = completion_body(
            model=model,
            content=content,
            refusal=refusal,
            finish_reason=finish,
            prompt_tokens=usage[0],
            completion_tokens=used,
            cached_tokens=usage[1],
            reasoning_tokens=thought,
        )
        return data, used

    def check_poison(self, content: Any) -> None:
        """500 for content (messages or moderation inputs) holding the ``fail_when_contains``
        marker, searched in its JSON text; serialized only when a marker is set."""
        marker = self.state.config.fail_when_contains
        if marker and marker in json.dumps(content):
            raise Fail.server_error()

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/moderations``: transport faults apply, reply faults do not."""
        state = self.state
        try:
            model, texts, images = self.prepare_moderation(await state.enter(request))
            outcome = state.dice.roll(state.config)
            outcome = Outcome.OK if outcome in REPLY_FAULTS else outcome
            await state.fault(request, outcome)
            if outcome is Outcome.DROP:
                return web.Response()
            return json_response(moderation_body(model, texts, images))
        except Fail as fail:
            return state.failed(fail)

    def prepare_moderation(self, body: Any) -> tuple[str, list[str], list[str]]:
        """The model, input texts and image URLs of a moderation request body; raises
        :class:`Fail`."""
        try:
            texts = moderation_inputs(body.get("input"))
            images = image_urls(body.get("input"))
        except SchemaError as exc:
            raise Fail.bad_request(str(exc)) from exc
        model = str(body.get("model") or DEFAULT_MODERATION_MODEL)
        check_model(model, self.state.config)
        self.check_poison(texts)
        return model, texts, images

    def answer(self, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A batch line's (status, body): the request answered by the handler's own steps,
        without what belongs to a connection (latency, rate limits, hang, drop) and without
        being logged or counted as a request. An injected 429/500/503 is the line's status."""
        state = self.state
        try:
            if url == "/v1/moderations":
                model, texts, images = self.prepare_moderation(body)
                outcome = state.dice.roll(state.config)
                if outcome in ERRORS:
                    raise state.error(outcome)
                return 200, moderation_body(model, texts, images)
            call = self.prepare_chat(body)
            outcome = state.dice.roll(state.config)
            if outcome in ERRORS:
                raise state.error(outcome)
            data, _ = self.chat_reply(call, outcome)
            return 200, data
        except Fail as fail:
            return fail.status, fail.document()

    async def models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: a short fixed list (auth and outage apply, random faults not)."""
        try:
            await self.state.enter(request)
        except Fail as fail:
            return self.state.failed(fail)
        self.state.stats.outcome(Outcome.OK)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "modstream-fake"}
            for m in MODELS
        ]
        return json_response({"object": "list", "data": data})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other ``/v1/...`` path, answered in OpenAI's error shape."""
        await request.read()
        self.state.stats.request(request.method, request.path, request.headers, None)
        message = f"Unknown request URL: {request.method} {request.path}."
        fail = Fail(404, Outcome.NOT_FOUND, message, "invalid_request_error", code="unknown_url")
        return self.state.failed(fail)


def build_app(config: FakeConfig) -> web.Application:
    """The aiohttp application serving ``config``."""
    # Batch prompts can be large; the default 1 MiB body limit would reject them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state = FakeState(config)
    endpoints = Endpoints(state)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", endpoints.chat)
    app.router.add_post("/v1/moderations", endpoints.moderations)
    app.router.add_get("/v1/models", endpoints.models)
    batch_routes.add(app, state, endpoints.answer)
    admin_routes.add(app, state)
    app.router.add_route("*", "/v1/{tail:.*}", endpoints.not_found)
    return app
