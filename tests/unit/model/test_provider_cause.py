"""provider.cause_of: what a failed call ran into, from the real exceptions both senders raise.

Each failure is made for real (a closed port, an HTTP server that answers 503 or 401) through
the lean and the SDK sender, translated as ChatCall translates it, then described.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI, DefaultAioHttpClient

from consumer.errors import ModstreamError, ProviderUnavailable
from consumer.model.chat_client import Statics, sender
from consumer.model.provider import cause_of, translate
from tests.fake_server import free_port
from tests.unit.scripted_http import ScriptedServer

pytestmark = pytest.mark.timeout(60)

KEY = "sk-cause-canary-0123456789"
MESSAGES = [{"role": "user", "content": "hello"}]
STATICS = Statics.of({"model": "gpt-4o-mini", "max_completion_tokens": 20})


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


async def failure(kind: str, base_url: str) -> ModstreamError:
    """The error one chat call through sender ``kind`` to ``base_url`` ends in (translated)."""
    client = AsyncOpenAI(
        api_key=KEY, base_url=base_url, max_retries=0, http_client=DefaultAioHttpClient()
    )
    try:
        async with sender(kind, client) as chat:  # type: ignore[arg-type]
            await chat.create(MESSAGES, STATICS)
    except (openai.OpenAIError, ValueError) as exc:
        error = translate(exc, model="gpt-4o-mini", base_url=client.base_url)
        error.__cause__ = exc  # as ChatCall raises it: ``raise error from exc``
        return error
    finally:
        await client.close()
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("kind", ["lean", "sdk"])
async def test_a_closed_port_is_connection_refused_at_the_base_url(kind: str) -> None:
    port = free_port()
    error = await failure(kind, f"http://127.0.0.1:{port}/v1")
    assert isinstance(error, ProviderUnavailable)
    cause = cause_of(error, base_url=f"http://127.0.0.1:{port}/v1", secret=KEY)
    # The SDK under aiohttp calls it a connect timeout; the cause says what it was.
    assert cause.cause == "connection refused", cause
    assert cause.status is None
    assert f"127.0.0.1:{port}" in cause.detail
    assert cause.fields()["base_url"] == f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("kind", ["lean", "sdk"])
async def test_an_error_reply_is_its_status_and_the_providers_words(
    kind: str, scripted: ScriptedServer
) -> None:
    url = scripted.base_url(
        lambda request: httpx2.Response(
            503, json={"error": {"message": "upstream overloaded", "type": "server_error"}}
        )
    )
    error = await failure(kind, url)
    cause = cause_of(error, base_url=url, secret=KEY)
    assert (cause.cause, cause.status, cause.detail) == ("status 503", 503, "upstream overloaded")


async def test_the_key_never_reaches_the_cause_and_long_text_is_cut(
    scripted: ScriptedServer,
) -> None:
    # A provider that echoes the key it was sent (real ones mask it; do not count on that).
    echoed = f"bad gateway for key {KEY} " + "x" * 500
    url = scripted.base_url(
        lambda request: httpx2.Response(502, json={"error": {"message": echoed}})
    )
    cause = cause_of(await failure("lean", url), base_url=url, secret=KEY)
    assert KEY not in str(cause.fields())
    assert "***" in cause.detail and len(cause.detail) <= 200


def test_a_cause_without_a_transport_error_says_what_ours_did() -> None:
    cause = cause_of(ProviderUnavailable("the model returned no choices"), base_url=None)
    assert cause.fields() == {
        "cause": "provider_unavailable",
        "status": None,
        "detail": "the model returned no choices",
        "base_url": None,
    }


async def test_a_401_names_the_base_url_and_status_not_the_key(scripted: ScriptedServer) -> None:
    url = scripted.base_url(
        lambda request: httpx2.Response(
            401, json={"error": {"message": "Incorrect API key provided.", "code": "invalid_key"}}
        )
    )
    error = await failure("lean", url)
    assert error.message == (
        f"HTTP 401 from the model provider at {url}/: Incorrect API key provided. Check "
        "OPENAI_API_KEY (or MODSTREAM_OPENAI_API_KEY), OPENAI_BASE_URL and access to the model."
    )
    assert KEY not in error.message
