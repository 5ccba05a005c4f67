"""Today's models and every response format, end to end (real broker, fake over real HTTP).

- ``MODSTREAM_MODEL=gpt-5-mini`` against the fake with its reasoning rules on (it answers
  ``max_tokens`` and a non-default ``temperature`` with OpenAI's 400s, spends reasoning tokens
  inside ``max_completion_tokens``): every message gets a verdict, no dead letter, and every
  usage event carries reasoning tokens, the effort asked for and a cost;
- each ``MODSTREAM_RESPONSE_FORMAT`` mode gives valid verdicts, sending what the mode says;
- ``auto`` against a server that rejects ``json_schema``: one step down to ``json_object``,
  and still every message gets its verdict (the rejected first calls are usage, not dead
  letters).

Each runs on both chat senders (``MODSTREAM_CHAT_CLIENT``): the lean default and the SDK's.
"""

from __future__ import annotations

from typing import Any

import pytest

from consumer.app import serve
from consumer.testing.fake_openai import FakeAdmin
from schemas import UsageOutcome
from tests.e2e.harness import Run, assert_nothing_lost, clean_values, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

COUNT = 60


@pytest.fixture(params=["lean", "sdk"])
def chat_client(request: pytest.FixtureRequest) -> str:
    """The chat sender of the test's consumer."""
    return str(request.param)


async def moderate(run: Run, chat_client: str, **overrides: Any) -> None:
    await run.create_topics()
    await run.produce(clean_values(COUNT))
    settings = run.settings(concurrency=8, max_in_flight=64, chat_client=chat_client, **overrides)
    await serve(settings, exit_when_idle=2)
    await assert_nothing_lost(run)


async def chat_bodies(url: str) -> list[dict[str, Any]]:
    async with FakeAdmin(url) as admin:
        logged = await admin.requests(limit=10_000)
    return [r["body"] for r in logged if r["path"].endswith("/chat/completions")]


async def test_gpt_5_mini_moderates_with_reasoning(kafka_bootstrap: str, chat_client: str) -> None:
    with fake_openai_server(latency_ms=2, seed=3, reasoning_rules=True) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await moderate(run, chat_client, model="gpt-5-mini")
        summary = await run.outputs()
        bodies = await chat_bodies(url)

    assert summary.dead_letters == []
    assert len(summary.verdicts) == COUNT
    assert {v.model for v in summary.verdicts} == {"gpt-5-mini"}
    assert len(summary.usage) == COUNT
    for usage in summary.usage:
        assert usage.outcome == UsageOutcome.OK
        assert usage.reasoning_tokens > 0
        assert usage.completion_tokens > usage.reasoning_tokens
        assert usage.reasoning_effort == "minimal"
        assert usage.cost_usd is not None and usage.cost_usd > 0
    for body in bodies:
        assert "max_tokens" not in body and "temperature" not in body
        assert body["max_completion_tokens"] == 400 + 1024
        assert body["reasoning_effort"] == "minimal"


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "text"])
async def test_each_response_format_gives_valid_verdicts(
    kafka_bootstrap: str, mode: str, chat_client: str
) -> None:
    with fake_openai_server(latency_ms=2, seed=4) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await moderate(run, chat_client, response_format=mode)
        summary = await run.outputs()
        bodies = await chat_bodies(url)

    assert summary.dead_letters == []
    assert len(summary.verdicts) == COUNT
    assert all(u.outcome == UsageOutcome.OK for u in summary.usage)
    expected = {"json_schema": "json_schema", "json_object": "json_object", "text": None}[mode]
    sent = {(b.get("response_format") or {}).get("type") for b in bodies}
    assert sent == {expected}
    if mode != "json_schema":  # the schema is in the system prompt instead
        assert all("JSON Schema:" in b["messages"][0]["content"] for b in bodies)


async def test_auto_steps_down_from_a_server_that_rejects_json_schema(
    kafka_bootstrap: str, chat_client: str
) -> None:
    with fake_openai_server(latency_ms=2, seed=5, reject_json_schema=True) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await moderate(run, chat_client, response_format="auto")
        summary = await run.outputs()
        bodies = await chat_bodies(url)

    assert summary.dead_letters == []
    assert len(summary.verdicts) == COUNT
    rejected = [u for u in summary.usage if u.outcome == UsageOutcome.REJECTED]
    # only the calls already on their way when the first rejection came back (concurrency 8)
    assert 1 <= sum(u.calls for u in rejected) <= 8
    types = [(b.get("response_format") or {}).get("type") for b in bodies]
    first_object = types.index("json_object")
    assert set(types[:first_object]) == {"json_schema"}
    assert set(types[first_object:]) <= {"json_object", "json_schema"}
    assert types.count("json_object") >= COUNT
