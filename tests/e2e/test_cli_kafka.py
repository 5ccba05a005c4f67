"""The commands that talk to Kafka, run as a user runs them: one clear line when Kafka is not
there or a topic is missing, and success printed only for what the broker confirmed.

Every test runs the real ``modstream`` command in a subprocess. Unreachable servers are made
for real: a port nothing listens on (bound to port 0, then closed), a host in the ``.invalid``
domain (never resolves, RFC 2606), and a socket that listens but never answers. The rest runs
against the session's test broker, whose ``auto.create.topics.enable=false`` (as production
clusters usually have it) makes a missing topic stay missing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from consumer.kafka.ranges import read_topics
from consumer.tools.sample import corpus
from tests.e2e.harness import Run, new_run
from tests.fake_server import fake_openai_server, free_port

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
UNKNOWN_HOST = "nosuchhost.invalid"


def modstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m consumer ARGS`` with only ``env``'s settings (none of the caller's)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("MODSTREAM_", "OPENAI_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=clean | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,  # a hang guard, not a measure: each command answers in seconds
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command wrote (stderr), after checking it wrote nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modstream: "), result.stderr
    assert result.returncode == 2, result.stderr
    return lines[0]


async def run_modstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(modstream, *args, **env)


# ---- an unreachable bootstrap ---------------------------------------------------------------

#: Every command that talks to Kafka, with what it needs to get that far.
COMMANDS = {
    "consume": ["consume"],
    "topics": ["topics"],
    "sample": ["sample", "--count", "5"],
    "report": ["report"],
    "replay": ["replay", "--topic", "in", "--to-topic", "eval.out", "--cache-topic", ""],
    "eval": ["eval", "--verdicts", "eval.out"],
}

#: A model endpoint no command reaches: each stops at Kafka first.
NO_MODEL = {"OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}


@pytest.fixture
def refused() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def silent() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_refused_connection_is_one_line_and_exit_2(command: str, refused: str) -> None:
    result = modstream(*COMMANDS[command], **NO_MODEL, MODSTREAM_KAFKA_BOOTSTRAP_SERVERS=refused)
    line = one_error_line(result)
    assert f"cannot reach Kafka at {refused} (MODSTREAM_KAFKA_BOOTSTRAP_SERVERS)" in line
    assert "connection refused" in line
    assert result.stdout == ""


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unknown_host_is_one_line_and_exit_2(command: str) -> None:
    server = f"{UNKNOWN_HOST}:9092"
    result = modstream(*COMMANDS[command], **NO_MODEL, MODSTREAM_KAFKA_BOOTSTRAP_SERVERS=server)
    line = one_error_line(result)
    assert f"cannot reach Kafka at {server}" in line
    assert "unknown host" in line
    assert result.stdout == ""


def test_a_server_that_never_answers_is_named_not_waited_on(silent: str) -> None:
    result = modstream("topics", MODSTREAM_KAFKA_BOOTSTRAP_SERVERS=silent)
    line = one_error_line(result)
    assert f"cannot reach Kafka at {silent}" in line
    assert "no answer within" in line


def test_each_of_several_servers_is_named_with_its_reason(refused: str) -> None:
    servers = f"{refused},{UNKNOWN_HOST}:9092"
    result = modstream("report", MODSTREAM_KAFKA_BOOTSTRAP_SERVERS=servers)
    line = one_error_line(result)
    assert f"{refused} connection refused" in line
    assert f"{UNKNOWN_HOST}:9092 unknown host" in line


# ---- missing topics -------------------------------------------------------------------------


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.fixture
def run(kafka_bootstrap: str) -> Run:
    """A run whose topics are not created (the tests create them when they need them)."""
    return new_run(kafka_bootstrap, "http://127.0.0.1:1/v1")


async def test_sample_into_a_missing_topic_is_one_line_and_creates_nothing(run: Run) -> None:
    result = await run_modstream("sample", "--count", "5", **run.env)
    assert one_error_line(result) == (
        f"modstream: topic does not exist: {run.input_topic} (MODSTREAM_INPUT_TOPIC); "
        "create it with `modstream topics`"
    )
    assert result.stdout == ""
    assert run.input_topic not in await topic_names(run.bootstrap)


async def test_consume_names_every_missing_topic_the_same_way(run: Run) -> None:
    result = await run_modstream("consume", "--exit-when-idle", "1", **run.env)
    line = one_error_line(result)
    assert line.startswith("modstream: topics do not exist: ")
    assert f"{run.input_topic} (MODSTREAM_INPUT_TOPIC)" in line
    assert f"{run.name}.dlq (MODSTREAM_DLQ_TOPIC)" in line
    assert line.endswith("create them with `modstream topics`")


async def test_report_names_the_missing_topics_instead_of_empty_tables(run: Run) -> None:
    result = await run_modstream("report", **run.env)
    line = one_error_line(result)
    for variable, topic in [
        ("MODSTREAM_VERDICT_TOPIC", f"{run.name}.verdicts"),
        ("MODSTREAM_USAGE_TOPIC", f"{run.name}.usage"),
        ("MODSTREAM_DLQ_TOPIC", f"{run.name}.dlq"),
    ]:
        assert f"{topic} ({variable})" in line
    assert result.stdout == ""


async def test_report_names_a_missing_topic_given_as_an_option(run: Run) -> None:
    await run.create_topics()  # the service's topics exist; the named one does not
    typo = f"{run.name}.evl"
    result = await run_modstream("report", "--verdicts", typo, **run.env)
    line = one_error_line(result)
    assert f"{typo} (--verdicts)" in line
    assert f"{typo}.usage (--usage, by default --verdicts + .usage)" in line
    assert "replay --to-topic" in line
    assert result.stdout == ""


async def test_replay_names_a_missing_topic_as_the_other_commands_do(run: Run) -> None:
    typo = f"{run.name}.inn"
    out = f"{run.name}.eval"
    result = await run_modstream(
        "replay", "--topic", typo, "--to-topic", out, "--cache-topic", "", **run.env
    )
    assert one_error_line(result) == (
        f"modstream: topic does not exist: {typo} (--topic); "
        "check the name (the topic to replay, e.g. the service's input topic)"
    )
    assert result.stdout == ""
    assert not {out, f"{out}.usage"} & await topic_names(run.bootstrap), "checked first"


async def test_eval_names_a_missing_verdicts_topic_as_report_does(run: Run, tmp_path: Path) -> None:
    typo = f"{run.name}.tesre"
    result = await run_modstream("eval", "--verdicts", typo, "--out", str(tmp_path), **run.env)
    assert one_error_line(result) == (
        f"modstream: topic does not exist: {typo} (--verdicts); "
        "check the name (`modstream replay --to-topic X` writes X and X.usage)"
    )
    assert result.stdout == ""
    assert not any(tmp_path.iterdir()), "no report written"


async def test_eval_names_each_missing_topic_of_several_options(run: Run, tmp_path: Path) -> None:
    await run.create_topics()  # {name}.verdicts exists; the other two do not
    there, typo, base = f"{run.name}.verdicts", f"{run.name}.tesre", f"{run.name}.base"
    result = await run_modstream(
        "eval",
        *("--verdicts", there, "--verdicts", typo, "--baseline", base),
        *("--out", str(tmp_path)),
        **run.env,
    )
    assert one_error_line(result) == (
        f"modstream: topics do not exist: {typo} (--verdicts), {base} (--baseline); "
        "check the name (`modstream replay --to-topic X` writes X and X.usage)"
    )


# ---- what the broker answered ---------------------------------------------------------------


async def test_topics_creates_the_missing_ones_then_says_all_exist(run: Run) -> None:
    first = await run_modstream("topics", "--partitions", "2", **run.env)
    assert first.returncode == 0, first.stderr
    names = [run.input_topic, f"{run.name}.verdicts", f"{run.name}.usage", f"{run.name}.dlq"]
    assert first.stdout.strip() == f"created: {', '.join(names)}"
    assert set(names) <= await topic_names(run.bootstrap)
    again = await run_modstream("topics", **run.env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"all topics exist: {', '.join(names)}"


async def test_topics_reports_a_creation_the_broker_refused(run: Run) -> None:
    result = await run_modstream("topics", "--replication-factor", "3", **run.env)  # 1 broker
    line = one_error_line(result)
    assert line.startswith(f"modstream: Kafka refused to create {run.input_topic}, ")
    assert "INVALID_REPLICATION_FACTOR" in line
    assert "created" not in result.stdout
    assert run.input_topic not in await topic_names(run.bootstrap)


async def test_topics_creates_what_it_can_and_names_what_was_refused(run: Run) -> None:
    bad = "not a topic name!"
    result = await run_modstream("topics", **(run.env | {"MODSTREAM_VERDICT_TOPIC": bad}))
    line = one_error_line(result)
    assert line.startswith(f"modstream: Kafka refused to create {bad}: INVALID_TOPIC")
    assert result.stdout.strip() == (
        f"created: {run.input_topic}, {run.name}.usage, {run.name}.dlq"
    )


async def records_in(bootstrap: str, topic: str) -> int:
    return len([r async for r in read_topics({"bootstrap_servers": bootstrap}, [topic])])


async def test_sample_prints_what_the_broker_acknowledged(run: Run) -> None:
    await run.create_topics()
    result = await run_modstream("sample", "--count", "40", "--seed", "3", **run.env)
    assert result.returncode == 0, result.stderr
    kinds = Counter(r.kind.split(":")[0] for r in corpus(40, seed=3))
    counts = ", ".join(f"{k} {n}" for k, n in kinds.items())
    assert result.stdout.strip() == f"produced 40 records to {run.input_topic}: {counts}"
    assert await records_in(run.bootstrap, run.input_topic) == 40
    assert result.stderr == ""


# ---- report on the topics it is given -------------------------------------------------------


async def test_report_reads_the_topics_a_replay_wrote(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=1, seed=16) as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        sampled = await run_modstream("sample", "--count", "30", **run.env)
        assert sampled.returncode == 0, sampled.stderr
        out = f"{run.name}.eval"
        replayed = await run_modstream(
            "replay", "--topic", run.input_topic, "--to-topic", out, "--cache-topic", "", **run.env
        )
        assert replayed.returncode == 0, replayed.stderr
    poison = sum(r.kind == "poison" for r in corpus(30))
    result = await run_modstream("report", "--verdicts", out, **run.env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"read {out}, {out}.usage" in text
    assert f"Verdicts ({30 - poison})" in text
    assert "Model calls (" in text and "Model calls (0)" not in text
    assert "Dead letters" not in text  # a replay writes none; none was asked for


async def test_report_shows_the_services_dead_letters(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=1, seed=17) as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        sampled = await run_modstream("sample", "--count", "60", "--seed", "4", **run.env)
        assert sampled.returncode == 0, sampled.stderr
        consumed = await run_modstream("consume", "--exit-when-idle", "2", **run.env)
        assert consumed.returncode == 0, consumed.stderr[-3000:]
    poison = sum(r.kind == "poison" for r in corpus(60, seed=4))
    assert poison > 0
    result = await run_modstream("report", **run.env)
    assert result.returncode == 0, result.stderr
    assert f"Dead letters ({poison})" in result.stdout
    assert f"Verdicts ({60 - poison})" in result.stdout
