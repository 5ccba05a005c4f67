"""Micro-batching end to end: the real broker, the fake model over HTTP, modstream in-process.

The same short corpus runs without batching and with ``MODSTREAM_BATCH_SIZE=8``, against one
fake. Batched, every input still gets exactly one verdict, the verdicts are the ones the
single calls gave (the fake judges each ``<content index>`` block on its own, so a block mixed
up with its neighbour would show), there are fewer chat calls and fewer tokens, and the usage
events add up exactly to the tokens the fake served.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from consumer.app import serve
from consumer.testing.fake_openai.admin import FakeAdmin
from consumer.tools.report import Summary
from consumer.tools.sample import CLEAN, HARMFUL
from tests.e2e.harness import Run, assert_nothing_lost, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

MESSAGES = 400
CHAT = "/v1/chat/completions"


def short_corpus() -> list[bytes | None]:
    values: list[bytes | None] = []
    for i in range(MESSAGES):
        text = HARMFUL[i % len(HARMFUL)][1] if i % 4 == 0 else CLEAN[i % len(CLEAN)]
        values.append(json.dumps({"id": f"m{i}", "text": f"{text} (#{i})"}).encode())
    # One long message (over MODSTREAM_BATCH_MAX_TOKENS) and one with context: never batched.
    values.append(json.dumps({"id": "long", "text": "a calm sentence. " * 80}).encode())
    values.append(json.dumps({"id": "ctx", "text": "agreed", "context": "nice day"}).encode())
    return values


async def run_corpus(
    kafka_bootstrap: str, url: str, **settings: object
) -> tuple[Run, Summary, dict[str, object]]:
    async with FakeAdmin(url) as admin:
        await admin.reset()
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(short_corpus())
        await serve(run.settings(concurrency=8, **settings), exit_when_idle=2)
        stats = await admin.stats()
    await assert_nothing_lost(run)  # exactly one verdict per input, committed to the end
    return run, await run.outputs(), stats


def tokens(summary: Summary) -> tuple[int, int]:
    return (
        sum(u.prompt_tokens for u in summary.usage),
        sum(u.completion_tokens for u in summary.usage),
    )


async def test_batched_run_one_verdict_each_fewer_calls_same_verdicts(
    kafka_bootstrap: str,
) -> None:
    with fake_openai_server(latency_ms=20, seed=31) as url:
        _, single, single_stats = await run_corpus(kafka_bootstrap, url)
        _, batched, batched_stats = await run_corpus(
            kafka_bootstrap, url, batch_size=8, batch_max_tokens=100, batch_linger_ms=20
        )
    total = MESSAGES + 2
    assert len(single.verdicts) == len(batched.verdicts) == total
    assert len({v.content_id for v in batched.verdicts}) == total

    single_calls = single_stats["by_path"][CHAT]  # type: ignore[index]
    batched_calls = batched_stats["by_path"][CHAT]  # type: ignore[index]
    assert single_calls == total
    assert batched_calls < total / 2, f"{batched_calls} chat calls for {total} messages"

    # The same verdict for every message, batched or not.
    before = {v.content_id: {k: c.score for k, c in v.categories.items()} for v in single.verdicts}
    after = {v.content_id: {k: c.score for k, c in v.categories.items()} for v in batched.verdicts}
    assert after == before
    actions = {v.content_id: v.action for v in batched.verdicts}
    assert all(actions[f"m{i}"] != "allow" for i in range(0, MESSAGES, 4))  # the harmful ones

    # Usage: the events add up exactly to what the fake served; shares carry their batch.
    for summary, stats in ((single, single_stats), (batched, batched_stats)):
        served = stats["tokens"]
        assert tokens(summary) == (served["prompt"], served["completion"])  # type: ignore[index]
    batches: dict[str, list[int]] = defaultdict(list)
    for usage in batched.usage:
        if usage.batch_id is not None:
            batches[usage.batch_id].append(usage.batch_size)
    assert batches, "no batched call"
    for sizes in batches.values():
        assert len(sizes) == sizes[0] >= 2  # one event per message of the call
    unbatched = [u for u in batched.usage if u.batch_id is None]  # calls of their own
    assert {"long", "ctx"} <= {u.content_id for u in unbatched}
    assert len(batches) + len(unbatched) == batched_calls
    # Fewer tokens per verdict: the system prompt is paid once per batch.
    assert sum(tokens(batched)) < sum(tokens(single)) / 2
