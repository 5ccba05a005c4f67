"""The fake's benchmark mode: replies, usage estimates, knobs, and its lean HTTP server.

The consumer's real Classifier (both chat senders, every reply format, a reasoning model, the
batch form) talks to an in-process benchmark-mode fake over real HTTP; the lean server's
protocol edges are driven over real sockets; property tests check that any content gets a
reply that fits the requested schema and that any split of a request stream gets the same
answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import orjson
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from consumer.errors import ConfigError
from consumer.model.batch import Batcher
from consumer.model.chat_client import LeanChat
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.model.reply_format import ReplyFormat, ResponseFormats
from consumer.model.request_params import choose, server_kind
from consumer.model.tokens import count_tokens
from consumer.pipeline.admit import Admitted
from consumer.testing.fake_openai import FakeAdmin, FakeConfig, running_fake
from consumer.testing.fake_openai.bench import BenchApi
from consumer.testing.fake_openai.config import BENCHMARK_REFUSED
from consumer.testing.fake_openai.lean_http import Connection, route
from consumer.testing.fake_openai.lean_wire import MAX_BODY
from schemas import Action, ModerationRequest, Source, UsageOutcome
from tests.fake_server import _ready, free_port, served

pytestmark = pytest.mark.timeout(120)

POLICY = load_policy()
BUILDER = PromptBuilder(POLICY, load_prompt())
SCHEMA = POLICY.response_format["json_schema"]["schema"]
HARMFUL = "I will stab you, you idiot"
BENIGN = "have a nice day"


@pytest_asyncio.fixture(scope="module")
async def bench_url() -> AsyncIterator[str]:
    async with running_fake(FakeConfig(benchmark=True, seed=3)) as url:
        yield url


@pytest_asyncio.fixture(scope="module")
async def normal_url() -> AsyncIterator[str]:
    async with running_fake(FakeConfig(seed=3)) as url:
        yield url


def admitted(text: str, i: int = 0) -> Admitted:
    return Admitted(
        request=ModerationRequest(id=f"c{i}", text=text),
        text=text,
        context=None,
        truncated=False,
        content_tokens=count_tokens(text, "gpt-4o-mini"),
    )


def source(i: int) -> Source:
    return Source(topic="in", partition=0, offset=i, key=f"k{i}")


async def classifier(
    url: str, model: str, mode: str, sender: str
) -> tuple[Classifier, AsyncOpenAI, LeanChat | None]:
    client = AsyncOpenAI(base_url=url, api_key="k", max_retries=0, timeout=10)
    lean = LeanChat(client) if sender == "lean" else None
    made = Classifier(
        client,
        model=model,
        params=choose(model, server_kind(client.base_url), max_tokens=400, temperature=0.0),
        builder=BUILDER,
        limiter=Limiter(8),
        prices=PriceTable(),
        max_backoff_s=0.01,
        formats=ResponseFormats(mode),
        sender=lean,
    )
    return made, client, lean


# ---- the consumer against benchmark mode ---------------------------------------------------


@pytest.mark.parametrize("sender", ["sdk", "lean"])
@pytest.mark.parametrize("mode", ["json_schema", "json_object", "text"])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5-mini"])
async def test_the_classifier_gets_a_first_time_verdict_in_every_reply_format(
    bench_url: str, sender: str, mode: str, model: str
) -> None:
    made, client, lean = await classifier(bench_url, model, mode, sender)
    try:
        harmful = await made.classify(admitted(HARMFUL), source(0))
        benign = await made.classify(admitted(BENIGN, 1), source(1))
    finally:
        if lean is not None:
            await lean.aclose()
        await client.close()
    for result in (harmful, benign):
        assert result.failure is None and result.verdict is not None
        assert result.attempts == 1  # no repair: the reply fitted the schema at once
        assert [u.outcome for u in result.usage] == [UsageOutcome.OK]
        usage = result.usage[0]
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert harmful.verdict is not None and benign.verdict is not None
    assert harmful.verdict.categories["violence"].score >= 0.9
    assert harmful.verdict.action != Action.ALLOW
    assert benign.verdict.action == Action.ALLOW
    if model == "gpt-5-mini":  # a reasoning model spends (and reports) reasoning tokens
        assert harmful.usage[0].reasoning_tokens > 0


@pytest.mark.parametrize("mode", ["json_schema", "json_object"])
async def test_a_batch_gets_one_verdict_per_message(bench_url: str, mode: str) -> None:
    made, client, _ = await classifier(bench_url, "gpt-4o-mini", mode, "sdk")
    batcher = Batcher(made, size=3, max_tokens=200, linger_s=5.0)
    texts = [BENIGN, HARMFUL, "go murder them"]
    try:
        results = await asyncio.gather(
            *(batcher.classify(admitted(t, i), source(i)) for i, t in enumerate(texts))
        )
    finally:
        await client.close()
    verdicts = [r.verdict for r in results]
    assert all(v is not None for v in verdicts)
    assert [v.action == Action.ALLOW for v in verdicts if v is not None] == [True, False, False]
    assert all(u.batch_size == 3 and u.outcome == UsageOutcome.OK for r in results for u in r.usage)


# ---- replies and usage, request by request -------------------------------------------------


def chat_body(content: str, *, mode: str = "json_schema", model: str = "gpt-4o-mini") -> bytes:
    messages = BUILDER.messages(content, None)
    shaped, response_format = ReplyFormat.of(POLICY.response_format).shaped(
        messages,
        {"json_schema": _mode("json_schema"), "json_object": _mode("json_object")}.get(
            mode, _mode("text")
        ),
    )
    body: dict[str, Any] = {"model": model, "messages": shaped, "max_completion_tokens": 400}
    if response_format is not None:
        body["response_format"] = response_format
    return orjson.dumps(body)


def _mode(name: str) -> Any:
    return ResponseFormats(name).mode


API = BenchApi(FakeConfig(benchmark=True))
HANDLE = route(API)


def ask(body: bytes) -> tuple[int, dict[str, Any]]:
    answer = HANDLE("POST", "/v1/chat/completions", "", {}, body)
    return answer.status, orjson.loads(answer.body)


@settings(max_examples=150, deadline=None)
@given(
    content=st.text(max_size=300),
    mode=st.sampled_from(["json_schema", "json_object", "text"]),
)
def test_any_content_gets_a_completion_that_fits_the_schema(content: str, mode: str) -> None:
    status, data = ask(chat_body(content, mode=mode))
    assert status == 200
    choice = data["choices"][0]
    assert data["object"] == "chat.completion" and choice["finish_reason"] == "stop"
    reply = json.loads(choice["message"]["content"])
    jsonschema.validate(reply, SCHEMA)
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "text"])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5-mini"])
async def test_usage_estimates_are_close_to_normal_modes_counts(
    bench_url: str, normal_url: str, mode: str, model: str
) -> None:
    body = orjson.loads(
        chat_body(HARMFUL + " " + "ordinary words here. " * 20, mode=mode, model=model)
    )
    found = []
    for url in (normal_url, bench_url):
        client = AsyncOpenAI(base_url=url, api_key="k", max_retries=0, timeout=10)
        try:
            found.append((await client.chat.completions.create(**body)).usage)
        finally:
            await client.close()
    normal, bench = found
    assert normal is not None and bench is not None
    assert bench.prompt_tokens == pytest.approx(normal.prompt_tokens, rel=0.05)
    assert bench.completion_tokens == pytest.approx(normal.completion_tokens, rel=0.1, abs=3)


def test_a_reply_over_the_budget_is_cut_with_length() -> None:
    body = orjson.loads(chat_body(HARMFUL))
    body["max_completion_tokens"] = 5
    status, data = ask(orjson.dumps(body))
    assert status == 200
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"model": "no-such-model"}, 404, "model_not_found"),
        ({"stream": True}, 400, None),
        ({"model": "gpt-5-mini", "max_tokens": 10}, 400, "unsupported_parameter"),
        ({"response_format": {"type": "xml"}}, 400, "invalid_schema"),
        ({"messages": []}, 400, None),
    ],
)
def test_the_shapes_errors_are_normal_modes(
    change: dict[str, Any], status: int, code: str | None
) -> None:
    body = orjson.loads(chat_body(BENIGN)) | change
    for _ in range(2):  # the second answer comes from the cached plan
        got, data = ask(orjson.dumps(body))
        assert got == status
        assert data["error"]["code"] == code


def test_cached_tokens_from_the_second_sight_of_a_long_system_prompt() -> None:
    api = BenchApi(FakeConfig(benchmark=True, cache_min_tokens=0))
    handle = route(api)
    body = chat_body(BENIGN)
    first, second = (
        orjson.loads(handle("POST", "/v1/chat/completions", "", {}, body).body) for _ in range(2)
    )
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % 128 == 0


# ---- knobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("knob", BENCHMARK_REFUSED)
def test_benchmark_mode_refuses_fault_knobs_naming_them(
    monkeypatch: pytest.MonkeyPatch, knob: str
) -> None:
    monkeypatch.setenv("MODSTREAM_FAKE_BENCHMARK", "1")
    monkeypatch.setenv("MODSTREAM_FAKE_" + knob.upper(), "0.1" if knob.startswith("p_") else "X")
    with pytest.raises(ConfigError, match="MODSTREAM_FAKE_" + knob.upper()):
        FakeConfig.from_env()


def test_benchmark_mode_takes_latency_and_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "BENCHMARK": "1",
        "LATENCY_MS": "200",
        "LATENCY_DIST": "exponential",
        "TPM": "100000",
        "API_KEY": "k",
    }.items():
        monkeypatch.setenv("MODSTREAM_FAKE_" + name, value)
    config = FakeConfig.from_env()
    assert config.benchmark and config.latency_ms == 200 and config.tpm == 100000


def test_the_cli_flag_turns_benchmark_mode_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODSTREAM_FAKE_BENCHMARK", raising=False)
    assert FakeConfig.from_env(benchmark=True).benchmark
    monkeypatch.setenv("MODSTREAM_FAKE_P_500", "0.5")
    with pytest.raises(ConfigError, match="MODSTREAM_FAKE_P_500"):
        FakeConfig.from_env(benchmark=True)


def test_patch_cannot_switch_modes_nor_add_faults_in_benchmark_mode() -> None:
    config = FakeConfig(benchmark=True)
    with pytest.raises(ValueError, match="benchmark"):
        FakeConfig().patched({"benchmark": True})
    with pytest.raises(ValueError, match="p_429"):
        config.patched({"p_429": 0.5})
    assert config.patched({"latency_ms": 5, "outage": True}).outage


async def test_admin_routes_in_benchmark_mode(bench_url: str) -> None:
    async with FakeAdmin(bench_url) as admin:
        await admin.reset()
        client = AsyncOpenAI(base_url=bench_url, api_key="k", max_retries=0, timeout=10)
        try:
            await client.chat.completions.create(**orjson.loads(chat_body(BENIGN)))
            await admin.patch(outage=True)
            with pytest.raises(Exception, match="overloaded"):
                await client.chat.completions.create(**orjson.loads(chat_body(BENIGN)))
        finally:
            await admin.patch(outage=False)
            await client.close()
        stats = await admin.stats()
        assert stats["by_path"] == {"/v1/chat/completions": 2}
        assert stats["by_outcome"] == {"ok": 1, "503": 1}
        assert stats["tokens"]["prompt"] > 0
        with pytest.raises(ValueError, match="no request log"):
            await admin.requests()


async def test_latency_is_honoured() -> None:
    async with running_fake(FakeConfig(benchmark=True, latency_ms=150)) as url:
        client = AsyncOpenAI(base_url=url, api_key="k", max_retries=0, timeout=10)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(
                *(
                    client.chat.completions.create(**orjson.loads(chat_body(BENIGN)))
                    for _ in range(4)
                )
            )
            elapsed = loop.time() - started
        finally:
            await client.close()
    assert 0.15 <= elapsed < 1.5  # concurrent waits, not one after the other


async def test_rate_limits_answer_429_with_headers() -> None:
    async with running_fake(FakeConfig(benchmark=True, rpm=2)) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        body = chat_body(BENIGN)
        request = post("/v1/chat/completions", body)
        replies = await exchange(port, request * 3, expect=3)
    statuses = [status for status, _, _ in replies]
    assert statuses == [200, 200, 429]
    assert replies[2][1][b"x-ratelimit-limit-requests"] == b"2"
    assert b"retry-after" in replies[2][1]


# ---- the lean server over real sockets ------------------------------------------------------


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1".encode(), b"Host: x", b"Content-Length: %d" % len(body)]
    return b"\r\n".join([*head, *extra, b"", b""]) + body


def get(path: str, *extra: bytes) -> bytes:
    return b"\r\n".join([f"GET {path} HTTP/1.1".encode(), b"Host: x", *extra, b"", b""])


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[bytes, bytes], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def exchange(
    port: int, data: bytes, *, chunks: int = 1, expect: int | None = None
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Write ``data`` (in ``chunks`` pieces, draining between), read answers until EOF or
    ``expect`` of them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = max(1, -(-len(data) // chunks))
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
        await writer.drain()
        if chunks > 1:
            await asyncio.sleep(0.001)
    replies: list[tuple[int, dict[bytes, bytes], bytes]] = []
    while expect is None or len(replies) < expect:
        reply = await asyncio.wait_for(read_response(reader), 5)
        if reply is None:
            break
        replies.append(reply)
        if reply[1].get(b"connection") == b"close":
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after it
            break
    writer.close()
    return replies


@pytest_asyncio.fixture(scope="module")
async def port(bench_url: str) -> int:
    return int(bench_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    bodies = [chat_body(text) for text in (BENIGN, HARMFUL, "hello")]
    stream = b"".join(post("/v1/chat/completions", b) for b in bodies) + get("/_fake/health")
    replies = await exchange(port, stream, expect=4)
    assert [s for s, _, _ in replies] == [200, 200, 200, 200]
    contents = [orjson.loads(b)["choices"][0]["message"]["content"] for _, _, b in replies[:3]]
    assert "stab" not in contents[0] and "stab" in contents[1]
    assert orjson.loads(replies[3][2]) == {"status": "ok"}


async def test_a_request_split_over_many_reads(port: int) -> None:
    replies = await exchange(
        port, post("/v1/chat/completions", chat_body(HARMFUL)), chunks=40, expect=1
    )
    assert replies[0][0] == 200


async def test_keep_alive_serves_requests_one_after_another(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):
        writer.write(post("/v1/chat/completions", chat_body(BENIGN)))
        reply = await asyncio.wait_for(read_response(reader), 5)
        assert reply is not None and reply[0] == 200 and b"connection" not in reply[1]
    writer.close()


async def test_connection_close_is_honoured(port: int) -> None:
    replies = await exchange(
        port, get("/_fake/health", b"Connection: close") + get("/_fake/health")
    )
    assert len(replies) == 1 and replies[0][1][b"connection"] == b"close"


async def test_http_1_0_closes_unless_it_asks_for_keep_alive(port: int) -> None:
    request = b"GET /_fake/health HTTP/1.0\r\n\r\n"
    assert len(await exchange(port, request * 2)) == 1
    kept = b"GET /_fake/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    assert len(await exchange(port, kept * 2, expect=2)) == 2


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET /_fake/health HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            400,
        ),
        (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
        (b"GET /x HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
)
async def test_unreadable_requests_get_an_error_and_a_closed_connection(
    port: int, request_bytes: bytes, status: int
) -> None:
    replies = await exchange(port, get("/_fake/health") + request_bytes + get("/_fake/health"))
    assert [s for s, _, _ in replies] == [200, status]  # nothing after the refusal is read
    assert replies[1][1][b"connection"] == b"close"
    assert "error" in orjson.loads(replies[1][2])


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get("/nowhere"), 404),
        (get("/v1/unknown"), 404),
        (get("/v1/chat/completions"), 405),
        (post("/v1/chat/completions", b"not json"), 400),
        (post("/v1/chat/completions", b"[1, 2]"), 400),
        (get("/v1/models"), 200),
        (post("/v1/moderations", b'{"input": "I will kill you"}'), 200),
    ],
)
async def test_routes_and_bad_bodies_keep_the_connection(
    port: int, request_bytes: bytes, status: int
) -> None:
    replies = await exchange(port, request_bytes + get("/_fake/health"), expect=2)
    assert [s for s, _, _ in replies] == [status, 200]


async def test_expect_100_continue(port: int) -> None:
    body = chat_body(BENIGN)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = post("/v1/chat/completions", b"", b"Expect: 100-continue")
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    writer.write(head)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    reply = await asyncio.wait_for(read_response(reader), 5)
    assert reply is not None and reply[0] == 200
    writer.close()


async def test_pipelined_answers_keep_their_order_under_random_latency() -> None:
    config = FakeConfig(benchmark=True, latency_ms=30, latency_dist="exponential", seed=1)
    async with running_fake(config) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        texts = [f"message {i} {'idiot' if i % 2 else 'fine'}" for i in range(12)]
        stream = b"".join(post("/v1/chat/completions", chat_body(t)) for t in texts)
        replies = await exchange(port, stream, expect=12)
    contents = [orjson.loads(b)["choices"][0]["message"]["content"] for _, _, b in replies]
    assert [("idiot" in c) for c in contents] == [bool(i % 2) for i in range(12)]


# ---- any split of a request stream, without sockets -----------------------------------------


class Transport:
    """What a Connection writes, in memory."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def fed(stream: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    connection = Connection(route(BenchApi(FakeConfig(benchmark=True))), set())
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    edges = [0, *sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]
    for a, b in itertools.pairwise(edges):
        if a < b:
            connection.data_received(stream[a:b])
    return bytes(transport.written), transport.closed


STREAM = (
    post("/v1/chat/completions", chat_body(HARMFUL))
    + get("/_fake/health")
    + post("/v1/moderations", b'{"input": "hello"}')
    + get("/v1/models", b"Connection: close")
)


def without_ids(written: bytes) -> bytes:
    return re.sub(rb"(chatcmpl|req|modr)-[0-9a-f]+|\"created\":\d+", b"", written)


@pytest.mark.asyncio
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
async def test_any_split_of_a_stream_gets_the_same_answers(cuts: list[int]) -> None:
    whole, closed = fed(STREAM, [])
    split, split_closed = fed(STREAM, cuts)
    assert closed and split_closed
    assert without_ids(split) == without_ids(whole)
    assert whole.count(b"HTTP/1.1 200 OK") == 4


def test_the_cli_serves_benchmark_mode_and_rejects_faults_with_exit_2() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODSTREAM_FAKE_")}
    command = [sys.executable, "-m", "consumer", "fake-openai", "--benchmark", "--port", str(port)]
    origin = f"http://127.0.0.1:{port}"
    with (
        served("fake-openai", command, lambda: _ready(origin), env=env),
        urllib.request.urlopen(origin + "/_fake/config", timeout=5) as reply,
    ):
        assert json.load(reply)["benchmark"] is True
    refused = subprocess.run(
        command,
        env=env | {"MODSTREAM_FAKE_P_503": "0.2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "MODSTREAM_FAKE_P_503" in refused.stderr
