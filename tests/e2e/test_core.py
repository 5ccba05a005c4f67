"""The core promises of DESIGN.md, end to end: the real broker, the fake model over HTTP, and
modstream itself (in-process, or as a real process where a test must kill it).

- nothing lost: every input offset gets exactly one verdict or dead letter, and the committed
  offsets reach the end;
- crashes (SIGKILL) repeat at most the in-flight window, never lose;
- a rebalance (a second consumer joins, then leaves) loses nothing;
- SIGTERM stops cleanly with exit 0, and a restart finishes the rest;
- bad input ends as a dead letter with a reason, never a crash;
- transient errors (429) are retried, never dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import Iterator

import pytest

from consumer.app import serve, summary
from consumer.tools.sample import corpus
from tests.e2e.harness import Run, expected_offsets, new_run, outcomes_per_offset, until
from tests.fake_server import fake_openai_server
from tests.unit.bad_inputs import MAX_CASE_BYTES, cases

pytestmark = pytest.mark.timeout(600)


def clean_values(n: int) -> list[bytes | None]:
    texts = (f"message number {i}: {'hello world ' * (i % 5)}" for i in range(n))
    return [json.dumps({"id": f"m{i}", "text": text}).encode() for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def fast_fake() -> Iterator[str]:
    """A fake with a little latency and no faults."""
    with fake_openai_server(latency_ms=2, latency_dist="exponential", seed=1) as url:
        yield url


async def run_until_idle(run: Run, idle: float = 2.0, **overrides: object) -> None:
    await serve(run.settings(**overrides), exit_when_idle=idle)


async def assert_nothing_lost(run: Run, *, max_duplicates: int = 0) -> None:
    ends = await run.end_offsets()
    summary = await run.outputs()
    seen = outcomes_per_offset(summary)
    want = expected_offsets(ends)
    missing = want - set(seen)
    assert not missing, f"{len(missing)} input offsets have no verdict or dead letter"
    assert set(seen) <= want
    duplicates = sum(n - 1 for n in seen.values())
    assert duplicates <= max_duplicates
    committed = await run.committed()
    assert committed == ends, "committed offsets must reach the end offsets"


async def test_5000_messages_over_6_partitions(kafka_bootstrap: str, fast_fake: str) -> None:
    run = new_run(kafka_bootstrap, fast_fake, partitions=6)
    await run.create_topics()
    values: list[bytes | None] = [r.value for r in corpus(5000, seed=3)]
    await run.produce(values)

    await run_until_idle(run, concurrency=64, max_in_flight=256)

    await assert_nothing_lost(run)
    summary = await run.outputs()
    assert len(summary.usage) >= len(summary.verdicts)
    assert all(d.stage == "decode" for d in summary.dead_letters), "only poison is dead-lettered"
    assert summary.unreadable == 0


async def test_sigkill_five_times_loses_nothing(kafka_bootstrap: str) -> None:
    max_in_flight = 100
    with fake_openai_server(latency_ms=20, latency_dist="exponential", seed=2) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(5000))
        rng = random.Random(11)
        env = {"MODSTREAM_MAX_IN_FLIGHT": str(max_in_flight), "MODSTREAM_CONCURRENCY": "64"}
        kills = 0
        while kills < 5:
            process = run.spawn(**env)
            await asyncio.sleep(rng.uniform(3.0, 6.0))  # start-up plus a random stretch of work
            assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        # Idle longer than a session timeout (10 s): the last killed member may still hold some
        # partitions until the group notices it is gone and hands them over.
        final = run.spawn("--exit-when-idle", "12", **env)
        _, stderr = await asyncio.to_thread(final.communicate, timeout=300)
        assert final.returncode == 0, stderr.decode()[-3000:]

        await assert_nothing_lost(run, max_duplicates=max_in_flight * kills)


async def test_consumer_joins_and_leaves_mid_run(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=10, latency_dist="exponential", seed=3) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(3000))
        stop_second = asyncio.Event()
        # A small window stays full, so partitions are paused when a rebalance assigns new ones.
        settings = run.settings(concurrency=8, max_in_flight=8)
        first = asyncio.create_task(serve(settings, exit_when_idle=4))
        await asyncio.sleep(3)
        second = asyncio.create_task(serve(settings, stop=stop_second))
        await asyncio.sleep(4)
        stop_second.set()
        second_pipeline = await second
        await first

        fetched = summary(second_pipeline.metrics).fetched
        assert fetched > 0, "the second consumer never got partitions"
        # A rebalance may redo what was in flight on a moved partition, never lose it.
        await assert_nothing_lost(run, max_duplicates=2 * 8)


async def test_sigterm_exits_zero_and_restart_finishes(kafka_bootstrap: str) -> None:
    grace = 10
    with fake_openai_server(latency_ms=100, latency_dist="exponential", seed=4) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(clean_values(1500))
        env = {"MODSTREAM_SHUTDOWN_GRACE_S": str(grace), "MODSTREAM_CONCURRENCY": "32"}
        process = run.spawn(**env)

        async def working() -> bool:  # up, signal handlers in place, and partway through
            assert process.poll() is None, "the consumer exited before the SIGTERM"
            committed = await run.committed()
            return sum(max(0, o) for o in committed.values()) >= 100

        # Never a fixed sleep: on a busy machine the start-up alone took longer than one, and
        # the SIGTERM came before the handler was installed (exit -15).
        await until("the first commits", working)
        process.send_signal(signal.SIGTERM)
        # A bound, not a measurement: it must be gone once the grace period (plus close) is over.
        _, stderr = await asyncio.to_thread(process.communicate, timeout=grace + 15)
        assert process.returncode == 0, stderr.decode()[-3000:]
        assert b"stop requested" in stderr

        restart = run.spawn("--exit-when-idle", "3", **env)
        _, stderr = await asyncio.to_thread(restart.communicate, timeout=300)
        assert restart.returncode == 0, stderr.decode()[-3000:]
        # A clean stop commits what it finished, so the restart repeats nothing.
        await assert_nothing_lost(run, max_duplicates=0)


async def test_bad_inputs_become_dead_letters_and_consumer_keeps_running(
    kafka_bootstrap: str, fast_fake: str
) -> None:
    limit = max(MAX_CASE_BYTES + 1, 50_000)
    run = new_run(kafka_bootstrap, fast_fake, partitions=1)
    await run.create_topics()
    corpus_cases = cases(limit)
    values = [c.value for c in corpus_cases] + clean_values(1)  # a good one after the bad ones
    await run.produce(values)

    await run_until_idle(run, max_message_bytes=limit)

    await assert_nothing_lost(run)
    summary = await run.outputs()
    dead = {d.source.offset: d for d in summary.dead_letters}
    verdicts = {v.source.offset for v in summary.verdicts}
    assert len(corpus_cases) >= 20
    for offset, (name, _, expect) in enumerate(corpus_cases):
        if expect == "dead_letter":
            assert offset in dead, f"{name} should be dead-lettered"
            assert dead[offset].error_message, f"{name}: a dead letter needs a reason"
        else:
            assert offset in verdicts, f"{name} should get a verdict"
    assert len(corpus_cases) in verdicts, "the good message after the bad ones was processed"


async def test_429s_are_retried_never_dead_lettered(kafka_bootstrap: str) -> None:
    with fake_openai_server(p_429=0.3, retry_after_mode="mixed", retry_after_s=0.05, seed=5) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(clean_values(600))

        await run_until_idle(run, concurrency=32)

        await assert_nothing_lost(run)
        summary = await run.outputs()
        assert summary.dead_letters == []
        rate_limited = [u for u in summary.usage if u.outcome == "rate_limited"]
        assert rate_limited, "the fake's 429s must show up as usage events"
        assert len(summary.verdicts) == 600
