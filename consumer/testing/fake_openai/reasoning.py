"""The fake plays a reasoning model: OpenAI's parameter rules and hidden reasoning tokens.

For model names of OpenAI's reasoning families (the o-series, GPT-5 except the ``-chat``
models) and with ``reasoning_rules`` on, a chat request is checked the way OpenAI checks it:
``max_tokens`` is a 400 ``unsupported_parameter`` (use ``max_completion_tokens``), a
``temperature`` other than the default 1 a 400 ``unsupported_value``, a ``reasoning_effort`` the
model does not take a 400 ``unsupported_value``; the error bodies are OpenAI's, word for word
as far as we know them. The reply then spends reasoning tokens (by effort, deterministic per
content) inside ``max_completion_tokens``: when they leave no room, the reply is empty with
``finish_reason: length``, as a real reasoning model's is.

The fake decides this on its own, not from modstream's table in
:mod:`consumer.model.request_params`: the client's rules are tested against the server's, not
against themselves.
"""

from __future__ import annotations

import re
from typing import Any

from consumer.testing.fake_openai.faults import Fail

#: Reasoning tokens spent per effort, before the content-dependent part.
_SPENT = {"none": 0, "minimal": 24, "low": 160, "medium": 640, "high": 2560, "xhigh": 5120}


def is_reasoning(model: str) -> bool:
    """Whether ``model`` is one of OpenAI's reasoning models (by name)."""
    name = model.lower()
    if re.match(r"^gpt-5(\.\d+)?-chat", name):
        return False
    return re.match(r"^(o\d|gpt-5)", name) is not None


def efforts(model: str) -> tuple[str, ...]:
    """The ``reasoning_effort`` values ``model`` takes; its default is :func:`default_effort`."""
    name = model.lower()
    if re.match(r"^gpt-5\.1", name):
        return ("none", "low", "medium", "high")
    if re.match(r"^gpt-5\.\d", name):
        return ("none", "low", "medium", "high", "xhigh")
    if name.startswith("gpt-5"):
        return ("minimal", "low", "medium", "high")
    return ("low", "medium", "high")


def default_effort(model: str) -> str:
    """The effort a request without ``reasoning_effort`` gets (OpenAI's defaults)."""
    return "none" if re.match(r"^gpt-5\.\d", model.lower()) else "medium"


def check(body: dict[str, Any], model: str) -> str:
    """Raise the 400 OpenAI answers for a parameter ``model`` does not take; else the effort."""
    if "max_tokens" in body:
        raise Fail.unsupported_parameter("max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _unsupported_value(
            "temperature",
            f"Unsupported value: 'temperature' does not support {temperature!r} with this "
            "model. Only the default (1) value is supported.",
        )
    effort = body.get("reasoning_effort")
    if effort is None:
        return default_effort(model)
    allowed = efforts(model)
    if effort not in allowed:
        quoted = [f"'{e}'" for e in allowed]
        listed = ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]
        raise _unsupported_value(
            "reasoning_effort",
            f"Unsupported value: '{effort}' is not supported with the '{model}' model. "
            f"Supported values are: {listed}.",
        )
    return str(effort)


def _unsupported_value(param: str, message: str) -> Fail:
    fail = Fail.bad_request(message, "unsupported_value")
    fail.param = param
    return fail


def spent(effort: str, content_tokens: int) -> int:
    """Reasoning tokens a reply spends: more for more effort and longer content."""
    base = _SPENT.get(effort, _SPENT["medium"])
    return base + (content_tokens // 4 if base else 0)
