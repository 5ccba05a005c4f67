"""What a chat request carries, decided once from the model name, the server and the settings.

Providers disagree on the parameters of one chat completion: OpenAI's reasoning models (the
o-series, GPT-5) reject ``max_tokens`` and any non-default ``temperature`` with a 400 and take a
``reasoning_effort``; OpenAI and Azure take ``max_completion_tokens`` for every current chat
model; vLLM, Ollama and llama.cpp's server all know ``max_tokens``. Rather than ``if``\\ s at
every call site, :data:`FAMILIES` is a table of rules keyed by a model-name pattern and the
kind of server (:class:`Server`, from the base URL); the first row that matches decides, and
settings may override any column (``MODSTREAM_MODEL_FAMILY``, ``MODSTREAM_TOKEN_LIMIT_PARAM``,
``MODSTREAM_REASONING_EFFORT``, ``MODSTREAM_REASONING_BUDGET_TOKENS``). :func:`choose` turns
one row and the settings into :class:`RequestParams`: the keyword arguments every chat request
of a Classifier carries, built once.

The response format is decided here too. ``MODSTREAM_RESPONSE_FORMAT`` is ``json_schema``
(strict structured output), ``json_object`` (JSON mode, the schema written into the system
prompt), ``text`` (no ``response_format`` at all; the schema in the prompt, the reply parsed as
JSON) or ``auto``: :class:`ResponseFormats` starts at ``json_schema`` and, when the server
rejects the format with a 400 (or 422) before it ever accepted it, moves one step down the
ladder for good, logged at WARNING; classify then raises
:class:`~consumer.errors.FormatDowngraded`, a transient error, so the rejected request is sent
again in the new mode (no dead letter, no poison count). The mode is read when a request goes
out, so requests queued for a limiter slot meanwhile go out in the new mode.
:class:`ReplyFormat` holds one reply schema in each mode's shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import openai
import structlog

log = structlog.get_logger(__name__)

__all__ = [
    "EFFORTS",
    "FAMILIES",
    "Family",
    "ReplyFormat",
    "ReplyMode",
    "RequestParams",
    "ResponseFormats",
    "Server",
    "TokenParam",
    "choose",
    "family_for",
    "rejects_response_format",
    "server_kind",
]


class Server(StrEnum):
    """The kind of server behind the base URL."""

    OPENAI = "openai"  # no base URL, or api.openai.com
    AZURE = "azure"  # Azure OpenAI (AsyncAzureOpenAI, or a *.openai.azure.com base URL)
    COMPATIBLE = "compatible"  # anything else: vLLM, Ollama, llama.cpp, a proxy, the fake


class TokenParam(StrEnum):
    """The name of the completion budget in the request body."""

    MAX_COMPLETION_TOKENS = "max_completion_tokens"
    MAX_TOKENS = "max_tokens"


#: Every reasoning effort OpenAI's API knows, lowest first.
EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh")

#: Room for hidden reasoning tokens on top of the reply's budget, per effort. Reasoning tokens
#: are spent inside ``max_completion_tokens``; too little room ends in ``finish_reason:
#: length`` with empty content. Only what is used is billed, so the room costs nothing.
REASONING_ROOM: Final = MappingProxyType(
    {
        "none": 0,
        "minimal": 1024,
        "low": 4096,
        "medium": 8192,
        "high": 16384,
        "xhigh": 32768,
        None: 8192,  # a reasoning model at its own default effort (OpenAI's: medium)
    }
)


@dataclass(frozen=True, slots=True)
class Family:
    """One row of the parameter table.

    ``efforts``: the ``reasoning_effort`` values the model accepts, lowest first (the default
    is the lowest: a moderation verdict needs little reasoning); ``()`` when it takes none;
    ``None`` when unknown (nothing is sent unless a setting asks). ``token_param`` ``None``:
    the server's usual one (``max_completion_tokens`` on OpenAI and Azure, ``max_tokens``
    elsewhere).
    """

    name: str
    pattern: str
    servers: frozenset[Server]
    reasoning: bool
    token_param: TokenParam | None
    temperature: bool
    seed: bool
    efforts: tuple[str, ...] | None
    note: str

    def matches(self, model: str, server: Server) -> bool:
        """Whether this row applies to ``model`` on ``server``."""
        return server in self.servers and re.search(self.pattern, _bare(model)) is not None


_ALL = frozenset(Server)
_HOSTED = frozenset({Server.OPENAI, Server.AZURE})
_MCT = TokenParam.MAX_COMPLETION_TOKENS

#: The parameter table: the first row whose pattern matches the model name (lower case, any
#: ``provider/`` prefix dropped) on that kind of server decides. OpenAI's model names decide
#: wherever they are served (a proxy or gateway passes the body on to OpenAI), other names by
#: the server. ``seed`` is not sent to reasoning models: OpenAI does not document it for them.
FAMILIES: Final[tuple[Family, ...]] = (
    Family(
        "o1-early",
        r"^o1-(mini|preview)\b",
        _ALL,
        reasoning=True,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=(),
        note="o1-mini, o1-preview: reasoning, but no reasoning_effort",
    ),
    Family(
        "o-series",
        r"^o\d",
        _ALL,
        reasoning=True,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=("low", "medium", "high"),
        note="o1, o3, o3-mini, o4-mini",
    ),
    Family(
        "gpt-5-pro",
        r"^gpt-5(\.\d+)?-pro\b",
        _ALL,
        reasoning=True,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=("high",),
        note="gpt-5-pro, gpt-5.x-pro: high effort only",
    ),
    Family(
        "gpt-5-chat",
        r"^gpt-5(\.\d+)?-chat\b",
        _ALL,
        reasoning=False,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=(),
        note="gpt-5-chat-latest, gpt-5.1-chat-latest",
    ),
    Family(
        "gpt-5",
        r"^gpt-5($|-)",
        _ALL,
        reasoning=True,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=("minimal", "low", "medium", "high"),
        note="gpt-5, gpt-5-mini, gpt-5-nano",
    ),
    Family(
        "gpt-5.1",
        r"^gpt-5\.1($|-)",
        _ALL,
        reasoning=True,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=("none", "low", "medium", "high"),
        note="gpt-5.1 (and its -mini etc.): 'none' is the lowest, 'minimal' is rejected",
    ),
    Family(
        "gpt-5.x",
        r"^gpt-5\.\d",
        _ALL,
        reasoning=True,
        token_param=_MCT,
        temperature=False,
        seed=False,
        efforts=("none", "low", "medium", "high", "xhigh"),
        note="gpt-5.2 and later",
    ),
    Family(
        "gpt-oss",
        r"^gpt-oss\b",
        _ALL,
        reasoning=True,
        token_param=None,
        temperature=True,
        seed=True,
        efforts=("low", "medium", "high"),
        note="open-weight reasoning models, usually on vLLM or Ollama",
    ),
    Family(
        "openai-chat",
        r"^(gpt-4|gpt-3\.5|chatgpt-)",
        _ALL,
        reasoning=False,
        token_param=_MCT,
        temperature=True,
        seed=True,
        efforts=(),
        note="gpt-4o, gpt-4o-mini, gpt-4.1, gpt-4.1-mini, gpt-4-turbo",
    ),
    Family(
        "hosted",
        r"",
        _HOSTED,
        reasoning=False,
        token_param=_MCT,
        temperature=True,
        seed=True,
        efforts=None,
        note="any other model on OpenAI or Azure",
    ),
    Family(
        "compatible",
        r"",
        frozenset({Server.COMPATIBLE}),
        reasoning=False,
        token_param=TokenParam.MAX_TOKENS,
        temperature=True,
        seed=True,
        efforts=None,
        note="any other model on vLLM, Ollama, llama.cpp's server or another compatible one",
    ),
)

_BY_NAME: Final = MappingProxyType({f.name: f for f in FAMILIES})


def _bare(model: str) -> str:
    """The model name as the table matches it: lower case, no ``openai/`` style prefix."""
    return model.strip().lower().rsplit("/", 1)[-1]


def server_kind(base_url: object, *, azure: bool = False) -> Server:
    """The kind of server at ``base_url`` (``None``: the SDK's default, OpenAI)."""
    if azure:
        return Server.AZURE
    if base_url is None:
        return Server.OPENAI
    host = (urlsplit(str(base_url)).hostname or "").lower()
    if host == "api.openai.com":
        return Server.OPENAI
    if host.endswith((".openai.azure.com", ".cognitiveservices.azure.com")):
        return Server.AZURE
    return Server.COMPATIBLE


def family_for(model: str, server: Server, name: str = "auto") -> Family:
    """The table row for ``model`` on ``server``, or the row called ``name`` when not auto."""
    if name != "auto":
        try:
            return _BY_NAME[name]
        except KeyError:
            raise ValueError(
                f"MODSTREAM_MODEL_FAMILY: unknown family {name!r}; one of auto, "
                + ", ".join(_BY_NAME)
            ) from None
    return next(f for f in FAMILIES if f.matches(model, server))


@dataclass(frozen=True, slots=True)
class RequestParams:
    """The parameters every chat request of one Classifier carries (see :func:`choose`)."""

    family: Family
    server: Server
    token_param: TokenParam
    #: The visible reply's budget (``MODSTREAM_MAX_TOKENS``).
    reply_tokens: int
    #: Room for reasoning on top of it (0 for a model that does not reason).
    reasoning_room: int
    reasoning_effort: str | None
    #: Everything but the completion budget, ready to pass to ``create(**...)``.
    fixed: MappingProxyType[str, Any]

    @property
    def completion_budget(self) -> int:
        """The completion budget of a single call: the reply plus room for reasoning."""
        return self.reply_tokens + self.reasoning_room

    def batch_budget(self, count: int) -> int:
        """The completion budget of one call classifying ``count`` messages."""
        return self.reply_tokens * count + self.reasoning_room

    def kwargs(self, budget: int) -> dict[str, Any]:
        """The keyword arguments of one chat request whose completion budget is ``budget``."""
        return {**self.fixed, self.token_param.value: budget}

    def describe(self) -> dict[str, Any]:
        """What the start-up log says about the request (no secrets here)."""
        return {
            "family": self.family.name,
            "server": self.server.value,
            "token_param": self.token_param.value,
            "completion_budget": self.completion_budget,
            **self.fixed,
        }


def choose(
    model: str,
    server: Server,
    *,
    max_tokens: int,
    temperature: float,
    seed: int | None = None,
    family: str = "auto",
    budget_name: str = "auto",
    reasoning_effort: str = "auto",
    reasoning_budget: int | None = None,
) -> RequestParams:
    """The request parameters for ``model`` on ``server`` under these settings.

    ``reasoning_effort``: ``auto`` (the lowest the family takes; nothing when it takes none or
    is not known to), ``off`` (never sent) or one of :data:`EFFORTS`. Raises ``ValueError``
    naming the setting when a value cannot work with the model (an effort the family does not
    take, a family name not in the table).
    """
    row = family_for(model, server, family)
    if budget_name != "auto":
        param = TokenParam(budget_name)
    elif row.token_param is not None:
        param = row.token_param
    elif server is Server.COMPATIBLE:
        param = TokenParam.MAX_TOKENS
    else:
        param = TokenParam.MAX_COMPLETION_TOKENS
    effort = _effort(row, model, reasoning_effort)
    fixed: dict[str, Any] = {}
    if row.temperature:
        fixed["temperature"] = temperature
    if effort is not None:
        fixed["reasoning_effort"] = effort
    if seed is not None and row.seed:
        fixed["seed"] = seed
    reasons = row.reasoning or effort is not None
    if reasoning_budget is not None:
        room = reasoning_budget if reasons else 0
    elif reasons:
        room = REASONING_ROOM[effort if effort in REASONING_ROOM else None]
    else:
        room = 0
    return RequestParams(
        family=row,
        server=server,
        token_param=param,
        reply_tokens=max_tokens,
        reasoning_room=room,
        reasoning_effort=effort,
        fixed=MappingProxyType(fixed),
    )


def _effort(row: Family, model: str, setting: str) -> str | None:
    """The ``reasoning_effort`` to send, from the row and the setting."""
    if setting == "off":
        return None
    if setting == "auto":
        return row.efforts[0] if row.efforts else None
    if setting not in EFFORTS:
        raise ValueError(
            f"MODSTREAM_REASONING_EFFORT: {setting!r} is not one of auto, off, "
            + ", ".join(EFFORTS)
        )
    if row.efforts is not None and setting not in row.efforts:
        takes = ", ".join(row.efforts) if row.efforts else "no reasoning_effort at all"
        raise ValueError(
            f"MODSTREAM_REASONING_EFFORT: {model!r} ({row.name} family) takes {takes}, "
            f"not {setting!r}"
        )
    return setting


# ---- response format -------------------------------------------------------------------------


class ReplyMode(StrEnum):
    """How the reply's JSON shape is asked for, strictest first."""

    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    TEXT = "text"


#: ``auto`` walks down this ladder, one step per rejection, never back up.
_LADDER: Final = (ReplyMode.JSON_SCHEMA, ReplyMode.JSON_OBJECT, ReplyMode.TEXT)

#: The schema as the system prompt states it in json_object and text mode.
_SCHEMA_NOTE = (
    "\n\nReply with one JSON object and nothing else (no code fence, no text before or after "
    "it). It must match this JSON Schema:\n"
)


@dataclass(frozen=True, slots=True)
class ReplyFormat:
    """One reply schema, ready for each mode: built once per schema, not per message."""

    #: The strict ``json_schema`` response_format.
    json_schema: MappingProxyType[str, Any]
    #: Appended to the system message in json_object and text mode.
    instructions: str

    @classmethod
    def of(cls, response_format: dict[str, Any]) -> ReplyFormat:
        """From a strict ``{"type": "json_schema", "json_schema": {...}}`` response_format."""
        schema = response_format["json_schema"]["schema"]
        text = _SCHEMA_NOTE + json.dumps(schema, separators=(",", ":"))
        return cls(MappingProxyType(response_format), text)

    def shaped(
        self, messages: list[dict[str, str]], mode: ReplyMode
    ) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
        """``messages`` and the ``response_format`` to send in ``mode`` (None: send none)."""
        return self.messages(messages, mode), self.response_format(mode)

    def messages(self, messages: list[dict[str, str]], mode: ReplyMode) -> list[dict[str, str]]:
        """``messages`` as sent in ``mode``: the schema stated in the system message, unless
        the ``json_schema`` response_format carries it."""
        if mode is ReplyMode.JSON_SCHEMA:
            return messages
        first = messages[0] if messages else None
        if first is not None and first.get("role") == "system":
            system = {"role": "system", "content": first["content"] + self.instructions}
            return [system, *messages[1:]]
        return [{"role": "system", "content": self.instructions.lstrip()}, *messages]

    def response_format(self, mode: ReplyMode) -> dict[str, Any] | None:
        """The ``response_format`` sent in ``mode`` (None: text mode sends none)."""
        if mode is ReplyMode.JSON_SCHEMA:
            return dict(self.json_schema)
        return {"type": "json_object"} if mode is ReplyMode.JSON_OBJECT else None


def rejects_response_format(error: BaseException) -> bool:
    """Whether ``error`` (openai's, or ours translated from it) is a 400/422 about the
    response format."""
    cause = error if isinstance(error, openai.APIStatusError) else error.__cause__
    if not isinstance(cause, openai.APIStatusError) or cause.status_code not in (400, 422):
        return False
    if (cause.param or "").startswith("response_format"):
        return True
    text = f"{cause.message} {cause.body}".lower()
    return "response_format" in text or "json_schema" in text


class ResponseFormats:
    """The response-format mode in use by one Classifier; in ``auto``, its one-way downgrade."""

    def __init__(self, setting: str = "auto", *, where: str = "the provider") -> None:
        self.auto = setting == "auto"
        try:
            self.mode = ReplyMode.JSON_SCHEMA if self.auto else ReplyMode(setting)
        except ValueError:
            raise ValueError(
                f"MODSTREAM_RESPONSE_FORMAT: {setting!r} is not one of auto, " + ", ".join(_LADDER)
            ) from None
        self.where = where
        #: The server answered a request in the current mode: it supports it.
        self._accepted = False

    def accepted(self, mode: ReplyMode) -> None:
        """A request sent in ``mode`` got a 200."""
        if mode is self.mode:
            self._accepted = True

    def downgrade(self, mode: ReplyMode, error: BaseException) -> bool:
        """Whether a request sent in ``mode`` and rejected with ``error`` is to be sent again
        (in :attr:`mode`, which this may just have lowered): only in ``auto``, only for a
        rejection of the response format, and only while the server never accepted the mode
        (a format it took before is not the problem)."""
        if not self.auto or not rejects_response_format(error):
            return False
        if mode is not self.mode:
            return _LADDER.index(self.mode) > _LADDER.index(mode)  # moved on meanwhile
        if self._accepted or mode is ReplyMode.TEXT:
            return False
        self.mode = _LADDER[_LADDER.index(mode) + 1]
        log.warning(
            "the provider rejects the response format: switching",
            rejected=mode.value,
            now=self.mode.value,
            provider=self.where,
            error=str(getattr(error, "message", error))[:300],
        )
        return True
