"""``modstream replay`` as a user runs it (a real process, the real broker): the guards.

- a ``--to-topic`` that is the topic replayed or a service topic is refused with exit 2 before
  any Kafka connection (the broker given does not exist), ``--force`` lets it through;
- ``--max-cost`` stops a three-partition replay with exit 4, verdicts from every partition
  alike, and the summary's resume command replays exactly the rest;
- ``--dry-run`` with no API key prints the estimate and exits 0;
- against a model nothing listens for, the replay ends (exit 3) in one line naming the URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from consumer.kafka.ranges import read_topics
from consumer.tools.sample import corpus
from tests.e2e.harness import ROOT, Run, new_run
from tests.fake_server import fake_openai_server, free_port

pytestmark = pytest.mark.timeout(300)

MESSAGES = 90
STOPPED_EARLY = 4


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with fake_openai_server(latency_ms=2, seed=21) as url:
        yield url


async def replay(run: Run, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m consumer replay --topic <run's input> ARGS`` with the run's settings."""
    full = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("MODSTREAM_", "OPENAI_"))
    }
    full.update(run.env, COLUMNS="200", **env)
    command = [sys.executable, "-m", "consumer", "replay", "--topic", run.input_topic, *args]
    return await asyncio.to_thread(
        subprocess.run,
        command,
        env={k: v for k, v in full.items() if v != ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


async def verdict_partitions(run: Run, topic: str) -> Counter[tuple[int, int]]:
    """(partition, offset) of the inputs each verdict of ``topic`` is for."""
    seen: Counter[tuple[int, int]] = Counter()
    async for record in read_topics({"bootstrap_servers": run.bootstrap}, [topic]):
        source = json.loads(record.value)["source"]
        seen[(source["partition"], source["offset"])] += 1
    return seen


async def labelled_run(kafka_bootstrap: str, url: str) -> Run:
    run = new_run(kafka_bootstrap, url, partitions=3)
    await run.create_topics()
    await run.produce([r.value for r in corpus(MESSAGES, seed=5, poison_share=0.0)])
    return run


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("modstream:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


async def test_a_service_topic_as_to_topic_is_refused_before_any_kafka_connection(
    fake: str,
) -> None:
    run = new_run("127.0.0.1:1", fake)  # no broker there: the refusal must come first
    same = await replay(run, "--to-topic", run.input_topic)
    assert same.returncode == 2, (same.stdout, same.stderr)
    assert "--topic" in one_line(same) and repr(run.input_topic) in one_line(same)

    usage = await replay(run, "--to-topic", f"{run.name}")  # its .usage is the service's
    assert usage.returncode == 2, (usage.stdout, usage.stderr)
    assert "MODSTREAM_USAGE_TOPIC" in one_line(usage)


async def test_force_lets_a_service_topic_through(kafka_bootstrap: str, fake: str) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    # A dry run, so that forcing writes nothing into the input topic.
    forced = await replay(run, "--to-topic", run.input_topic, "--force", "--dry-run")
    assert forced.returncode == 0, (forced.stdout, forced.stderr)


async def test_max_cost_stops_with_exit_4_a_fair_sample_and_a_resume_that_completes_it(
    kafka_bootstrap: str, fake: str
) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    estimate = await replay(run, "--to-topic", f"{run.name}.dry", "--dry-run")
    assert estimate.returncode == 0, estimate.stderr
    total = float(re.search(r"cost \(USD\)\s*│\s*([0-9.]+)", estimate.stdout).group(1))  # type: ignore[union-attr]

    target = f"{run.name}.capped"
    capped = await replay(
        run, "--to-topic", target, "--cache-topic", "", "--max-cost", f"{total / 3:.6f}"
    )
    assert capped.returncode == STOPPED_EARLY, (capped.stdout, capped.stderr)
    assert "stopped early by --max-cost" in capped.stdout
    assert "stopped: budget" in capped.stderr and "100%" not in capped.stderr
    first = await verdict_partitions(run, target)
    per = Counter(partition for partition, _ in first)
    assert 0 < sum(per.values()) < MESSAGES
    assert set(per) == {0, 1, 2} and max(per.values()) - min(per.values()) <= 1, per

    resume = re.search(r"--from-offset (\S+)", capped.stdout)
    assert resume is not None, capped.stdout
    rest = await replay(run, "--to-topic", target, "--cache-topic", "", "--from-offset", resume[1])
    assert rest.returncode == 0, (rest.stdout, rest.stderr)
    both = await verdict_partitions(run, target)
    assert len(both) == MESSAGES and set(both.values()) == {1}, "the rest, each once"


async def test_dry_run_needs_no_api_key(kafka_bootstrap: str, fake: str) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    result = await replay(
        run, "--to-topic", f"{run.name}.dry", "--dry-run", OPENAI_API_KEY="", OPENAI_BASE_URL=""
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Dry run" in result.stdout and "cost (USD)" in result.stdout
    assert re.search(rf"model calls\s*│\s*{MESSAGES}\b", result.stdout), result.stdout


async def test_a_dead_model_ends_the_replay_in_one_line_naming_the_url(
    kafka_bootstrap: str, fake: str
) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result = await replay(
        run, "--to-topic", f"{run.name}.dead", "--max-outage", "2", OPENAI_BASE_URL=dead
    )
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = one_line(result)
    assert dead in line and "unreachable" in line and "provider_unavailable" in line
    assert "stopped early because the model was unreachable" in result.stdout
    assert "--from-offset 0:0,1:0,2:0" in result.stdout
