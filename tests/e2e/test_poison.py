"""Poison versus outage, and misconfiguration, end to end (real broker, fake over real HTTP).

- one message on which the provider always answers 500, among messages answered normally, is
  dead-lettered as ``PersistentFailure``; every other message gets its verdict and the group
  commits to the end;
- a full outage (every request 500) of comparable length dead-letters nothing, and every
  message gets its verdict once the provider is healthy again;
- a misconfiguration (an unknown model: 404; a parameter the model does not take: the same 400
  for several messages) stops ``modstream consume`` with exit code 3 and a message naming the
  problem, never the API key.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from consumer.app import serve
from consumer.testing.fake_openai import FakeAdmin
from tests.e2e.harness import assert_nothing_lost, clean_values, new_run, until
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

MARKER = "POISON-500"
POISON_AT = (0, 7)  # indexes in the produced values: partition 0 offset 0, partition 1 offset 1


def knobs() -> dict[str, object]:
    return {
        "concurrency": 4,
        "max_in_flight": 64,
        "retry_max_backoff_s": 0.2,
        "circuit_reset_s": 0.5,
        "poison_attempts": 8,
        "usage_failures_kept": 3,
    }


async def test_a_message_failing_alone_is_dead_lettered_as_poison(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=20, fail_when_contains=MARKER) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        values = clean_values(600)
        for i in POISON_AT:
            values[i] = json.dumps({"id": f"poison{i}", "text": f"{MARKER} content {i}"}).encode()
        await run.produce(values)

        await serve(run.settings(**knobs()), exit_when_idle=3)

        await assert_nothing_lost(run)
        summary = await run.outputs()
        poisoned = {(i % 6, i // 6) for i in POISON_AT}
        dead = {(d.source.partition, d.source.offset): d for d in summary.dead_letters}
        assert set(dead) == poisoned
        for d in dead.values():
            assert d.error_class == "PersistentFailure"
            assert "while other messages succeeded: treating this message as poison" in (
                d.error_message
            )
            assert "HTTP 500" in d.error_message
        assert len(summary.verdicts) == 600 - len(POISON_AT)
        for where in poisoned:
            usage = [u for u in summary.usage if (u.source.partition, u.source.offset) == where]
            assert sum(u.calls for u in usage) >= 8  # every call accounted for, ...
            # ... in at most kept + one folded failure event + one folded witness event.
            assert len(usage) <= 3 + 1 + 1


@pytest.mark.parametrize(
    ("threshold", "failures"),
    [
        # The circuit opens after 10 failures in a row, then probes every 0.5, 1, 2, 4 s: 10 + 4
        # failed probes is an outage of ~7 s, longer than the poison test takes to give up on
        # its message (8 counted attempts with <= 0.2 s backoff).
        (10, 10 + 4),
        # The circuit never opens: 8 messages in flight keep failing, about 24 times each, three
        # times what makes poison; only "no success anywhere since" tells it is an outage.
        (100_000, 8 * 8 * 3),
    ],
    ids=["circuit-opens", "circuit-stays-closed"],
)
async def test_an_outage_of_comparable_length_dead_letters_nothing(
    kafka_bootstrap: str, threshold: int, failures: int
) -> None:
    with fake_openai_server(latency_ms=20) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(600))
        options = knobs() | {"circuit_failure_threshold": threshold, "max_in_flight": 8}
        consumer = asyncio.create_task(serve(run.settings(**options), exit_when_idle=3))
        async with FakeAdmin(url) as admin:

            async def answered(outcome: str, at_least: int) -> bool:
                if consumer.done():
                    consumer.result()  # raise what ended it
                    raise AssertionError("the consumer stopped during the test")
                stats = await admin.stats()
                return bool(stats["by_outcome"].get(outcome, 0) >= at_least)

            await until("some verdicts before the outage", lambda: answered("ok", 50))
            await admin.patch(p_500=1.0)
            await until("the outage to last", lambda: answered("500", failures))
            await admin.patch(p_500=0.0)
        await asyncio.wait_for(consumer, 240)

        await assert_nothing_lost(run)
        summary = await run.outputs()
        assert summary.dead_letters == []
        assert len(summary.verdicts) == 600
        outage = [u for u in summary.usage if u.outcome == "provider_unavailable"]
        assert sum(u.calls for u in outage) >= failures


@pytest.mark.parametrize(
    ("knobs", "env", "expected"),
    [
        (
            {},
            {"MODSTREAM_MODEL": "no-such-model"},
            ["404", "no-such-model", "does not exist", "MODSTREAM_MODEL", "OPENAI_BASE_URL"],
        ),
        (
            {"unsupported_param": "max_tokens"},
            # gpt-4o-mini gets max_completion_tokens by default: ask for max_tokens by setting
            {"MODSTREAM_TOKEN_LIMIT_PARAM": "max_tokens"},
            [
                "the provider rejected 3 different messages with the same error",
                "'max_tokens' is not supported",
                "configuration problem",
            ],
        ),
    ],
    ids=["unknown-model-404", "unsupported-parameter-400"],
)
async def test_misconfiguration_stops_the_service_with_exit_3(
    kafka_bootstrap: str, knobs: dict[str, Any], env: dict[str, str], expected: list[str]
) -> None:
    with fake_openai_server(**knobs) as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        await run.produce(clean_values(50))
        process = run.spawn(MODSTREAM_CONCURRENCY="2", **env)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)

        message = stderr.decode()
        assert process.returncode == 3, message[-3000:]
        for text in expected:
            assert text in message, (text, message[-3000:])
        assert "sk-test-not-a-real-key" not in message  # the key itself is never printed
        summary = await run.outputs()
        assert summary.verdicts == []
        assert len(summary.dead_letters) <= 2  # at most misconfig_repeats - 1 went out
