"""What the end-to-end tests share: a run's topics and settings, the consumer as a real
process (its stderr followed as it comes), its operations port over HTTP, waiting on
conditions, and reading back what it wrote (through the real broker, never a mock).

Waiting: a test waits on the condition a step stands for (``/readyz``, the assignment gauge,
a log line, a committed offset, a count at the fake) through :func:`until`, never on a tuned
sleep, and never asserts on wall-clock time. A fixed duration stays only where it is the thing
under test (an outage of a given length), with a comment saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from consumer.ops.metrics import Metrics
from consumer.settings import Settings
from consumer.tools.report import Summary, summarise

ROOT = Path(__file__).resolve().parents[2]

# ---- waiting --------------------------------------------------------------------------------


async def until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    *,
    within: float = 120,
    every: float = 0.2,
    unless: Callable[[], str | None] | None = None,
    context: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` every ``every`` seconds until true; fail naming ``what`` after ``within``
    seconds (a bound for a stuck run, not a measurement). Tests wait on conditions, never on a
    tuned sleep.

    ``unless`` returns why waiting is pointless (a process exited) or ``None``: checked before
    each poll, it fails the wait at once with that reason. ``context`` adds what helps to read
    a failure (a process's last log lines) to its message.
    """

    def failure(reason: str) -> AssertionError:
        extra = f"\n{context()}" if context is not None else ""
        return AssertionError(f"{reason}{extra}")

    try:
        async with asyncio.timeout(within):
            while True:
                if unless is not None and (why := unless()) is not None:
                    raise failure(f"stopped waiting for {what}: {why}")
                if await check():
                    return
                await asyncio.sleep(every)  # the poll interval, not a wait for anything
    except TimeoutError:
        raise failure(f"gave up waiting for {what} after {within:.0f} s") from None


# ---- the input ------------------------------------------------------------------------------


def clean_values(n: int, *, start: int = 0) -> list[bytes | None]:
    """``n`` well-formed messages (ids ``m{start}`` on), of a few lengths."""
    return [
        json.dumps(
            {"id": f"m{i}", "text": f"message number {i}: {'hello world ' * (i % 5)}"}
        ).encode()
        for i in range(start, start + n)
    ]


# ---- a run ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One test's private topics and consumer group on the shared test broker."""

    bootstrap: str
    base_url: str
    name: str
    partitions: int = 6
    #: Where its consumers' stdout goes (a file, for a test that reads it); by default nowhere.
    stdout: IO[bytes] | int = subprocess.DEVNULL
    #: Settings the readers of its outputs need besides the topics (a schema registry's URL).
    reading: dict[str, object] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment a consumer of this run needs (settings by MODSTREAM_ variables)."""
        return {
            "MODSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MODSTREAM_INPUT_TOPIC": f"{self.name}.in",
            "MODSTREAM_VERDICT_TOPIC": f"{self.name}.verdicts",
            "MODSTREAM_USAGE_TOPIC": f"{self.name}.usage",
            "MODSTREAM_DLQ_TOPIC": f"{self.name}.dlq",
            "MODSTREAM_GROUP_ID": f"{self.name}.group",
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "MODSTREAM_COMMIT_INTERVAL_S": "0.5",
        }

    def settings(self, **overrides: object) -> Settings:
        """Settings for an in-process consumer of this run."""
        values: dict[str, object] = {
            k.removeprefix("MODSTREAM_").lower(): v
            for k, v in self.env.items()
            if k.startswith("MODSTREAM_")
        }
        values["openai_base_url"] = self.base_url
        values["openai_api_key"] = "sk-test-not-a-real-key"
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    @property
    def input_topic(self) -> str:
        return f"{self.name}.in"

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(self.input_topic, self.partitions, 1),
                    NewTopic(f"{self.name}.verdicts", 3, 1),
                    NewTopic(f"{self.name}.usage", 3, 1),
                    NewTopic(f"{self.name}.dlq", 1, 1),
                ]
            )
        finally:
            await admin.close()

    async def produce(self, values: Sequence[bytes | None], *, keyed: bool = True) -> None:
        """Write ``values`` round-robin over the input partitions."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=10)
        async with producer:
            futures = [
                await producer.send(
                    self.input_topic,
                    value,
                    key=f"k{i % 97}".encode() if keyed else None,
                    partition=i % self.partitions,
                )
                for i, value in enumerate(values)
            ]
            await asyncio.gather(*futures)

    async def outputs(self) -> Summary:
        return await summarise(self.settings(**self.reading))

    async def committed(self) -> dict[int, int]:
        """The group's committed offset per input partition (-1 when none)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(f"{self.name}.group")
        finally:
            await admin.close()
        mine = {tp: meta for tp, meta in offsets.items() if tp.topic == self.input_topic}
        return {tp.partition: meta.offset for tp, meta in mine.items()}

    async def committed_total(self) -> int:
        """How many input offsets the group has committed, over all partitions."""
        return sum(max(0, o) for o in (await self.committed()).values())

    async def end_offsets(self) -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        async with consumer:
            tps = [TopicPartition(self.input_topic, p) for p in range(self.partitions)]
            ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """``modstream consume`` as a real process (so it can be SIGKILLed), JSON logs on a
        stderr pipe the caller reads (``communicate``, or :class:`Logs`), stdout to
        :attr:`stdout`."""
        full = {**os.environ, **self.env, "MODSTREAM_LOG_FORMAT": "json", **env}
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", "consume", *args],
            cwd=ROOT,
            env=full,
            stdout=self.stdout,
            stderr=subprocess.PIPE,
        )

    def start(self, *args: str, name: str = "consumer", **env: str) -> Consumer:
        """:meth:`spawn`, its stderr followed as it comes (see :class:`Consumer`)."""
        return Consumer(name, self.spawn(*args, **env))


def new_run(bootstrap: str, base_url: str, partitions: int = 6) -> Run:
    return Run(bootstrap, base_url, f"e2e-{uuid.uuid4().hex[:10]}", partitions)


# ---- a consumer process and its log ---------------------------------------------------------


class Logs:
    """A process's stderr, read in a thread as it comes (so a chatty process never blocks on a
    full pipe), each line with the monotonic time it was read; JSON lines parsed on demand."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self.lines: list[tuple[float, bytes]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append((time.monotonic(), line))

    def join(self, timeout: float = 30) -> None:
        """Wait until the stream ended (the process exited and its last line was read)."""
        self._thread.join(timeout)

    @property
    def raw(self) -> list[str]:
        return [line.decode(errors="replace") for _, line in list(self.lines)]

    def text(self) -> str:
        """Everything written so far (after :meth:`join`: everything)."""
        return "".join(self.raw)

    def records(self) -> list[dict[str, Any]]:
        """Every line, parsed; a line that is not a JSON object becomes ``{"event": line}``
        (a traceback, a line written before logging was set up)."""
        found: list[dict[str, Any]] = []
        for line in self.raw:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            found.append(record if isinstance(record, dict) else {"event": line})
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log records whose event is ``name``, in order."""
        return [r for r in self.records() if r.get("event") == name]

    def between(self, start: float, end: float) -> list[bytes]:
        """The lines read from ``start`` to ``end`` (monotonic seconds)."""
        return [line for at, line in list(self.lines) if start <= at <= end]

    def tail(self, n: int = 40) -> str:
        return "".join(self.raw[-n:])


class Consumer:
    """A ``modstream consume`` process of a run (:meth:`Run.start`) and its followed log."""

    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.process = process
        self.logs = Logs(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> str | None:
        """Why this consumer is no longer running (for :func:`until`'s ``unless``), or None."""
        code = self.process.poll()
        return None if code is None else f"{self.name} exited with {code}"

    def assignments(self) -> int:
        """How many non-empty assignments this consumer has logged."""
        return sum(1 for e in self.logs.events("partitions assigned") if e.get("partitions"))

    def tail(self, n: int = 40) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited {code}"
        return f"--- {self.name} ({state}), last lines:\n{self.logs.tail(n)}"

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit (it must within ``timeout``); its exit code."""
        code = await asyncio.to_thread(self.process.wait, timeout)
        self.logs.join()
        return code

    async def stop(self, timeout: float = 90) -> int:
        """SIGTERM (if still running), then wait for the exit; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def sigkill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.wait(30)

    def kill_if_running(self) -> None:
        """For a ``finally``: never leave a consumer behind a failed test."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---- the operations port --------------------------------------------------------------------


@dataclass
class Scrape:
    """One /metrics response (or an in-process registry): sample values by name and labels."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return cls(samples)

    @classmethod
    def of(cls, metrics: Metrics) -> Scrape:
        """What an in-process consumer's ``Metrics`` would answer on /metrics now."""
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in metrics.registry.collect()
            for s in family.samples
        }
        return cls(samples)

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def total(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for lbl, v in self.series(name).items() if wanted <= lbl)

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``name``'s samples that match ``labels``, keyed by the value of ``label``."""
        wanted = set(labels.items())
        return {
            dict(lbl)[label]: v
            for lbl, v in self.series(name).items()
            if wanted <= lbl and label in dict(lbl)
        }


class Endpoints:
    """A consumer's (or the workers supervisor's) operations server, over real HTTP."""

    def __init__(self, port: int) -> None:
        self.origin = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **headers: str) -> tuple[int, str] | None:
        """(status, body), or None while nothing listens yet."""
        try:
            async with self.session.get(self.origin + path, headers=headers) as response:
                return response.status, await response.text()
        except aiohttp.ClientConnectionError:
            return None

    async def status(self, path: str) -> tuple[int, Any] | None:
        """(status, JSON body), or None while nothing listens yet."""
        answer = await self.get(path)
        return None if answer is None else (answer[0], json.loads(answer[1]))

    async def ready(self) -> bool:
        """``/readyz`` answers 200."""
        answer = await self.get("/readyz")
        return answer is not None and answer[0] == 200

    async def scrape(self, **headers: str) -> Scrape:
        answer = await self.get("/metrics", **headers)
        assert answer is not None and answer[0] == 200, answer
        return Scrape.parse(answer[1])


# ---- what came out --------------------------------------------------------------------------


def outcomes_per_offset(summary: Summary) -> Counter[tuple[int, int]]:
    """How many verdicts plus dead letters each (partition, offset) of the input produced."""
    seen: Counter[tuple[int, int]] = Counter()
    for v in summary.verdicts:
        seen[(v.source.partition, v.source.offset)] += 1
    for d in summary.dead_letters:
        seen[(d.source.partition, d.source.offset)] += 1
    return seen


def expected_offsets(ends: dict[int, int]) -> set[tuple[int, int]]:
    return {(p, o) for p, end in ends.items() for o in range(end)}


async def assert_nothing_lost(
    run: Run, *, max_duplicates: int | None = 0, ends: dict[int, int] | None = None
) -> Summary:
    """Every input offset (up to ``ends``, by default the topic's end offsets now) has a
    verdict or a dead letter, nothing else has one, at most ``max_duplicates`` outcomes are
    repeats (``None``: repeats are not bounded, for at-least-once delivery across an event
    whose cost the test cannot measure), and the group's commits reach the end. Returns what
    the run wrote."""
    ends = ends if ends is not None else await run.end_offsets()
    summary = await run.outputs()
    seen = outcomes_per_offset(summary)
    want = expected_offsets(ends)
    missing = want - set(seen)
    assert not missing, f"{len(missing)} input offsets have no verdict or dead letter"
    assert set(seen) <= want, f"{len(set(seen) - want)} outcomes for offsets never produced"
    duplicates = sum(n - 1 for n in seen.values())
    repeated = sum(1 for n in seen.values() if n > 1)
    assert max_duplicates is None or duplicates <= max_duplicates, (
        f"{duplicates} repeated outcomes ({repeated} input offsets have more than one), "
        f"at most {max_duplicates} allowed"
    )
    committed = await run.committed()
    assert committed == ends, "committed offsets must reach the end offsets"
    return summary


async def outcomes_past_commit(
    run: Run, before: Counter[tuple[int, int]] | None = None
) -> tuple[int, Counter[tuple[int, int]]]:
    """After a consumer was killed: how many outcomes it wrote for offsets at or past the
    group's committed offsets (they will be redone: the at-least-once repeats this kill costs),
    counting only those not in ``before`` (what was there at the previous kill); and the
    outcomes per offset now, for the next call."""
    before = before or Counter()
    now = outcomes_per_offset(await run.outputs())
    committed = await run.committed()
    past = sum(n - before[(p, o)] for (p, o), n in now.items() if o >= committed.get(p, -1))
    return past, now


async def kill_at_random_progress(
    run: Run,
    *,
    kills: int,
    step: tuple[int, int],
    rng: random.Random,
    env: dict[str, str],
    within: float = 180,
) -> int:
    """Start ``kills`` consumers one after another and SIGKILL each once the group's commits
    have moved a random number of offsets (drawn from ``step``) past where they stood when it
    got its partitions: the kill instants are random, yet every victim has made progress of
    its own (only it runs, so only it commits) before it dies.

    Returns the outcomes the victims wrote past their last committed offsets: the work each
    kill makes the next consumer redo, so at-least-once delivery repeats at most that many
    (exactly-once, whose aborted outputs a read_committed reader never sees, none).
    """
    redone = 0
    seen: Counter[tuple[int, int]] = Counter()
    total = sum((await run.end_offsets()).values())
    for kill in range(1, kills + 1):
        victim = run.start(name=f"victim {kill}", **env)
        try:
            await _kill_after_progress(run, victim, rng.randint(*step), total, within=within)
        finally:
            victim.kill_if_running()
        past, seen = await outcomes_past_commit(run, seen)
        redone += past
    return redone


async def _kill_after_progress(
    run: Run, victim: Consumer, progress: int, total: int, *, within: float
) -> None:
    async def wait(check: Callable[[], Awaitable[bool]], what: str) -> None:
        await until(what, check, within=within, unless=victim.exited, context=victim.tail)

    async def assigned() -> bool:
        return victim.assignments() > 0

    # Once it owns partitions, the killed predecessors' last commits have long settled (joining
    # waits out their session timeout), so what is committed from here on is the victim's work.
    await wait(assigned, f"{victim.name} assigned partitions")
    target = await run.committed_total() + progress
    assert target < total, f"{victim.name} would die after the end of the input ({total})"

    async def progressed() -> bool:
        return await run.committed_total() >= target

    await wait(progressed, f"{victim.name} to commit {progress} more offsets (to {target})")
    await victim.sigkill()


async def finish(
    run: Run, ends: dict[int, int], env: dict[str, str], *, within: float = 300
) -> None:
    """Start a consumer, wait until the group has committed every offset up to ``ends``, stop
    it with SIGTERM and check it exits 0 (a wait on the commits, not on an idle timeout: a
    killed member may hold partitions for a session timeout, and an idle exit can come early).
    """
    last = run.start(name="the last consumer", **env)
    try:

        async def all_committed() -> bool:
            return await run.committed() == ends

        await until(
            "the last consumer to commit every offset",
            all_committed,
            within=within,
            unless=last.exited,
            context=last.tail,
        )
        code = await last.stop()
    finally:
        last.kill_if_running()
    assert code == 0, last.tail()
