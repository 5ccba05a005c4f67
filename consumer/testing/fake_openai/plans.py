"""Benchmark mode's reply plans: what a chat request's *shape* decides, built once and cached.

The key is the request minus its ``messages`` (model, response_format and its schema, budgets,
effort), serialized with orjson, and the text of its system messages. A plan holds what depends
only on that key:

- the verdict's generator: the schema compiled once by :mod:`.instances` (the reply builder
  normal mode uses, so replies fit the requested schema, batch form included), or the
  ``json_object`` / plain-text shape;
- every 4xx the shape earns (unknown model, stream, an unsupported parameter, a reasoning
  model's parameter rules, a rejected ``json_schema``, a schema that cannot be instantiated),
  answered at once from the plan;
- exact token counts of its fixed part (system messages, reply priming) and a *skeleton*: the
  reply for content that matches nothing, whose tokens per character price every reply of the
  plan (:mod:`.bench` estimates the rest of a request's usage from them);
- the cacheable prefix: the first message's exact tokens in 128-blocks when it is a system
  message of at least ``cache_min_tokens``, and whether that prefix was seen before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Fail
from consumer.testing.fake_openai.instances import SchemaError, compiled
from consumer.testing.fake_openai.reply import (
    context_for,
    plain_text,
    prompt_schema,
    response_schema,
)
from consumer.testing.fake_openai.rules import DEFAULT_MAX_TOKENS, check_chat
from consumer.testing.fake_openai.state import dumps
from consumer.testing.fake_openai.usage import (
    CACHE_BLOCK,
    REPLY_PRIMING,
    message_text,
    message_tokens,
    tokens,
)
from consumer.testing.fake_openai.values import Context, Gen

__all__ = ["PLANS_KEPT", "Plan", "Plans", "render"]

#: Plans kept before the cache starts afresh (shapes repeat: a few per benchmark).
PLANS_KEPT = 1024


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


class Plans:
    """The plans of the shapes seen so far, and the system-message prefixes seen (the
    simulated prompt cache)."""

    def __init__(self) -> None:
        self._plans: dict[tuple[bytes, tuple[Any, ...]], Plan] = {}
        self._prefixes: set[tuple[str, str]] = set()

    def clear(self) -> None:
        """Forget the plans (new knobs change their errors); seen prefixes stay cached."""
        self._plans.clear()

    def reset(self) -> None:
        """Forget the plans and the cached prefixes."""
        self._plans.clear()
        self._prefixes.clear()

    def plan(self, body: dict[str, Any], messages: list[Any], config: FakeConfig) -> Plan:
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
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= PLANS_KEPT:
                self._plans.clear()
            systems_at = {i for i, _, _ in systems}
            plan = self._plans[key] = self._build(body, messages, systems_at, config)
        return plan

    def _build(
        self, body: dict[str, Any], messages: list[Any], systems: set[int], config: FakeConfig
    ) -> Plan:
        model = str(body["model"])
        plan = Plan(model=model)
        try:
            plan.effort = check_chat(body, model, config)
            _shape(body, messages, plan)
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
            plan.seen = prefix in self._prefixes
            self._prefixes.add(prefix)
            if plan.first_tokens >= config.cache_min_tokens:
                plan.cached_tokens = plan.first_tokens // CACHE_BLOCK * CACHE_BLOCK
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        plan.allowance = int(limit or DEFAULT_MAX_TOKENS)
        return plan


def _shape(body: dict[str, Any], messages: list[Any], plan: Plan) -> None:
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
