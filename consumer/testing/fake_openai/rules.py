"""What the fake's API accepts, decided the same way by both servers (the aiohttp app and
benchmark mode's plans): the models it serves, the default completion budget, and the 4xx a
chat request earns from its shape before its content is read."""

from __future__ import annotations

from typing import Any

from consumer.testing.fake_openai import reasoning
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Fail

DEFAULT_MAX_TOKENS = 4096
MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5.1",
    "o4-mini",
    "o3",
    "omni-moderation-latest",
)


def check_model(model: str, config: FakeConfig) -> None:
    """404 for a model the fake does not serve (unless ``strict_models`` is off)."""
    if config.strict_models and model not in MODELS:
        raise Fail.model_not_found(model)


def check_chat(body: dict[str, Any], model: str, config: FakeConfig) -> str | None:
    """Raise the 4xx a chat request of this shape gets, in this order: streaming asked for, an
    unknown model, the unsupported parameter (knob), a reasoning model's parameter rules, a
    rejected ``json_schema`` (knob). The reasoning effort the request runs at, or None."""
    if body.get("stream"):
        raise Fail.bad_request("The fake does not support streaming.")
    check_model(model, config)
    if config.unsupported_param is not None and config.unsupported_param in body:
        raise Fail.unsupported_parameter(config.unsupported_param)
    effort = None
    if config.reasoning_rules and reasoning.is_reasoning(model):
        effort = reasoning.check(body, model)
    response_format = body.get("response_format")
    wants_schema = isinstance(response_format, dict) and (
        response_format.get("type") == "json_schema"
    )
    if config.reject_json_schema and wants_schema:
        raise Fail.json_schema_unsupported()
    return effort
