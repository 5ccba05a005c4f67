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

The reply's format (``MODSTREAM_RESPONSE_FORMAT`` and its ladder) is
:mod:`consumer.model.reply_format`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "EFFORTS",
    "FAMILIES",
    "Family",
    "RequestParams",
    "Server",
    "TokenParam",
    "choose",
    "family_for",
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
_LMH = ("low", "medium", "high")


def _openai(
    name: str,
    pattern: str,
    efforts: tuple[str, ...],
    note: str,
    *,
    reasoning: bool = True,
    sampling: bool = False,
) -> Family:
    """A row for one of OpenAI's model lines, wherever it is served: ``max_completion_tokens``;
    ``sampling``: it takes ``temperature`` and ``seed`` (the reasoning models reject them)."""
    return Family(name, pattern, _ALL, reasoning, _MCT, sampling, sampling, efforts, note)


def _any_other(name: str, servers: frozenset[Server], token_param: TokenParam, note: str) -> Family:
    """A catch-all row for the models of ``servers`` no earlier row names."""
    return Family(name, r"", servers, False, token_param, True, True, None, note)


#: The parameter table: the first row whose pattern matches the model name (lower case, any
#: ``provider/`` prefix dropped) on that kind of server decides. OpenAI's model names decide
#: wherever they are served (a proxy or gateway passes the body on to OpenAI), other names by
#: the server. ``seed`` is not sent to reasoning models: OpenAI does not document it for them.
FAMILIES: Final[tuple[Family, ...]] = (
    _openai(
        "o1-early",
        r"^o1-(mini|preview)\b",
        (),
        "o1-mini, o1-preview: reasoning, but no reasoning_effort",
    ),
    _openai("o-series", r"^o\d", _LMH, "o1, o3, o3-mini, o4-mini"),
    _openai(
        "gpt-5-pro", r"^gpt-5(\.\d+)?-pro\b", ("high",), "gpt-5-pro, gpt-5.x-pro: high effort only"
    ),
    _openai(
        "gpt-5-chat",
        r"^gpt-5(\.\d+)?-chat\b",
        (),
        "gpt-5-chat-latest, gpt-5.1-chat-latest",
        reasoning=False,
    ),
    _openai("gpt-5", r"^gpt-5($|-)", ("minimal", *_LMH), "gpt-5, gpt-5-mini, gpt-5-nano"),
    _openai(
        "gpt-5.1",
        r"^gpt-5\.1($|-)",
        ("none", *_LMH),
        "gpt-5.1 (and its -mini etc.): 'none' is the lowest, 'minimal' is rejected",
    ),
    _openai("gpt-5.x", r"^gpt-5\.\d", ("none", *_LMH, "xhigh"), "gpt-5.2 and later"),
    Family(
        "gpt-oss",
        r"^gpt-oss\b",
        _ALL,
        reasoning=True,
        token_param=None,
        temperature=True,
        seed=True,
        efforts=_LMH,
        note="open-weight reasoning models, usually on vLLM or Ollama",
    ),
    _openai(
        "openai-chat",
        r"^(gpt-4|gpt-3\.5|chatgpt-)",
        (),
        "gpt-4o, gpt-4o-mini, gpt-4.1, gpt-4.1-mini, gpt-4-turbo",
        reasoning=False,
        sampling=True,
    ),
    _any_other("hosted", _HOSTED, _MCT, "any other model on OpenAI or Azure"),
    _any_other(
        "compatible",
        frozenset({Server.COMPATIBLE}),
        TokenParam.MAX_TOKENS,
        "any other model on vLLM, Ollama, llama.cpp's server or another compatible one",
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
