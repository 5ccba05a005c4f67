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
from consumer.tools.report import Summary
from schemas import UsageOutcome
from tests.e2e.harness import assert_nothing_lost, clean_values, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

COUNT = 60


@pytest.fixture(params=["lean", "sdk"])
def chat_client(request: pytest.FixtureRequest) -> str:
    """The chat sender of the test's consumer."""
    return str(request.param)


async def moderated(
    kafka_bootstrap: str, chat_client: str, fake: dict[str, Any], **overrides: Any
) -> tuple[Summary, list[dict[str, Any]]]:
    """COUNT messages through modstream (``overrides`` on its settings) against a fake with
    ``fake``'s knobs: nothing lost, no dead letter, one verdict each. Returns what the run
    wrote and the chat request bodies the fake received."""
    with fake_openai_server(latency_ms=2, **fake) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(clean_values(COUNT))
        settings = run.settings(
            concurrency=8, max_in_flight=64, chat_client=chat_client, **overrides
        )
        await serve(settings, exit_when_idle=2)
        summary = await assert_nothing_lost(run)
        async with FakeAdmin(url) as admin:
            logged = await admin.requests(limit=10_000)
    assert summary.dead_letters == []
    assert len(summary.verdicts) == COUNT
    return summary, [r["body"] for r in logged if r["path"].endswith("/chat/completions")]


async def test_gpt_5_mini_moderates_with_reasoning(kafka_bootstrap: str, chat_client: str) -> None:
    summary, bodies = await moderated(
        kafka_bootstrap, chat_client, {"seed": 3, "reasoning_rules": True}, model="gpt-5-mini"
    )
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
    summary, bodies = await moderated(
        kafka_bootstrap, chat_client, {"seed": 4}, response_format=mode
    )
    assert all(u.outcome == UsageOutcome.OK for u in summary.usage)
    expected = {"json_schema": "json_schema", "json_object": "json_object", "text": None}[mode]
    sent = {(b.get("response_format") or {}).get("type") for b in bodies}
    assert sent == {expected}
    if mode != "json_schema":  # the schema is in the system prompt instead
        assert all("JSON Schema:" in b["messages"][0]["content"] for b in bodies)


async def test_auto_steps_down_from_a_server_that_rejects_json_schema(
    kafka_bootstrap: str, chat_client: str
) -> None:
    summary, bodies = await moderated(
        kafka_bootstrap,
        chat_client,
        {"seed": 5, "reject_json_schema": True},
        response_format="auto",
    )
    rejected = [u for u in summary.usage if u.outcome == UsageOutcome.REJECTED]
    # only the calls already on their way when the first rejection came back (concurrency 8)
    assert 1 <= sum(u.calls for u in rejected) <= 8
    types = [(b.get("response_format") or {}).get("type") for b in bodies]
    first_object = types.index("json_object")
    assert set(types[:first_object]) == {"json_schema"}
    assert set(types[first_object:]) <= {"json_object", "json_schema"}
    assert types.count("json_object") >= COUNT
