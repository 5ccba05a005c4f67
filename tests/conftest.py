"""Fixtures every test suite shares: a real, dedicated Kafka broker and topic helpers.

The broker is the same Apache Kafka the demo uses (``deploy/kafka/kafka.sh``), started once per
session and only when a test asks for ``kafka_bootstrap``, so ``pytest tests/unit`` never starts
Java. It listens on ``MODSTREAM_TEST_KAFKA_PORT`` (default 39092; its controller on port+1),
keeps its data in ``.run/kafka-test`` (wiped at session start, so every run begins clean), and
is stopped at session end.

``MODSTREAM_TEST_KAFKA_BOOTSTRAP=host:port`` uses an existing broker instead and starts nothing.

``schema_registry`` is a real schema registry (Apicurio, ``deploy/registry/registry.sh``) for
the schema-registry input tests, started on first use on ``MODSTREAM_TEST_REGISTRY_PORT``
(default 39850; pytest-xdist worker N adds N) and stopped at session end.

Several sessions may run at once in the same tree (two engineers, or ``make test`` next to an
editor's test run). Each session holds a lock on its broker's data directory; when the default
port's lock is held by another session, the next free slot (port + 10, + 20, ...) is used with
its own data directory. An explicit ``MODSTREAM_TEST_KAFKA_PORT`` is never moved: a busy one
fails with a clear message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import pytest_asyncio
import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hypothesis import settings

from tests.kafka_script import RUN_DIR, NoFreeSlot, claim_slot, run_kafka_sh

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 39092
REGISTRY_SH = ROOT / "deploy" / "registry" / "registry.sh"
DEFAULT_REGISTRY_PORT = 39850
PORT_STEP = 10
PORT_SLOTS = 5
_KAFKA_DIRS = ("integration", "e2e")

# Hypothesis's per-example deadline is a wall-clock assertion: on two busy cores (CI, or two
# pytest-xdist workers) one example took 356 ms against the 200 ms default and failed a
# correct test. Tests here assert behaviour, never time.
settings.register_profile("modstream", deadline=None)
settings.load_profile("modstream")

#: How the session's broker came to be, shown in the terminal summary.
_broker_note: list[str] = []

MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Every test leaves structlog and the root logger as it found them.

    Each command sets up logging from its settings (``consumer.cli.load_settings``), on the
    stderr of the moment: a test that runs one in-process (CliRunner, configure_logging) would
    otherwise leave later tests of the same worker writing to a stream pytest has closed.
    """
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logging.captureWarnings(False)
    structlog.contextvars.clear_contextvars()
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration and tests/e2e need the broker: mark them ``kafka``."""
    for item in items:
        parts = Path(str(item.path)).parts
        if any(a == "tests" and b in _KAFKA_DIRS for a, b in itertools.pairwise(parts)):
            item.add_marker(pytest.mark.kafka)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for note in _broker_note:
        terminalreporter.write_line(note)


def _data_dir(port: int) -> Path:
    return RUN_DIR / ("kafka-test" if port == DEFAULT_PORT else f"kafka-test-{port}")


def _claim_slot(port: int, *, may_move: bool) -> tuple[int, Path, IO[str]]:
    """Lock a (port, data dir) no other session uses; return it with the held lock file."""
    try:
        return claim_slot(port, _data_dir, slots=PORT_SLOTS if may_move else 1, step=PORT_STEP)
    except NoFreeSlot as exc:
        hint = "" if may_move else "; unset MODSTREAM_TEST_KAFKA_PORT or choose another port"
        raise pytest.UsageError(f"{exc}{hint}") from None


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``localhost:PORT`` of a clean broker for this session (started on first use)."""
    existing = os.environ.get("MODSTREAM_TEST_KAFKA_BOOTSTRAP")
    if existing:
        _broker_note.append(f"test broker: {existing} (MODSTREAM_TEST_KAFKA_BOOTSTRAP)")
        yield existing
        return
    explicit = os.environ.get("MODSTREAM_TEST_KAFKA_PORT")
    port, data, lock = _claim_slot(int(explicit or DEFAULT_PORT), may_move=not explicit)
    try:
        shutil.rmtree(data, ignore_errors=True)
        started = time.monotonic()
        result = run_kafka_sh("up", port, data)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            log = data / "kafka.out"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            pytest.fail(
                f"test broker did not start on port {port} (kafka.sh up exit "
                f"{result.returncode}):\n{result.stdout}{result.stderr}\n--- {log}:\n{tail}",
                pytrace=False,
            )
        _broker_note.append(
            f"test broker: localhost:{port} started in {elapsed:.1f}s (data {data})"
        )
        try:
            yield f"localhost:{port}"
        finally:
            run_kafka_sh("down", port, data)
    finally:
        lock.close()


def _run_registry_sh(command: str, port: int, data: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "REGISTRY_PORT": str(port),
        "REGISTRY_DATA_DIR": str(data),
        "REGISTRY_PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", str(REGISTRY_SH), command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def schema_registry(worker_id: str) -> Iterator[str]:
    """The Confluent-compatible base URL of a fresh schema registry (empty: in-memory storage).

    Skipped, saying why, only when its jars cannot be resolved from Maven Central; a registry
    that resolves but does not start fails the tests that asked for it.
    """
    worker = 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))
    port = int(os.environ.get("MODSTREAM_TEST_REGISTRY_PORT", DEFAULT_REGISTRY_PORT)) + worker
    data = RUN_DIR / f"registry-test-{port}"
    fetched = _run_registry_sh("fetch", port, data)
    if fetched.returncode != 0:
        pytest.skip(
            "the schema registry's jars could not be resolved from Maven Central "
            f"(registry.sh fetch exit {fetched.returncode}): {fetched.stderr[-2000:]}"
        )
    shutil.rmtree(data, ignore_errors=True)
    started = time.monotonic()
    result = _run_registry_sh("up", port, data)
    if result.returncode != 0:
        log = data / "registry.out"
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
        pytest.fail(
            f"test schema registry did not start on port {port} (registry.sh up exit "
            f"{result.returncode}):\n{result.stdout}{result.stderr}\n--- {log}:\n{tail}",
            pytrace=False,
        )
    _broker_note.append(
        f"test schema registry: 127.0.0.1:{port} started in {time.monotonic() - started:.1f}s"
    )
    try:
        yield f"http://127.0.0.1:{port}/apis/ccompat/v6"
    finally:
        _run_registry_sh("down", port, data)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """One admin client for the session."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@pytest.fixture
def unique() -> str:
    """A short suffix no other test (or earlier run) uses: for topics, groups, ids."""
    return uuid.uuid4().hex[:10]


@pytest_asyncio.fixture(loop_scope="session")
async def make_topic(kafka_admin: AIOKafkaAdminClient, unique: str) -> MakeTopic:
    """``await make_topic(partitions=3, prefix="t")`` creates a fresh topic, returns its name.

    It returns once every partition has a leader, so producing right away does not race the
    topic's creation.
    """
    counter = iter(range(1_000_000))

    async def create(partitions: int = 1, prefix: str = "test", **configs: str) -> str:
        name = f"{prefix}-{unique}-{next(counter)}"
        await kafka_admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs or None)]
        )
        deadline = time.monotonic() + 30
        while True:
            (described,) = await kafka_admin.describe_topics([name])
            parts = described.get("partitions") or []
            if (
                described.get("error_code") == 0
                and len(parts) == partitions
                and all(p.get("leader", -1) >= 0 for p in parts)
            ):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no leaders after 30 s: {described}")
            await asyncio.sleep(0.05)

    return create
