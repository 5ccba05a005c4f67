"""What every benchmark section stands on: the broker, the fake, processes we can measure,
a fast backlog producer and readers for what the runs wrote.

Processes are measured from the outside: a sampler reads ``/proc/<pid>/stat`` (user + system
CPU) and ``/proc/<pid>/status`` (RSS and its high-water mark VmHWM) every 100 ms, so CPU can be
taken over a steady-state window; the final ``os.wait4`` rusage gives the exact total CPU.
Peak RSS is VmHWM, never ``ru_maxrss``: at exec the kernel folds the parent's RSS into the
child's ``ru_maxrss``, so a child of a harness holding 400 MB reports at least 400 MB.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import functools
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.kafka.ranges import read_topics
from consumer.kafka.topics import topic_partitions
from consumer.tools.sample import corpus
from tests.fake_server import _ready, free_port, knob_env, served
from tests.kafka_script import run_kafka_sh

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run" / "bench"
#: Where the processes we measure import modstream from (see ``use_snapshot``).
CODE: dict[str, Any] = {"dir": ROOT, "label": "working tree"}


def use_snapshot() -> str:
    """Measure the committed HEAD, not the shared working tree: export ``consumer/`` and
    ``schemas/`` at HEAD into ``.run/bench/src`` and run every process from there. Other
    people's half-saved edits then cannot break or skew a run. Returns the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = RUN_DIR / "src"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "HEAD", "consumer", "schemas"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    CODE["dir"] = target
    CODE["label"] = f"snapshot of HEAD {commit} in {target.relative_to(ROOT)}"
    return commit


def code_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with modstream importable from the measured code (and tests/ from ROOT)."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(CODE["dir"]), str(ROOT)])}


BENCH_PORT = 39192
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_kb = int(match.group(1)) if match else 0
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    kafka = re.search(r"<kafka.version>(.*?)</kafka.version>", pom)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "consumer", "schemas", "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    code = str(CODE["label"])
    if CODE["dir"] == ROOT:
        code += f" at {commit}"
        if dirty:
            code += f" + {len(dirty)} uncommitted change(s) in consumer/, schemas/, pyproject.toml"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka": f"Apache Kafka {kafka.group(1) if kafka else '?'} (KRaft, one node)",
        "java": (java.stderr.splitlines() or ["?"])[0],
        "aiokafka": metadata.version("aiokafka"),
        "openai": metadata.version("openai"),
        "code measured": code,
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --------------------------------------------------------------------------- processes


#: Pseudo pid for the whole machine in a Sampler: busy CPU seconds of all cores together.
MACHINE = -1


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def proc_cpu_rss(pid: int) -> tuple[float, int, int] | None:
    """(user + system CPU seconds, RSS kB, peak RSS kB so far) of a live process, or None
    once it is gone."""
    if pid == MACHINE:
        return machine_busy(), 0, 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    hwm = re.search(r"VmHWM:\s+(\d+)", status)
    return cpu, int(rss.group(1)) if rss else 0, int(hwm.group(1)) if hwm else 0


def tree_cpu_rss(pid: int) -> tuple[float, int, int] | None:
    """``proc_cpu_rss`` of a process and all its live descendants added up, plus the CPU of
    the children it has already reaped (a ``--workers`` supervisor and its workers, including
    the ones it restarted). The high-water mark is the sum of each process's own."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    own = proc_cpu_rss(pid)
    if own is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    except OSError:
        reaped = 0.0
    cpu, rss, hwm = own[0] + reaped, own[1], own[2]
    for child in tree[1:]:
        if (got := proc_cpu_rss(child)) is not None:
            cpu, rss, hwm = cpu + got[0], rss + got[1], hwm + got[2]
    return cpu, rss, hwm


@dataclass
class Series:
    """(wall time, CPU seconds, RSS kB, peak RSS kB so far) samples of one process."""

    samples: list[tuple[float, float, int, int]] = field(default_factory=list)

    def cpu_at(self, t: float) -> float:
        """CPU seconds used up to wall time ``t`` (linear between samples)."""
        times = [s[0] for s in self.samples]
        if not times:
            return 0.0
        i = bisect.bisect_left(times, t)
        if i == 0:
            return self.samples[0][1]
        if i >= len(times):
            return self.samples[-1][1]
        (t0, c0, *_), (t1, c1, *_) = self.samples[i - 1], self.samples[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def cpu_between(self, t0: float, t1: float) -> float:
        return max(0.0, self.cpu_at(t1) - self.cpu_at(t0))

    def peak_rss_kb(self) -> int:
        return max((s[3] for s in self.samples), default=0)

    def peak_reached_at(self) -> float | None:
        """Wall time of the first sample that saw the final peak (VmHWM) value."""
        if not self.samples:
            return None
        peak = self.samples[-1][3]
        return next(s[0] for s in self.samples if s[3] >= peak)


class Sampler:
    """Samples CPU and RSS of named processes until stopped."""

    def __init__(
        self, pids: dict[str, int], interval: float = 0.1, trees: frozenset[str] = frozenset()
    ) -> None:
        self.pids = pids
        self.trees = trees  # names sampled with their descendants (``tree_cpu_rss``)
        self.interval = interval
        self.series: dict[str, Series] = {name: Series() for name in pids}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        now = time.time()
        for name, pid in self.pids.items():
            got = tree_cpu_rss(pid) if name in self.trees else proc_cpu_rss(pid)
            if got is not None:
                self.series[name].samples.append((now, *got))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class ProcRun:
    """One measured child process, from spawn to exit."""

    name: str
    returncode: int
    started: float
    ended: float
    cpu_s: float
    maxrss_kb: int  # VmHWM of the child's own address space, last sampled before exit
    series: dict[str, Series]
    log: Path
    stopped_at: float | None = None  # when we sent SIGTERM (wall time), if we did

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without modstream or OpenAI settings, plus ``extra``."""
    prefixes = ("MODSTREAM_", "OPENAI_")
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(prefixes)}
    return {**base, **extra}


async def run_process(
    name: str,
    command: list[str],
    env: dict[str, str],
    *,
    watch: dict[str, int] | None = None,
    stop_when: Callable[[], Awaitable[bool]] | None = None,
    timeout: float = 900.0,
    tree: bool = False,
) -> ProcRun:
    """Run ``command`` to its exit, sampling it and the ``watch`` processes; return its exact
    CPU time (rusage) and peak RSS (VmHWM, sampled every 100 ms until it exits).
    ``stop_when`` is polled twice a second: once it returns true the process gets SIGTERM (a
    graceful stop); past ``timeout`` seconds it gets SIGKILL. ``tree``: sample the process
    with its descendants (a supervisor and its workers); CPU and RSS are then the tree's."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = RUN_DIR / f"{name}.log"
    with log.open("wb") as out:
        started = time.time()
        process = subprocess.Popen(
            command, cwd=CODE["dir"], env=code_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    pid = process.pid
    sampler = Sampler({"self": pid, **(watch or {})}, trees=frozenset({"self"} if tree else ()))
    sampler.start()
    # wait4 reaps the child and returns its own rusage (CPU, ru_maxrss); Popen must not poll.
    waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, pid, 0))
    stopped_at: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.5)
            if waiter.done():
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                await asyncio.wait({waiter})
            elif stopped_at is None and stop_when is not None and await stop_when():
                stopped_at = time.time()
                os.kill(pid, signal.SIGTERM)
        _, status, usage = await waiter
    finally:
        await sampler.stop()
    ended = time.time()
    process.returncode = os.waitstatus_to_exitcode(status)
    return ProcRun(
        name=name,
        returncode=process.returncode,
        started=started,
        ended=ended,
        # wait4's rusage is the child's own plus that of the children it reaped (Linux
        # fills it as RUSAGE_BOTH), so a supervisor's total includes its workers'.
        cpu_s=usage.ru_utime + usage.ru_stime,
        # Not usage.ru_maxrss: the kernel folds the parent's RSS at fork/exec time into the
        # child's ru_maxrss, so a harness holding 500 MB would report a 500 MB consumer.
        maxrss_kb=sampler.series["self"].peak_rss_kb(),
        series=sampler.series,
        log=log,
        stopped_at=stopped_at,
    )


# --------------------------------------------------------------------------- the fake server


@dataclass
class Fake:
    """A running fake OpenAI server: its base URL and its pid (to measure its CPU)."""

    url: str
    pid: int


@contextlib.contextmanager
def fake_server(**knobs: Any) -> Iterator[Fake]:
    """``tests.fake_server.fake_openai_server``, but exposing the process id. Benchmark mode
    (``MODSTREAM_FAKE_BENCHMARK``: orjson, cached reply plans, no per-request logging) unless
    the knobs say ``benchmark=False``: a section that needs the fake's faults, rate limits or
    token statistics asks for the full fake."""
    knobs.setdefault("benchmark", True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MODSTREAM_FAKE_")}
    env |= knob_env(knobs)
    env["MODSTREAM_LOG_FORMAT"] = "json"
    command = [sys.executable, "-m", "consumer", "fake-openai", "--port", str(port)]
    origin = f"http://127.0.0.1:{port}"
    ready = functools.partial(_ready, origin)
    with served("fake-openai", command, ready, env=code_env(env), cwd=CODE["dir"]) as process:
        yield Fake(origin + "/v1", process.pid)


# --------------------------------------------------------------------------- the broker


@dataclass
class Broker:
    bootstrap: str
    pid: int | None
    started_in_s: float


@contextlib.contextmanager
def broker(port: int = BENCH_PORT, existing: str | None = None) -> Iterator[Broker]:
    """A clean broker of our own for the run (or ``existing``, started by someone else)."""
    if existing:
        yield Broker(existing, None, 0.0)
        return
    data = (
        ROOT / ".run" / f"kafka-bench-{port}"
        if port != BENCH_PORT
        else ROOT / ".run" / ("kafka-bench")
    )
    data.parent.mkdir(parents=True, exist_ok=True)
    with (data.parent / f"{data.name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another benchmark run holds {data.name}.lock") from None
        run_kafka_sh("down", port, data)  # a broker an interrupted run left behind
        shutil.rmtree(data, ignore_errors=True)
        started = time.monotonic()
        result = run_kafka_sh("up", port, data)
        if result.returncode != 0:
            raise SystemExit(f"benchmark broker did not start:\n{result.stdout}{result.stderr}")
        pid_file = data / "kafka.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        try:
            yield Broker(f"localhost:{port}", pid, time.monotonic() - started)
        finally:
            run_kafka_sh("down", port, data)
            shutil.rmtree(data, ignore_errors=True)


# --------------------------------------------------------------------------- topics and data


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``{name: partitions}`` and wait until every partition has a leader."""
    async with admin_client(bootstrap) as admin:
        await admin.create_topics([NewTopic(n, p, 1) for n, p in topics.items()])
        deadline = time.monotonic() + 30
        while True:
            described = await admin.describe_topics(list(topics))
            if all(
                d.get("error_code") == 0
                and len(d.get("partitions") or []) == topics[d["topic"]]
                and all(p.get("leader", -1) >= 0 for p in d["partitions"])
                for d in described
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after 30 s: {described}")
            await asyncio.sleep(0.05)


async def produce_backlog(bootstrap: str, topic: str, count: int, partitions: int) -> float:
    """Write ``count`` small JSON requests (~110 bytes, no poison) fast; return the seconds.

    Batches are built directly (``create_batch``/``send_batch``): no future per message.
    """
    values = [r.value for r in corpus(count, seed=11, poison_share=0.0)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=50,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    started = time.monotonic()
    async with producer:
        futures = []
        batches = {p: producer.create_batch() for p in range(partitions)}
        for i, value in enumerate(values):
            p = i % partitions
            if batches[p].append(timestamp=None, key=None, value=value) is None:
                futures.append(await producer.send_batch(batches[p], topic, partition=p))
                batches[p] = producer.create_batch()
                batches[p].append(timestamp=None, key=None, value=value)
        for p, batch in batches.items():
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    return time.monotonic() - started


async def count_records(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (sum of end offsets; our topics are never truncated)."""
    partitions = await topic_partitions({"bootstrap_servers": bootstrap}, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    async with consumer:
        ends = await consumer.end_offsets(partitions)
    return sum(ends.values())


async def read_records(
    bootstrap: str, topic: str, *, values: bool = True
) -> list[tuple[int, bytes | None]]:
    """Every record's (timestamp ms, value) up to the end offsets seen at call time."""
    records = read_topics(
        {"bootstrap_servers": bootstrap},
        [topic],
        isolation_level="read_uncommitted",
        max_records=20_000,
        fetch_max_bytes=16 << 20,
    )
    return [(r.timestamp, r.value if values else None) async for r in records]


def steady_window(stamps_ms: list[int], trim: float = 0.05) -> tuple[float, float, int]:
    """(start s, end s, records inside) of the steady-state window: the 5th to 95th
    percentile of completion times, which leaves out start-up ramp and the final drain."""
    stamps = sorted(stamps_ms)
    if len(stamps) < 3:
        raise ValueError("too few records to find a steady state")
    first = int(len(stamps) * trim)
    last = len(stamps) - 1 - first
    return stamps[first] / 1000, stamps[last] / 1000, last - first


def modstream_env(
    bootstrap: str, base_url: str, name: str, input_topic: str, **settings: object
) -> dict[str, str]:
    """MODSTREAM_* variables for a run named ``name``: its own outputs and group."""
    env = {
        "MODSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MODSTREAM_INPUT_TOPIC": input_topic,
        "MODSTREAM_VERDICT_TOPIC": f"{name}.verdicts",
        "MODSTREAM_USAGE_TOPIC": f"{name}.usage",
        "MODSTREAM_DLQ_TOPIC": f"{name}.dlq",
        "MODSTREAM_GROUP_ID": f"{name}.group",
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "sk-bench-not-a-real-key",
        "MODSTREAM_LOG_FORMAT": "json",
    }
    env |= {f"MODSTREAM_{k.upper()}": str(v) for k, v in settings.items()}
    return clean_env(env)


def output_topics(name: str) -> dict[str, int]:
    return {f"{name}.verdicts": 3, f"{name}.usage": 3, f"{name}.dlq": 1}


class OutputWatch:
    """Counts a topic's records through one long-lived client; notes when the first arrived."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 3) -> None:
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        self.first: float | None = None

    async def __aenter__(self) -> OutputWatch:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def count(self) -> int:
        ends = await self.consumer.end_offsets(self.tps)
        return int(sum(ends.values()))

    def after_first(self, seconds: float) -> Callable[[], Awaitable[bool]]:
        """A ``stop_when``: true ``seconds`` after the first record appeared."""

        async def check() -> bool:
            if self.first is None and await self.count() > 0:
                self.first = time.monotonic()
            return self.first is not None and time.monotonic() - self.first >= seconds

        return check
