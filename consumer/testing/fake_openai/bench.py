"""Benchmark mode (``MODSTREAM_FAKE_BENCHMARK=1``): the API at a small, fixed cost per request.

A chat request is answered from the *plan* of its shape (:mod:`.plans`: the verdict's
generator, the 4xx the shape earns, exact token counts of its fixed part and a skeleton
reply), built once and cached. Per request only what varies is computed: the id, ``created``,
the verdict values (the keyword heuristic on the user message) and the usage. Usage is an
**estimate**, not a tokenizer count:

- prompt tokens = the plan's exact fixed part + for each other message 3 + 1 (role) +
  ``ceil(characters / 4)`` of its text (English prose runs at about 4 characters per token);
- completion tokens = ``ceil(characters of the reply x the skeleton's tokens per character)``
  (replies of one schema differ in digits and rationale only, so this is within a few tokens);
- cached tokens: the first message's exact tokens in 128-blocks when it is a system message
  seen before under that model and at least ``cache_min_tokens`` long, else 0;
- a reply estimated over the budget is cut with the tokenizer, as in normal mode (rare).

Latency is drawn as in normal mode and delays the write of an answer computed at once, so the
``x-ratelimit-*`` headers show the buckets when the request arrived. Stats are counters only:
``/_fake/requests`` has no log to show. Everything else (the knobs that are honoured, the error
bodies, ``PATCH /_fake/config``, the 429s) is normal mode's (:class:`.state.Knobs`)."""

from __future__ import annotations

import hmac
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from consumer.testing.fake_openai import reasoning
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Fail, Outcome
from consumer.testing.fake_openai.instances import SchemaError
from consumer.testing.fake_openai.lean_wire import Answer, header_lines
from consumer.testing.fake_openai.plans import Plans, render
from consumer.testing.fake_openai.reply import (
    DEFAULT_MODERATION_MODEL,
    completion_body,
    context_for,
    last_user_text,
    moderation_body,
    moderation_inputs,
    new_id,
)
from consumer.testing.fake_openai.rules import MODELS, check_model
from consumer.testing.fake_openai.state import Knobs, loads
from consumer.testing.fake_openai.usage import TOKENS_PER_MESSAGE, cut_to_tokens, message_text

#: Tokens of a role ("user", "assistant"): one each in every OpenAI tokenizer.
ROLE_TOKENS = 1
#: Characters per token of the per-message estimate.
CHARS_PER_TOKEN = 4


def estimate(text: str) -> int:
    """The per-message estimate: characters / 4, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(slots=True)
class Counters:
    """Benchmark mode's stats: counters, no log."""

    by_path: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def snapshot(self) -> dict[str, Any]:
        """``GET /_fake/stats``, in normal mode's shape."""
        return {
            "total": sum(self.by_path.values()),
            "by_path": dict(self.by_path),
            "by_outcome": dict(self.by_outcome),
            "tokens": {"prompt": self.prompt, "completion": self.completion, "cached": self.cached},
        }


class BenchApi(Knobs):
    """The fake's routes in benchmark mode, transport-free: bytes in, :class:`Answer` out."""

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.counters = Counters()
        self.plans = Plans()
        self._fixed_headers = b""
        self._fix_headers()

    @property
    def unlimited(self) -> bool:
        """No rpm and no tpm: the x-ratelimit-* headers never change."""
        return self.config.rpm is None and self.config.tpm is None

    def _ratelimit_headers(self) -> bytes:
        return header_lines(self.limiter.headers())

    def _fix_headers(self) -> None:
        # Unlimited buckets always show the same x-ratelimit-* headers: rendered once.
        self._fixed_headers = self._ratelimit_headers() if self.unlimited else b""

    # ---- knobs and stats ----------------------------------------------------------------------

    def reconfigure(self, config: FakeConfig) -> None:
        """New knobs: plans are rebuilt (their errors depend on the knobs)."""
        super().reconfigure(config)
        self.plans.clear()
        self._fix_headers()

    def reset(self) -> None:
        """``POST /_fake/reset``: counters, cached prefixes, buckets and dice start afresh."""
        super().reset()
        self.counters = Counters()
        self.plans.reset()
        self._fix_headers()

    # ---- shared steps -------------------------------------------------------------------------

    def _gate(self, headers: dict[bytes, bytes]) -> None:
        """The API key and the outage switch (Fail otherwise)."""
        config = self.config
        if config.api_key is not None and not authorized(headers, config.api_key):
            raise Fail.unauthorized()
        if config.outage:
            raise Fail.unavailable("The server is overloaded or not ready yet.")

    def _enter(self, raw: bytes, headers: dict[bytes, bytes]) -> dict[str, Any]:
        """Auth, outage, a JSON object body (Fail otherwise)."""
        self._gate(headers)
        try:
            body = loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Fail.bad_request("The request body must be a JSON object.")
        return body

    def failed(self, fail: Fail, *, ratelimit: bool = False) -> Answer:
        """An OpenAI-shaped error answer, counted."""
        self.counters.by_outcome[fail.outcome.value] += 1
        extra = header_lines(fail.headers)
        if ratelimit:
            limits = self._fixed_headers if self.unlimited else self._ratelimit_headers()
            extra = limits + extra
        return Answer(fail.status, fail.body(), extra)

    # ---- chat ---------------------------------------------------------------------------------

    def chat(self, raw: bytes, headers: dict[bytes, bytes]) -> Answer:
        """``POST /v1/chat/completions``."""
        self.counters.by_path["/v1/chat/completions"] += 1
        try:
            return self._chat(raw, headers)
        except Fail as fail:
            return self.failed(fail, ratelimit=True)

    def _chat(self, raw: bytes, headers: dict[bytes, bytes]) -> Answer:
        body = self._enter(raw, headers)
        messages, model = body.get("messages"), body.get("model")
        if not isinstance(messages, list) or not messages or not isinstance(model, str):
            raise Fail.bad_request("'model' and non-empty 'messages' are required.")
        plan = self.plans.plan(body, messages, self.config)
        if plan.error is not None:
            raise plan.error
        try:
            value = plan.value(context_for(last_user_text(messages)))
        except (SchemaError, RecursionError) as exc:  # only a pathological schema gets here
            raise Fail.bad_request(f"Invalid response_format: {exc}", "invalid_schema") from exc
        content: str | None = render(value)
        prompt = plan.fixed_tokens
        for message in messages:  # the system messages are in the plan, exactly
            if not isinstance(message, dict) or message.get("role") != "system":
                prompt += TOKENS_PER_MESSAGE + ROLE_TOKENS + estimate(message_text(message))
        allowance = plan.allowance
        limited = not self.unlimited
        if limited:
            self.admit(prompt + allowance)
        cached = 0
        if plan.first_tokens >= 0:
            cached = plan.cached_tokens if plan.seen else 0
            plan.seen = True
        thought = 0
        if plan.effort is not None:
            first = plan.first_tokens if plan.first_tokens >= 0 else 0
            thought = min(reasoning.spent(plan.effort, prompt - first), allowance)
        room = allowance - thought
        used = math.ceil(len(content or "") * plan.ratio) if content else 0
        finish = "stop"
        if room == 0 and thought:
            content, used, finish = "", 0, "length"  # all spent on reasoning
        elif used > room and content:
            content, used, finish = cut_to_tokens(content, room, plan.model), room, "length"
        used += thought
        counters = self.counters
        counters.by_outcome["ok"] += 1
        counters.prompt += prompt
        counters.completion += used
        counters.cached += cached
        if limited:
            self.limiter.refund(allowance - used)
            extra = self._ratelimit_headers()
        else:
            extra = self._fixed_headers
        data = completion_body(
            model=plan.model,
            content=content,
            refusal=None,
            finish_reason=finish,
            prompt_tokens=prompt,
            completion_tokens=used,
            cached_tokens=cached,
            reasoning_tokens=thought,
        )
        return Answer(
            200,
            orjson.dumps(data),
            extra + b"x-request-id: " + new_id("req").encode() + b"\r\n",
            self.dice.latency(self.config) if self.config.latency_ms else 0.0,
        )

    # ---- the other routes ---------------------------------------------------------------------

    def moderations(self, raw: bytes, headers: dict[bytes, bytes]) -> Answer:
        """``POST /v1/moderations`` (not tuned: built as in normal mode)."""
        self.counters.by_path["/v1/moderations"] += 1
        try:
            body = self._enter(raw, headers)
            try:
                texts = moderation_inputs(body.get("input"))
            except SchemaError as exc:
                raise Fail.bad_request(str(exc)) from exc
            model = str(body.get("model") or DEFAULT_MODERATION_MODEL)
            check_model(model, self.config)
        except Fail as fail:
            return self.failed(fail)
        self.counters.by_outcome["ok"] += 1
        delay = self.dice.latency(self.config) if self.config.latency_ms else 0.0
        return Answer(200, orjson.dumps(moderation_body(model, texts)), delay=delay)

    def models(self, raw: bytes, headers: dict[bytes, bytes]) -> Answer:
        """``GET /v1/models``."""
        self.counters.by_path["/v1/models"] += 1
        try:
            self._gate(headers)
        except Fail as fail:
            return self.failed(fail)
        self.counters.by_outcome["ok"] += 1
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "modstream-fake"}
            for m in MODELS
        ]
        return Answer(200, orjson.dumps({"object": "list", "data": data}))

    def not_found(self, method: str, path: str) -> Answer:
        """Any other path, in OpenAI's error shape (counted when under ``/v1``)."""
        message = f"Unknown request URL: {method} {path}."
        fail = Fail(404, Outcome.NOT_FOUND, message, "invalid_request_error", code="unknown_url")
        if path.startswith("/v1/"):
            self.counters.by_path[path] += 1
            return self.failed(fail)
        return Answer(404, fail.body())


def authorized(headers: dict[bytes, bytes], key: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <key>``."""
    given = headers.get(b"authorization", b"").removeprefix(b"Bearer ").strip()
    return hmac.compare_digest(given, key.encode())


__all__ = ["Answer", "BenchApi", "estimate"]
