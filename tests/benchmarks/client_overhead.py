"""CPU per model call in the client, variant by variant: evidence for the overhead fixes.

    python -m tests.benchmarks.client_overhead [--calls 3000] [--concurrency 32]

Not part of ``make bench``: it measures the one cost that dominates modstream's profile at an
instant model (the openai SDK's request path) in isolation. One process, one fake server at
latency 0, the same request modstream sends (its prompt, its strict ``json_schema`` reply
format); each variant makes ``--calls`` calls with ``--concurrency`` in flight, and the
figure is this process's user + system CPU per call (``getrusage``), after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

from consumer.model.chat_client import ChatSender, LeanChat, SdkChat
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.model.request_params import choose, server_kind
from consumer.model.tokens import count_tokens
from consumer.pipeline.admit import Admitted
from schemas import ModerationRequest, Source
from tests.benchmarks.infra import fake_server

Call = Callable[[], Awaitable[Any]]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU microseconds per call, calls per second of wall time)."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one() for _ in range(min(200, calls))))  # warm-up, pools filled
    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (_cpu() - cpu) / calls * 1e6, calls / (time.perf_counter() - wall)


async def run(base_url: str, calls: int, concurrency: int) -> list[tuple[str, float, float]]:
    builder = PromptBuilder(load_policy(None), load_prompt(None))
    messages: Any = builder.messages("Does anyone know a good recipe for banana bread?", None)
    response_format: Any = builder.policy.response_format
    params: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": messages,
        "response_format": response_format,
        "max_tokens": 400,
        "temperature": 0.0,
    }
    timeout = httpx2.Timeout(30.0, connect=5.0)
    key = "sk-bench-not-a-real-key"
    results = []

    httpx_client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)
    aio_client = AsyncOpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=timeout,
        http_client=DefaultAioHttpClient(timeout=timeout),
    )
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
    body = json.dumps(params).encode()

    def sdk_create(client: AsyncOpenAI) -> Call:
        async def call() -> Any:  # what modstream's classify does today
            raw = await client.chat.completions.with_raw_response.create(**params)
            return raw.parse()

        return call

    def sdk_post(client: AsyncOpenAI) -> Call:
        async def call() -> Any:  # the same request, without the SDK's params transform
            return await client.post("/chat/completions", body=params, cast_to=ChatCompletion)

        return call

    async def raw_aiohttp() -> Any:  # the floor: one POST, json.loads of the reply
        async with session.post(base_url + "/chat/completions", data=body) as response:
            return json.loads(await response.read())

    def classify(sender: ChatSender) -> Call:
        # The whole classify stage (request, reply validation, usage, verdict), one message.
        classifier = Classifier(
            aio_client,
            model="gpt-4o-mini",
            params=choose(
                "gpt-4o-mini", server_kind(aio_client.base_url), max_tokens=400, temperature=0.0
            ),
            builder=builder,
            limiter=Limiter(concurrency),
            prices=PriceTable(),
            sender=sender,
        )
        text = "Does anyone know a good recipe for banana bread?"
        request = ModerationRequest(id="c-1", text=text)
        admitted = Admitted(request, text, None, False, count_tokens(text, "gpt-4o-mini"))
        offsets = iter(range(10**9))

        async def call() -> Any:
            return await classifier.classify(
                admitted, Source(topic="t", partition=0, offset=next(offsets))
            )

        return call

    lean = LeanChat(aio_client)
    variants: list[tuple[str, Call]] = [
        ("modstream classify, MODSTREAM_CHAT_CLIENT=sdk", classify(SdkChat(aio_client))),
        ("modstream classify, MODSTREAM_CHAT_CLIENT=lean", classify(lean)),
        ("SDK create + parse, httpx2 transport (modstream today)", sdk_create(httpx_client)),
        ("SDK create + parse, aiohttp transport (DefaultAioHttpClient)", sdk_create(aio_client)),
        ("SDK post of pre-built params (no transform), httpx2", sdk_post(httpx_client)),
        ("SDK post of pre-built params (no transform), aiohttp", sdk_post(aio_client)),
        ("raw aiohttp POST + json.loads (floor)", raw_aiohttp),
    ]
    async with httpx_client, aio_client, session, lean:
        for name, call in variants:
            cpu_us, rate = await _measure(call, calls, concurrency)
            print(f"{cpu_us:8.0f} us CPU/call  {rate:7.0f} calls/s  {name}", flush=True)
            results.append((name, cpu_us, rate))
    return results


def price_cost() -> None:
    """genai-prices per call, with token counts that vary as real usage does (genai-prices
    caches by arguments, so a repeated identical call would look ten times cheaper)."""
    table = PriceTable()
    rng = random.Random(1)
    counts = [(rng.randint(500, 1500), rng.randint(50, 300)) for _ in range(2000)]
    it = iter(counts)
    per_call = timeit.timeit(lambda: table.cost("gpt-4o-mini", *next(it), 0), number=2000) / 2000
    print(f"{per_call * 1e6:8.0f} us CPU/call  PriceTable.cost (genai_prices.calc_price each time)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.client_overhead")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    with fake_server() as fake:
        asyncio.run(run(fake.url, args.calls, args.concurrency))
    price_cost()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
