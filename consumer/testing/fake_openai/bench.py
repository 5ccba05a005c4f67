"""Benchmark mode (``MODSTREAM_FAKE_BENCHMARK=1``): the API at a small, fixed cost per request.

A chat request is answered from a *plan*, built once per request shape and cached: the key is
the request minus its ``messages`` (model, response_format and its schema, budgets, effort),
serialized with orjson, and the text of its system messages. A plan holds what depends only on
that key:

- the verdict's generator: the schema compiled once by :mod:`.instances` (the reply builder
  normal mode uses, so replies fit the requested schema, batch form included), or the
  ``json_object`` / plain-text shape;
- every 4xx the shape earns (unknown model, stream, an unsupported parameter, a reasoning
  model's parameter rules, a rejected ``json_schema``, a schema that cannot be instantiated),
  answered at once from the plan;
- exact token counts of its fixed part (system messages, reply priming) and a *skeleton*: the
  reply for content that matches nothing, whose tokens per character price every reply of the
  plan.

Per request only what varies is computed: the id, ``created``, the verdict values (the keyword
heuristic on the user message) and the usage. Usage is an **estimate**, not a tokenizer count:

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
bodies) is normal mode's.
"""

from __future__ import annotations

import hmac
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from consumer.testing.fake_openai import reasoning
from consumer.testing.fake_openai.app import DEFAULT_MAX_TOKENS, MODELS
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Dice, Fail, Outcome
from consumer.testing.fake_openai.instances import SchemaError, compiled
from consumer.testing.fake_openai.ratelimit import RateLimiter
from consumer.testing.fake_openai.reply import (
    DEFAULT_MODERATION_MODEL,
    completion_body,
    context_for,
    last_user_text,
    moderation_body,
    moderation_inputs,
    new_id,
    plain_text,
    prompt_schema,
    response_schema,
)
from consumer.testing.fake_openai.state import dumps, loads
from consumer.testing.fake_openai.usage import (
    CACHE_BLOCK,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    cut_to_tokens,
    message_text,
    message_tokens,
    tokens,
)
from consumer.testing.fake_openai.values import Context, Gen

#: Tokens of a role ("user", "assistant"): one each in every OpenAI tokenizer.
ROLE_TOKENS = 1
#: Characters per token of the per-message estimate.
CHARS_PER_TOKEN = 4
#: Plans kept before the cache starts afresh (shapes repeat: a few per benchmark).
PLANS_KEPT = 1024
JSON = b"application/json"


@dataclass(slots=True)
class Answer:
    """What the HTTP layer sends: status, extra header lines, body, after ``delay`` seconds."""

    status: int
    body: bytes
    headers: bytes = b""
    delay: float = 0.0
    content_type: bytes = JSON


def header_lines(headers: dict[str, str]) -> bytes:
    """``name: value\\r\\n`` lines for a response head."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


@dataclass(slots=True)
class Plan:
    """Everything about a chat request that its shape decides (see the module docstring)."""

    model: str
    error: Fail | None = None
    #: The compiled schema, or None for json_object (``object``) and plain text.
    gen: Gen | None = None
    kind: str = "text"
    #: Exact tokens of the system messages and the reply priming.
    fixed_tokens: int = REPLY_PRIMING
    #: The first message's tokens when it is a system message (cacheable), else -1.
    first_tokens: int = -1
    cached_tokens: int = 0
    effort: str | None = None
    allowance: int = DEFAULT_MAX_TOKENS
    #: Tokens per character of the skeleton reply.
    ratio: float = 0.25
    seen: bool = False

    def value(self, context: Context) -> Any:
        """The verdict for ``context`` as a JSON value, or the plain-text sentence."""
        if self.gen is not None:
            return self.gen(context, 0)
        judgement = context.judgement
        if self.kind == "object":
            return {"scores": dict(judgement.scores), "rationale": judgement.rationale}
        return plain_text(judgement)


def render(value: Any) -> str:
    """Reply content: JSON values compact via orjson, plain text as is."""
    return value if isinstance(value, str) else dumps(value).decode()


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


class BenchApi:
    """The fake's routes in benchmark mode, transport-free: bytes in, :class:`Answer` out."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.dice = Dice(config.seed)
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.counters = Counters()
        self.plans: dict[tuple[bytes, tuple[Any, ...]], Plan] = {}
        self.prefixes: set[tuple[str, str]] = set()
        self._fixed_headers = self._ratelimit_headers() if self.unlimited else b""

    @property
    def unlimited(self) -> bool:
        """No rpm and no tpm: the x-ratelimit-* headers never change."""
        return self.config.rpm is None and self.config.tpm is None

    def _ratelimit_headers(self) -> bytes:
        return header_lines(self.limiter.headers())

    # ---- knobs and stats ----------------------------------------------------------------------

    def reconfigure(self, config: FakeConfig) -> None:
        """New knobs: plans are rebuilt (their errors depend on the knobs)."""
        old, self.config = self.config, config
        if (old.rpm, old.tpm) != (config.rpm, config.tpm):
            self.limiter = RateLimiter(config.rpm, config.tpm)
        if old.seed != config.seed:
            self.dice = Dice(config.seed)
        self.plans.clear()
        self._fixed_headers = self._ratelimit_headers() if self.unlimited else b""

    def reset(self) -> None:
        """``POST /_fake/reset``: counters, cached prefixes, buckets and dice start afresh."""
        self.counters = Counters()
        self.plans.clear()
        self.prefixes.clear()
        self.limiter = RateLimiter(self.config.rpm, self.config.tpm)
        self.dice = Dice(self.config.seed)
        self._fixed_headers = self._ratelimit_headers() if self.unlimited else b""

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
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            try:
                body = loads(raw)
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
        plan = self.plan(body, messages)
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
            self._admit(prompt + allowance)
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

    def _admit(self, charge: int) -> None:
        wait, which = self.limiter.admit(charge)
        if wait <= 0:
            return
        if wait == math.inf:
            message = f"Request too large for {which} per min: requested {charge}."
            wait = 60.0
        else:
            message = f"Rate limit reached for {which} per min. Please try again in {wait:.3f}s."
        headers = self.dice.retry_after(wait, self.config.retry_after_mode)
        raise Fail.rate_limited(message, which, headers)

    def plan(self, body: dict[str, Any], messages: list[Any]) -> Plan:
        """The cached plan of this request's shape (built on first sight)."""
        rest = {k: v for k, v in body.items() if k != "messages"}
        try:
            shape = orjson.dumps(rest)
        except (TypeError, orjson.JSONEncodeError):  # what only json writes: NaN, huge ints
            shape = dumps(rest)
        systems = tuple(
            (i, message_text(m), str(m.get("name") or ""))
            for i, m in enumerate(messages)
            if isinstance(m, dict) and m.get("role") == "system"
        )
        key = (shape, systems)
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= PLANS_KEPT:
                self.plans.clear()
            plan = self.plans[key] = self._build(body, messages, {i for i, _, _ in systems})
        return plan

    def _build(self, body: dict[str, Any], messages: list[Any], systems: set[int]) -> Plan:
        model = str(body["model"])
        plan = Plan(model=model)
        try:
            self._check(body, model, plan)
            self._shape(body, messages, plan)
        except Fail as fail:
            plan.error = fail
            return plan
        plan.fixed_tokens = REPLY_PRIMING + sum(
            message_tokens(messages[i], model) for i in sorted(systems)
        )
        if 0 in systems:
            first = messages[0]
            plan.first_tokens = message_tokens(first, model)
            prefix = (model, str(first.get("role")) + "\x00" + message_text(first))
            plan.seen = prefix in self.prefixes
            self.prefixes.add(prefix)
            if plan.first_tokens >= self.config.cache_min_tokens:
                plan.cached_tokens = plan.first_tokens // CACHE_BLOCK * CACHE_BLOCK
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        plan.allowance = int(limit or DEFAULT_MAX_TOKENS)
        return plan

    def _check(self, body: dict[str, Any], model: str, plan: Plan) -> None:
        """The 4xx a request of this shape gets, as normal mode decides them, in its order."""
        config = self.config
        if body.get("stream"):
            raise Fail.bad_request("The fake does not support streaming.")
        if config.strict_models and model not in MODELS:
            raise Fail.model_not_found(model)
        if config.unsupported_param is not None and config.unsupported_param in body:
            raise Fail.unsupported_parameter(config.unsupported_param)
        if config.reasoning_rules and reasoning.is_reasoning(model):
            plan.effort = reasoning.check(body, model)
        response_format = body.get("response_format")
        wants_schema = isinstance(response_format, dict) and (
            response_format.get("type") == "json_schema"
        )
        if config.reject_json_schema and wants_schema:
            raise Fail.json_schema_unsupported()

    def _shape(self, body: dict[str, Any], messages: list[Any], plan: Plan) -> None:
        """The reply's generator and its skeleton (content that matches nothing)."""
        response_format = body.get("response_format")
        try:
            schema = response_schema(response_format)
            kind = response_format.get("type") if isinstance(response_format, dict) else None
            if schema is None and kind in (None, "text", "json_object"):
                schema = prompt_schema(messages)
            if schema is not None:
                plan.gen = compiled(dumps(schema))
                plan.kind = "schema"
            elif kind == "json_object":
                plan.kind = "object"
            elif kind not in (None, "text"):
                raise SchemaError(f"unsupported response_format type {kind!r}")
            skeleton = render(plan.value(context_for("")))
        except (SchemaError, RecursionError) as exc:
            raise Fail.bad_request(f"Invalid response_format: {exc}", "invalid_schema") from exc
        if skeleton:
            plan.ratio = tokens(skeleton, plan.model) / len(skeleton)

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
            if self.config.strict_models and model not in MODELS:
                raise Fail.model_not_found(model)
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

    def admin(self, method: str, path: str, query: str, raw: bytes) -> Answer | None:
        """The ``/_fake/*`` routes; None for a path that is not one."""
        if path == "/_fake/health" and method == "GET":
            return Answer(200, b'{"status":"ok"}')
        if path == "/_fake/stats" and method == "GET":
            return Answer(200, orjson.dumps(self.counters.snapshot()))
        if path == "/_fake/reset" and method == "POST":
            self.reset()
            return Answer(200, orjson.dumps(self.counters.snapshot()))
        if path == "/_fake/config" and method == "GET":
            return Answer(200, dumps(self.config.public()))
        if path == "/_fake/config" and method == "PATCH":
            try:
                changes = loads(raw)
            except ValueError:
                changes = None
            if not isinstance(changes, dict):
                return _bad("the body must be a JSON object of knobs")
            try:
                self.reconfigure(self.config.patched(changes))
            except ValueError as exc:
                return _bad(str(exc))
            return Answer(200, dumps(self.config.public()))
        if path == "/_fake/requests" and method == "GET":
            return _bad("benchmark mode keeps no request log (MODSTREAM_FAKE_BENCHMARK)")
        return None


def authorized(headers: dict[bytes, bytes], key: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <key>``."""
    given = headers.get(b"authorization", b"").removeprefix(b"Bearer ").strip()
    return hmac.compare_digest(given, key.encode())


def _bad(message: str) -> Answer:
    return Answer(400, Fail.bad_request(message).body())


__all__ = ["Answer", "BenchApi", "Plan", "estimate"]
