"""Provider resilience end to end: the fake misbehaves over real HTTP, the broker is real.

- a storm of 429s, 500s, hangs, malformed and truncated replies and refusals loses nothing,
  dead-letters nothing for a transient reason, and every token is accounted for;
- a client-side TPM budget equal to the provider's keeps 429s under 1 %;
- a 60-second outage opens the circuit, pauses intake, and everything is processed after;
- a 401 stops the service with a clear message and commits nothing it did not finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from consumer.app import serve
from consumer.testing.fake_openai import FakeAdmin
from tests.e2e.harness import (
    assert_nothing_lost,
    clean_values,
    expected_offsets,
    new_run,
    outcomes_per_offset,
    until,
)
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(600)


async def test_chaos_storm_loses_nothing_and_accounts_every_token(kafka_bootstrap: str) -> None:
    knobs: dict[str, Any] = {
        "p_429": 0.30,
        "retry_after_mode": "mixed",
        "retry_after_s": 0.05,
        "p_500": 0.05,
        "p_hang": 0.03,
        "p_malformed": 0.05,
        "p_truncated": 0.03,
        "p_refusal": 0.02,
        "latency_ms": 5,
        "latency_dist": "exponential",
        "seed": 42,
    }
    with fake_openai_server(**knobs) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(2000))

        await serve(
            # The timeout must be far above the fake's normal answer time even on a loaded
            # machine: a reply the fake has counted but the client gave up on before reading it
            # is billed yet has no tokens in the usage (as with a real provider), and the token
            # equality below would fail for a reason that is not modstream's (seen at 1 s with
            # two cores busy with other test runs). Hangs (600 s) still end in this timeout.
            run.settings(concurrency=64, request_timeout_s=3.0, retry_max_backoff_s=1.0),
            exit_when_idle=3,
        )

        await assert_nothing_lost(run)
        summary = await run.outputs()
        # Only a reply still invalid after its repair (or cut twice) may be dead-lettered.
        assert {d.error_class for d in summary.dead_letters} <= {"InvalidReply"}
        # ~5 % malformed and ~3 % truncated replies, each with one second chance: about 1 %
        # of inputs fail twice; 3 % leaves room for chance without hiding a real regression.
        assert len(summary.dead_letters) <= 0.03 * 2000
        refusals = [v for v in summary.verdicts if v.refusal]
        assert refusals and all(v.action == "review" for v in refusals)
        outcomes = {u.outcome.value for u in summary.usage}
        assert {"ok", "rate_limited", "provider_unavailable", "invalid_reply", "length"} <= outcomes
        async with FakeAdmin(url) as admin:
            stats = await admin.stats()
        prompt = sum(u.prompt_tokens for u in summary.usage)
        completion = sum(u.completion_tokens for u in summary.usage)
        assert (prompt, completion) == (stats["tokens"]["prompt"], stats["tokens"]["completion"])
        # One retry layer: every request the fake saw is one call in the usage events (hangs
        # abandoned by the client are the fake's only requests without an answer, and they are
        # counted too; failures past the first few of a message are folded, ``calls`` each).
        assert sum(u.calls for u in summary.usage) == stats["by_path"]["/v1/chat/completions"]


async def test_tpm_budget_matching_the_provider_avoids_429s(kafka_bootstrap: str) -> None:
    tpm = 150_000
    with fake_openai_server(tpm=tpm, latency_ms=20, seed=7) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(clean_values(300))

        await serve(run.settings(tpm=tpm, max_tokens=200, concurrency=32), exit_when_idle=3)

        await assert_nothing_lost(run)
        summary = await run.outputs()
        calls = len(summary.usage)
        rate_limited = sum(1 for u in summary.usage if u.outcome == "rate_limited")
        assert rate_limited < 0.01 * calls, f"{rate_limited} of {calls} calls got a 429"


async def test_outage_opens_circuit_pauses_intake_and_recovers(kafka_bootstrap: str) -> None:
    concurrency, threshold, probes = 8, 10, 3
    with fake_openai_server(latency_ms=5, seed=9) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(clean_values(3000))
        consumer = run.start(
            "--exit-when-idle",
            "5",
            MODSTREAM_CONCURRENCY=str(concurrency),
            MODSTREAM_MAX_IN_FLIGHT="32",
            MODSTREAM_CIRCUIT_FAILURE_THRESHOLD=str(threshold),
            MODSTREAM_CIRCUIT_RESET_S="2",
            MODSTREAM_RETRY_MAX_BACKOFF_S="2",
            MODSTREAM_LOG_LEVEL="INFO",
            # The circuit's transitions are counted from its log lines: none may be collapsed
            # into a later line's repeated=N (they are warnings, and they repeat).
            MODSTREAM_LOG_REPEAT_INTERVAL_S="0",
        )

        def logged(event: str) -> int:
            return len(consumer.logs.events(event))

        paused = "intake paused: the model provider is down (circuit open)"
        resumed = "intake resumed: the model provider answers again"
        try:
            async with FakeAdmin(url) as admin:

                async def working() -> bool:
                    return int((await admin.stats())["by_outcome"].get("ok", 0)) >= 100

                await until(
                    "the first answered calls",
                    working,
                    unless=consumer.exited,
                    context=consumer.tail,
                )
                await admin.patch(outage=True)

                async def failed_503() -> int:
                    return int((await admin.stats())["by_outcome"].get("503", 0))

                def half_opened(times: int) -> Callable[[], Awaitable[bool]]:
                    async def check() -> bool:
                        return logged("circuit half_open") >= times

                    return check

                # The outage lasts until the circuit has opened, intake has paused, and three
                # probes have failed (each half-open, then open again for twice as long: 2, 4,
                # 8 s): the messages in flight waited through all of it.
                await until(
                    "the first probe (circuit half_open)",
                    half_opened(1),
                    unless=consumer.exited,
                    context=consumer.tail,
                )
                first_half_opens = logged("circuit half_open")  # before the count: none left out
                first_503s = await failed_503()
                await until(
                    f"{probes} failed probes",
                    half_opened(probes),
                    unless=consumer.exited,
                    context=consumer.tail,
                )
                probe_503s = await failed_503() - first_503s
                half_opens = logged("circuit half_open") - first_half_opens  # after the count
                await admin.patch(outage=False)
            code = await consumer.wait(400)
        finally:
            consumer.kill_if_running()
        assert code == 0, consumer.tail()

        events = [e["event"] for e in consumer.logs.records()]
        assert "circuit open" in events
        assert "circuit half_open" in events
        assert "circuit closed" in events
        assert paused in events and resumed in events
        assert events.index(paused) < events.index(resumed)
        # While open, only probes reach the provider: from the first half-open on, one call per
        # half-open (the first one's may come after the first count).
        assert probe_503s <= half_opens + 1, (probe_503s, half_opens)

        summary = await assert_nothing_lost(run)
        assert summary.dead_letters == []
        assert len(summary.verdicts) == 3000


async def test_401_stops_with_clear_message_and_commits_nothing_unfinished(
    kafka_bootstrap: str,
) -> None:
    with fake_openai_server(api_key="sk-the-right-key") as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        await run.produce(clean_values(50))
        process = run.spawn()
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)

        assert process.returncode == 3
        message = stderr.decode()
        assert "401" in message and "OPENAI_API_KEY" in message
        assert "sk-test-not-a-real-key" not in message  # the key itself is never printed
        summary = await run.outputs()
        assert summary.verdicts == [] and summary.dead_letters == []
        committed = await run.committed()
        assert all(offset <= 0 for offset in committed.values()), committed
        seen = outcomes_per_offset(summary)
        assert not (set(seen) & expected_offsets(await run.end_offsets()))
