"""The chat-completions call on the hot path: two ways to send it, one small reply model.

The openai SDK is the source of the client's configuration (base URL, auth headers, default
headers, organization and project, Azure's deployment URL and ``api-version``, timeouts) and
of the error vocabulary (its status, timeout and connection errors, which
:func:`consumer.model.provider.translate` turns into ours). What it costs per call is another
matter: ~1.5 ms of CPU to transform the parameters (checking every message against every
member of the message-type union), build an httpx request and parse a full
``ChatCompletion``, where the request changes per message only in its ``messages``.

So there are two senders with one interface, chosen by ``MODSTREAM_CHAT_CLIENT``:

``lean`` (:class:`LeanChat`, the default)
    asks the SDK once, at start, for the URL and headers of a chat request (through its own
    request builder: a private helper, hence the pinned SDK range and
    ``tests/unit/model/test_chat_client.py``), then posts ``orjson`` bytes over one pooled aiohttp
    session: the static part of the body (model, budget, temperature, ``response_format``)
    is serialized once per request shape (:class:`Statics`), the messages per message. A
    status error is built by the SDK's own ``_make_status_error_from_response`` from the
    reply, so it is the exception the SDK would have raised; timeouts and connection
    failures become ``openai.APITimeoutError`` and ``openai.APIConnectionError``.
``sdk`` (:class:`SdkChat`)
    ``client.chat.completions.with_raw_response.create``: for a provider where the lean
    request would be wrong (an auth scheme that changes per request), at the old cost.

Both parse the reply with :class:`Completion`, a model of only the fields used, and raise
``ValueError`` for a 200 whose body is not a chat completion (a gateway's HTML page).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self, cast

import aiohttp
import aiohttp.helpers
import httpx2
import openai
import orjson
import pydantic
import yarl
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions
from openai.types.chat import ChatCompletionMessageParam

from consumer.model.messages import Message

__all__ = ["ChatSender", "Choice", "Completion", "LeanChat", "SdkChat", "Statics", "sender"]

#: Headers of the SDK's template that aiohttp sets for itself, per request or connection.
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})
#: Reply headers that no longer hold once aiohttp has read (and decompressed) the body.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class _Message(pydantic.BaseModel):
    content: str | None = None
    refusal: str | None = None


class Choice(pydantic.BaseModel):
    """One choice of a chat completion: the reply message and why it ended."""

    message: _Message
    finish_reason: str | None = None


class _PromptDetails(pydantic.BaseModel):
    cached_tokens: int | None = None


class _CompletionDetails(pydantic.BaseModel):
    reasoning_tokens: int | None = None


class _Usage(pydantic.BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class Completion(pydantic.BaseModel):
    """The fields of a chat completion that modstream reads; everything else is ignored.

    Validating these from the raw bytes costs a few microseconds, a full ``ChatCompletion``
    through the SDK's parser over a hundred."""

    choices: list[Choice] = []
    usage: _Usage | None = None

    @classmethod
    def parse(cls, body: bytes) -> Completion:
        """The completion in ``body``; ``ValueError`` if it is not one."""
        try:
            return cls.model_validate_json(body)
        except pydantic.ValidationError as exc:
            # ValidationError is a ValueError; say what it was in one line, not the model's.
            raise ValueError(
                f"the 200 reply is not a chat completion ({exc.error_count()} errors)"
            ) from None


@dataclass(frozen=True, slots=True)
class Statics:
    """Everything a chat request carries besides its ``messages``, in both forms a sender
    takes: keyword arguments (the SDK's) and serialized JSON (the lean sender's)."""

    kwargs: Mapping[str, Any]
    #: ``kwargs`` as one JSON object, serialized once.
    json: bytes

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Statics:
        """From the request's keyword arguments (``model`` included)."""
        return cls(kwargs, orjson.dumps(dict(kwargs)))

    def body(self, messages: list[Message]) -> bytes:
        """The whole request body: ``messages`` first, then the static fields."""
        head = b'{"messages":' + orjson.dumps(messages)
        return head + b"}" if self.json == b"{}" else head + b"," + self.json[1:]


#: What a sender hands back: the completion and the reply's headers (rate-limit state).
Reply = tuple[Completion, Mapping[str, str]]


class ChatSender(Protocol):
    """Sends one chat completion request; raises openai's exceptions (or ``ValueError``)."""

    async def create(self, messages: list[Message], statics: Statics) -> Reply:
        """Post ``messages`` with ``statics``; the parsed completion and the headers."""
        ...  # pragma: no cover

    async def aclose(self) -> None:
        """Release the sender's connections."""
        ...  # pragma: no cover


class SdkChat:
    """The SDK's own call path (see the module docstring)."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create(self, messages: list[Message], statics: Statics) -> Reply:
        """One ``chat.completions.create`` through the SDK, parsed with :class:`Completion`."""
        raw = await self.client.chat.completions.with_raw_response.create(
            messages=cast("list[ChatCompletionMessageParam]", messages), **statics.kwargs
        )
        return Completion.parse(raw.content), raw.headers

    async def aclose(self) -> None:
        """Nothing of its own: the SDK client is closed by its owner."""


class LeanChat:
    """Chat requests as pre-serialized bytes over one aiohttp session (module docstring).

    Use as ``async with LeanChat(client) as chat``: entering (or else the first request)
    asks the SDK for the request's URL and headers (once: a key that changes per request needs
    :class:`SdkChat`) and opens the session; leaving closes it.
    """

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client
        self.url = ""
        self.headers: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._request = httpx2.Request("POST", "http://unopened")  # replaced on opening
        self.proxy: yarl.URL | None = None
        self.proxy_auth: aiohttp.BasicAuth | None = None
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self._opened()
        return self

    async def _opened(self) -> aiohttp.ClientSession:
        """The session, opened first if need be (once, however many requests wait)."""
        async with self._opening:
            if self._session is None:
                self._session = await self._open()
            return self._session

    async def _open(self) -> aiohttp.ClientSession:
        options = FinalRequestOptions.construct(
            method="post", url="/chat/completions", json_data={"model": "template"}
        )
        options = await self.client._prepare_options(options)
        request = self.client._build_request(options)
        await self.client._prepare_request(request)
        self.url = str(request.url)
        self.headers = {
            k: v for k, v in request.headers.items() if k.lower() not in _TRANSPORT_HEADERS
        }
        self._request = httpx2.Request("POST", self.url)  # the ``request`` of our errors
        timeout = self.client.timeout
        if isinstance(timeout, httpx2.Timeout):
            connect, read = timeout.connect, timeout.read
        else:
            connect = read = timeout
        # HTTPS_PROXY / NO_PROXY, as the SDK's httpx client honours them, read once here:
        # aiohttp's trust_env would look them (and ~/.netrc) up in a thread on every request.
        self.proxy, self.proxy_auth = _env_proxy(self.url)
        return aiohttp.ClientSession(
            # No cap here: the limiter bounds the requests in flight.
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read),
            skip_auto_headers=("User-Agent",),  # the SDK's user agent is in the template
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def create(self, messages: list[Message], statics: Statics) -> Reply:
        """Post the request; openai's exception for a failure, as the SDK would raise it."""
        session = self._session or await self._opened()
        body = statics.body(messages)
        try:
            async with session.post(
                self.url,
                data=body,
                headers=self.headers,
                proxy=self.proxy,
                proxy_auth=self.proxy_auth,
            ) as reply:
                content = await reply.read()
                status, headers = reply.status, reply.headers
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise openai.APITimeoutError(request=self._request) from exc
        except aiohttp.ClientError as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise openai.APIConnectionError(message=message, request=self._request) from exc
        if status >= 400:
            raise self._status_error(status, headers, content)
        return Completion.parse(content), headers

    def _status_error(self, status: int, headers: Mapping[str, str], content: bytes) -> Exception:
        """The SDK's own exception for an error reply (its class, message, body, code)."""
        kept = [(k, v) for k, v in headers.items() if k.lower() not in _BODY_HEADERS]
        response = httpx2.Response(status, headers=kept, content=content, request=self._request)
        return self.client._make_status_error_from_response(response)


def _env_proxy(url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``...)."""
    try:
        return aiohttp.helpers.get_env_proxy_for_url(yarl.URL(url))
    except LookupError:  # none, or NO_PROXY covers the host
        return None, None


def sender(
    kind: Literal["lean", "sdk"], client: AsyncOpenAI
) -> AbstractAsyncContextManager[ChatSender]:
    """The sender ``MODSTREAM_CHAT_CLIENT`` names, over ``client``: enter it with
    ``async with``."""
    return LeanChat(client) if kind == "lean" else SdkChat(client)
