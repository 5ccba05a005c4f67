"""chat_client: the lean sender sends what the SDK sends and raises what the SDK raises.

The lean sender takes its URL and headers from the SDK's private request builder and its
status errors from the SDK's private ``_make_status_error_from_response``: these tests pin
that to the SDK range in pyproject.toml. Each request is made both ways, the SDK's through
``httpx2.MockTransport`` and the lean one over HTTP to :class:`ScriptedServer`, and compared.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import httpx2
import openai
import orjson
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from openai import AsyncAzureOpenAI, AsyncOpenAI

from consumer.app import loop_factory
from consumer.errors import ConfigError
from consumer.model.chat_client import Completion, LeanChat, SdkChat, Statics
from tests.unit.scripted_http import ScriptedServer

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "system", "content": "judge"}, {"role": "user", "content": "héllo \u2028"}]
STATICS = Statics.of(
    {
        "model": "gpt-4o-mini",
        "max_completion_tokens": 200,
        "temperature": 0.0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "v", "strict": True}},
    }
)
REPLY = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": '{"a": 1}', "refusal": None},
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    },
}
#: Headers aiohttp and httpx each set for themselves (framing, connection, compression), and
#: the one the SDK adds for ``with_raw_response`` (how it hands the reply to its caller).
TRANSPORT = {"host", "content-length", "connection", "accept-encoding", "x-stainless-raw-response"}


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


class Seen:
    """Answers every request with ``answer`` and keeps the requests."""

    def __init__(self, answer: httpx2.Response) -> None:
        self.answer = answer
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.answer


def sdk_client(handler: Seen, **options: Any) -> AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AsyncOpenAI(api_key="sk-test", max_retries=0, http_client=http, **options)


async def both(
    server: ScriptedServer, answer: httpx2.Response, **options: Any
) -> tuple[httpx2.Request, httpx2.Request, Any, Any]:
    """The same request made through the SDK and through the lean sender: the two requests
    as the server saw them, and the two outcomes (a reply or the exception)."""
    via_sdk, via_lean = Seen(answer), Seen(answer)
    sdk = sdk_client(via_sdk, base_url="http://test/v1", **options)
    lean_client = AsyncOpenAI(
        api_key="sk-test", max_retries=0, base_url=server.base_url(via_lean), **options
    )
    outcomes: list[Any] = []
    async with SdkChat(sdk) as one, LeanChat(lean_client) as other:
        for sender in (one, other):
            try:
                outcomes.append(await sender.create(MESSAGES, STATICS))
            except openai.OpenAIError as exc:
                outcomes.append(exc)
    return via_sdk.requests[0], via_lean.requests[0], outcomes[0], outcomes[1]


def headers(request: httpx2.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in TRANSPORT}


async def test_the_lean_request_is_the_sdks(server: ScriptedServer) -> None:
    sdk, lean, _, _ = await both(
        server,
        httpx2.Response(200, json=REPLY),
        organization="org-1",
        project="proj-1",
        default_headers={"X-Team": "trust"},
    )
    assert lean.url.path.endswith("/v1/chat/completions")
    assert lean.method == sdk.method == "POST"
    assert json.loads(lean.content) == json.loads(sdk.content)
    assert headers(lean) == headers(sdk)
    assert headers(lean)["authorization"] == "Bearer sk-test"
    assert headers(lean)["openai-organization"] == "org-1"
    assert headers(lean)["x-team"] == "trust"


class AzureOptions(TypedDict):
    """What both Azure clients share, typed so ``**`` is checked against the SDK's overloads."""

    api_key: str
    api_version: str
    azure_deployment: str


async def test_the_lean_azure_request_is_the_sdks(server: ScriptedServer) -> None:
    via_sdk, via_lean = (
        Seen(httpx2.Response(200, json=REPLY)),
        Seen(httpx2.Response(200, json=REPLY)),
    )
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(via_sdk))
    azure = AzureOptions(api_key="az-key", api_version="2024-10-21", azure_deployment="dep")
    sdk = AsyncAzureOpenAI(azure_endpoint="http://test", http_client=http, **azure)
    endpoint = server.base_url(via_lean).removesuffix("/v1")
    lean = AsyncAzureOpenAI(azure_endpoint=endpoint, **azure)
    async with SdkChat(sdk) as one, LeanChat(lean) as other:
        await one.create(MESSAGES, STATICS)
        await other.create(MESSAGES, STATICS)
    sent, seen = via_sdk.requests[0], via_lean.requests[0]
    assert seen.url.path.endswith("/openai/deployments/dep/chat/completions")
    assert seen.url.params["api-version"] == sent.url.params["api-version"] == "2024-10-21"
    assert headers(seen) == headers(sent)
    assert headers(seen)["api-key"] == "az-key"
    assert json.loads(seen.content) == json.loads(sent.content)


async def test_a_reply_parses_the_same_both_ways(server: ScriptedServer) -> None:
    _, _, (sdk, sdk_headers), (lean, lean_headers) = await both(
        server, httpx2.Response(200, json=REPLY, headers={"x-ratelimit-remaining-tokens": "9"})
    )
    assert sdk == lean
    assert lean.choices[0].message.content == '{"a": 1}'
    assert lean.usage is not None and lean.usage.prompt_tokens_details is not None
    assert lean.usage.prompt_tokens_details.cached_tokens == 4
    assert sdk_headers["x-ratelimit-remaining-tokens"] == "9"
    assert lean_headers["x-ratelimit-remaining-tokens"] == "9"


ERRORS = {
    400: {
        "message": "bad param",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "x",
    },
    401: {"message": "bad key", "type": "auth", "param": None, "code": "invalid_api_key"},
    404: {"message": "no such model", "type": "invalid_request_error", "param": None, "code": None},
    429: {"message": "slow down", "type": "rate", "param": None, "code": "rate_limit_exceeded"},
    503: {"message": "overloaded", "type": "server", "param": None, "code": None},
}


@pytest.mark.parametrize("status", list(ERRORS))
async def test_a_status_error_is_the_sdks(server: ScriptedServer, status: int) -> None:
    answer = httpx2.Response(
        status, json={"error": ERRORS[status]}, headers={"retry-after-ms": "250"}
    )
    _, _, sdk, lean = await both(server, answer)
    assert type(lean) is type(sdk)
    assert isinstance(lean, openai.APIStatusError) and isinstance(sdk, openai.APIStatusError)
    assert (lean.status_code, lean.message, lean.body) == (sdk.status_code, sdk.message, sdk.body)
    assert (lean.code, lean.param) == (sdk.code, sdk.param)
    assert lean.response.headers["retry-after-ms"] == "250"


async def test_an_error_page_that_is_not_json(server: ScriptedServer) -> None:
    _, _, sdk, lean = await both(server, httpx2.Response(502, text="<html>bad gateway</html>"))
    assert type(lean) is type(sdk) is openai.InternalServerError
    assert lean.body == sdk.body == "<html>bad gateway</html>"


async def test_a_200_that_is_not_a_chat_completion_is_a_value_error(
    server: ScriptedServer,
) -> None:
    for body in (b"<html>gateway</html>", b'{"choices": [', b'{"choices": [{"index": 0}]}'):
        lean = LeanChat(
            AsyncOpenAI(
                api_key="k",
                base_url=server.base_url(Seen(httpx2.Response(200, content=body))),
                max_retries=0,
            )
        )
        async with lean:
            with pytest.raises(ValueError, match="not a chat completion"):
                await lean.create(MESSAGES, STATICS)


async def test_connection_failures_are_the_sdks_errors(server: ScriptedServer) -> None:
    def drop(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.RemoteProtocolError("dropped", request=request)

    def hang(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("silence", request=request)

    for handler, error in ((drop, openai.APIConnectionError), (hang, openai.APITimeoutError)):
        client = AsyncOpenAI(
            api_key="k", base_url=server.base_url(handler), max_retries=0, timeout=0.5
        )
        async with LeanChat(client) as lean:
            with pytest.raises(error) as raised:
                await lean.create(MESSAGES, STATICS)
        assert type(raised.value) is error  # a timeout is not reported as a mere drop
    refused = AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0)
    async with LeanChat(refused) as lean:
        with pytest.raises(openai.APIConnectionError):
            await lean.create(MESSAGES, STATICS)


async def test_the_session_opens_once_for_concurrent_first_requests(
    server: ScriptedServer,
) -> None:
    seen = Seen(httpx2.Response(200, json=REPLY))
    lean = LeanChat(AsyncOpenAI(api_key="k", base_url=server.base_url(seen), max_retries=0))
    await asyncio.gather(*(lean.create(MESSAGES, STATICS) for _ in range(8)))
    session = lean._session
    assert session is not None and len(seen.requests) == 8
    await lean.create(MESSAGES, STATICS)
    assert lean._session is session
    await lean.aclose()
    assert session.closed


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    messages=st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": st.text()}),
        max_size=4,
    ),
    statics=st.dictionaries(st.text().filter(lambda k: k != "messages"), JSON, max_size=5),
)
def test_a_body_is_the_messages_and_the_statics(
    messages: list[dict[str, str]], statics: dict[str, Any]
) -> None:
    body = orjson.loads(Statics.of(statics).body(messages))
    assert body == {"messages": messages, **statics}


def test_completion_keeps_only_what_is_read() -> None:
    parsed = Completion.parse(orjson.dumps(REPLY))
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.completion_tokens == 3
    assert Completion.parse(b'{"id": "x"}').choices == []  # no choices: retried by classify
    with pytest.raises(ValueError, match="not a chat completion"):
        Completion.parse(b'{"choices": [{"message": {"content": 5}}]}')


def test_the_event_loop_setting() -> None:
    assert loop_factory("asyncio") is None
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_uvloop_asked_for_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it now fails
    assert loop_factory("auto") is None
    with pytest.raises(ConfigError, match="modstream\\[fast\\]"):
        loop_factory("uvloop")


async def test_the_lean_sender_honours_the_proxy_variables(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP(S)_PROXY and NO_PROXY, as the SDK's httpx client reads them (once, at opening)."""
    seen = Seen(httpx2.Response(200, json=REPLY))
    path = server.base_url(seen).split(f":{server.port}", 1)[1]  # "/<n>/v1"
    nowhere = f"http://127.0.0.1:1{path}"  # port 1: nothing listens there
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    proxied = AsyncOpenAI(api_key="sk-test", max_retries=0, base_url=nowhere)
    async with LeanChat(proxied) as chat:
        reply, _ = await chat.create(MESSAGES, STATICS)
    assert reply.usage is not None and reply.usage.prompt_tokens == 12
    assert seen.requests[0].url.port == 1  # the proxy was asked for the original URL

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = AsyncOpenAI(api_key="sk-test", max_retries=0, base_url=nowhere)
    async with LeanChat(direct) as chat:
        with pytest.raises(openai.APIConnectionError):
            await chat.create(MESSAGES, STATICS)
    assert len(seen.requests) == 1
