"""``modstream replay --batch-api`` as a user runs it (a real process, the real broker, the fake's
Files and Batches API over HTTP).

- a batch replay gives exactly one verdict per input, the same tokens as a synchronous replay
  of the same inputs, at half its cost, and its usage events say which batch they came from;
- a batch replay SIGKILLed while its batch runs, run again, waits for that batch instead of
  creating a second, and then publishes one verdict per input;
- ``--dry-run`` estimates at half the synchronous price with no key and no batch, and
  ``--max-cost`` cuts the range before submitting (a fair sample, exit 4, within budget),
  its resume command replaying exactly the rest;
- a 500 line is that input's dead letter, a reply in wrapping is salvaged, an invalid one is a
  dead letter (no repair call), each with its usage event.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from consumer.kafka.ranges import read_topics
from consumer.testing.fake_openai import FakeAdmin
from tests.e2e.harness import ROOT, Run, clean_values, new_run, until
from tests.e2e.test_replay_guard import replay, verdict_partitions
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

STOPPED_EARLY = 4


def command_env(run: Run) -> dict[str, str]:
    """The environment of a replay process: the run's settings, none of ours leaking in."""
    full = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("MODSTREAM_", "OPENAI_"))
    }
    full.update(run.env, COLUMNS="200")
    return full


async def usage_events(run: Run, topic: str) -> list[dict[str, Any]]:
    return [
        json.loads(r.value)
        async for r in read_topics({"bootstrap_servers": run.bootstrap}, [f"{topic}.usage"])
    ]


async def new_inputs(kafka_bootstrap: str, url: str, count: int) -> Run:
    run = new_run(kafka_bootstrap, url, partitions=3)
    await run.create_topics()
    # Distinct contents: no input is a cache hit of another, in either kind of replay.
    await run.produce(clean_values(count))
    return run


async def test_a_batch_replay_gives_every_verdict_once_at_half_the_synchronous_cost(
    kafka_bootstrap: str,
) -> None:
    count = 2000
    with fake_openai_server(latency_ms=0, seed=17, batch_delay_s=0.5) as url:
        run = await new_inputs(kafka_bootstrap, url, count)
        async with FakeAdmin(url) as admin:
            sync = await replay(run, "--to-topic", f"{run.name}.sync", "--cache-topic", "")
            assert sync.returncode == 0, (sync.stdout, sync.stderr)
            await admin.reset()  # the fake's prompt cache too: both runs start from cold
            batch = await replay(
                run,
                "--to-topic",
                f"{run.name}.batch",
                "--cache-topic",
                "",
                "--batch-api",
                "--batch-poll-s",
                "0.1",
            )
            assert batch.returncode == 0, (batch.stdout, batch.stderr)
            assert await admin.batches_created() == 1
            assert await admin.files_uploaded() == 1
            stats = await admin.stats()
            assert stats["by_path"].get("/v1/chat/completions", 0) == 0, "no synchronous call"

    seen = await verdict_partitions(run, f"{run.name}.batch")
    assert len(seen) == count and set(seen.values()) == {1}, "every input, each once"
    assert "via the Batch API: 50%" in batch.stdout

    sync_usage = await usage_events(run, f"{run.name}.sync")
    batch_usage = await usage_events(run, f"{run.name}.batch")
    assert len(sync_usage) == len(batch_usage) == count
    for kind in ("prompt_tokens", "completion_tokens", "cached_tokens"):
        assert sum(u[kind] for u in batch_usage) == sum(u[kind] for u in sync_usage), kind
    sync_cost = sum(u["cost_usd"] for u in sync_usage)
    batch_cost = sum(u["cost_usd"] for u in batch_usage)
    assert sync_cost > 0
    assert math.isclose(batch_cost / sync_cost, 0.5, rel_tol=1e-9), (sync_cost, batch_cost)
    # Per input, too: the same tokens at half the price, and marked so a reader can tell.
    by_input = {(u["source"]["partition"], u["source"]["offset"]): u for u in sync_usage}
    batch_ids = set()
    for event in batch_usage:
        twin = by_input[(event["source"]["partition"], event["source"]["offset"])]
        assert event["prompt_tokens"] == twin["prompt_tokens"]
        assert math.isclose(event["cost_usd"], twin["cost_usd"] / 2, rel_tol=1e-9)
        assert "Batch API" in event["price_source"] and "Batch API" not in twin["price_source"]
        assert twin["provider_batch_id"] is None and event["batch_id"] is None
        batch_ids.add(event["provider_batch_id"])
    assert len(batch_ids) == 1 and None not in batch_ids
    print(f"\nsync cost {sync_cost:.6f} USD, batch cost {batch_cost:.6f} USD")


async def test_a_batch_replay_killed_while_its_batch_runs_resumes_without_a_second_batch(
    kafka_bootstrap: str,
) -> None:
    count = 300
    # The batch waits (an hour) until the test shortens the delay.
    with fake_openai_server(latency_ms=0, seed=17, batch_delay_s=3600) as url:
        run = await new_inputs(kafka_bootstrap, url, count)
        target = f"{run.name}.batch"
        args = ["--to-topic", target, "--cache-topic", "", "--batch-api", "--batch-poll-s", "0.1"]
        first = subprocess.Popen(
            [sys.executable, "-m", "consumer", "replay", "--topic", run.input_topic, *args],
            cwd=ROOT,
            env=command_env(run),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with FakeAdmin(url) as admin:

                async def submitted() -> bool:
                    assert first.poll() is None, f"the replay exited with {first.returncode}"
                    return await admin.batches_created() == 1

                await until("the first replay's batch", submitted)
                first.send_signal(signal.SIGKILL)
                await asyncio.to_thread(first.wait, 30)
                assert await verdict_partitions(run, target) == Counter(), "nothing published"

                await admin.patch(batch_delay_s=0.2)  # the waiting batch is done now
                again = await replay(run, *args)
                assert again.returncode == 0, (again.stdout, again.stderr)
                assert await admin.batches_created() == 1, "the batch was found, not sent again"
                assert await admin.files_uploaded() == 1
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert "(resumed)" in again.stdout
    seen = await verdict_partitions(run, target)
    assert len(seen) == count and set(seen.values()) == {1}, "every input, each once"


def summary_cost(stdout: str) -> float:
    found = re.search(r"cost \(USD\)\s*│\s*([0-9.]+)", stdout)
    assert found is not None, stdout
    return float(found[1])


async def test_dry_run_and_max_cost_work_at_the_batch_price(kafka_bootstrap: str) -> None:
    count = 90
    with fake_openai_server(latency_ms=0, seed=17, batch_delay_s=0.2) as url:
        run = await new_inputs(kafka_bootstrap, url, count)
        sync_dry = await replay(run, "--to-topic", f"{run.name}.dry", "--dry-run")
        batch_dry = await replay(
            run, "--to-topic", f"{run.name}.dry", "--dry-run", "--batch-api", OPENAI_API_KEY=""
        )
        assert sync_dry.returncode == batch_dry.returncode == 0, (sync_dry, batch_dry)
        assert "via the Batch API: 50%" in batch_dry.stdout
        total = summary_cost(batch_dry.stdout)
        assert math.isclose(total, summary_cost(sync_dry.stdout) / 2, rel_tol=1e-3)

        target = f"{run.name}.capped"
        common = ["--to-topic", target, "--cache-topic", "", "--batch-api", "--batch-poll-s", "0.1"]
        budget = total / 3
        capped = await replay(run, *common, "--max-cost", f"{budget:.8f}")
        assert capped.returncode == STOPPED_EARLY, (capped.stdout, capped.stderr)
        assert "stopped early by --max-cost" in capped.stdout
        first = await verdict_partitions(run, target)
        per = Counter(partition for partition, _ in first)
        assert 0 < sum(per.values()) < count
        assert set(per) == {0, 1, 2} and max(per.values()) - min(per.values()) <= 1, per
        spent = sum(u["cost_usd"] for u in await usage_events(run, target))
        assert 0 < spent <= budget

        resume = re.search(r"--from-offset (\S+)", capped.stdout)
        assert resume is not None, capped.stdout
        rest = await replay(run, *common, "--from-offset", resume[1])
        assert rest.returncode == 0, (rest.stdout, rest.stderr)
        both = await verdict_partitions(run, target)
        assert len(both) == count and set(both.values()) == {1}, "the rest, each once"
        async with FakeAdmin(url) as admin:
            assert await admin.batches_created() == 2, "one batch per part, none for dry runs"


async def test_error_lines_and_unusable_replies_are_dead_letters_and_wrapping_is_salvaged(
    kafka_bootstrap: str,
) -> None:
    count, poisoned = 60, 5
    with fake_openai_server(
        latency_ms=0,
        seed=23,
        batch_delay_s=0.2,
        fail_when_contains="POISON-MARK",
        p_fenced=0.3,
        p_invalid_json=0.15,
    ) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        values = clean_values(count)
        for i in range(poisoned):  # the fake answers these lines 500
            values[i * 7] = json.dumps({"id": f"p{i}", "text": f"POISON-MARK {i}"}).encode()
        await run.produce(values)
        target = f"{run.name}.batch"
        result = await replay(
            run, "--to-topic", target, "--cache-topic", "", "--batch-api", "--batch-poll-s", "0.1"
        )
    assert result.returncode == 0, (result.stdout, result.stderr)
    usage = await usage_events(run, target)
    outcomes = Counter(u["outcome"] for u in usage)
    verdicts = await verdict_partitions(run, target)
    assert len(usage) == count, "one usage event per input, failed or not"
    assert outcomes["provider_unavailable"] == poisoned
    assert outcomes["salvaged"] > 0 and outcomes["invalid_reply"] > 0, outcomes
    assert len(verdicts) == count - poisoned - outcomes["invalid_reply"]
    assert set(verdicts.values()) == {1}
    assert f"persistent_failure: {poisoned}" in result.stdout
    assert f"invalid_reply: {outcomes['invalid_reply']}" in result.stdout
