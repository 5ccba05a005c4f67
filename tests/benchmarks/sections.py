"""The benchmark sections. Each returns plain data (JSON-able dicts) for the report.

Throughput is always read back from the broker: the Kafka timestamps of the verdicts a run
wrote (the producer stamps a record when it is sent). A run's steady-state window runs from its
5th to its 95th percentile verdict, among the verdicts written before we stopped it, so the
consumer's start-up, group join, ramp and final drain are left out. CPU per message is the
CPU a process used inside that window divided by the verdicts inside it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from consumer.testing.fake_openai.admin import FakeAdmin
from tests.benchmarks.batching import batching
from tests.benchmarks.infra import (
    MACHINE,
    Broker,
    Fake,
    OutputWatch,
    ProcRun,
    clean_env,
    count_records,
    create_topics,
    fake_server,
    modstream_env,
    output_topics,
    produce_backlog,
    read_records,
    run_process,
    steady_window,
)
from tests.benchmarks.ordering import ordering
from tests.benchmarks.shadow import shadow
from tests.benchmarks.speed import speed

CONSUME = [sys.executable, "-m", "consumer", "consume", "--exit-when-idle", "3"]
BASELINES = [sys.executable, "-m", "tests.benchmarks.baselines"]
INPUT_PARTITIONS = 6


@dataclass
class Options:
    """Sizes of a run: the full one, or ``--quick`` (a smoke run of the same code paths)."""

    quick: bool = False
    budget_s: float = 13.5 * 60
    latency_ms: float = 200.0
    concurrencies: tuple[int, ...] = (16, 64, 256)
    point_s: float = 15.0
    sequential_messages: int = 100
    overhead_backlog: int = 100_000
    overhead_s: float = 15.0
    profile_s: float = 15.0
    memory_small: int = 20_000
    memory_big: int | None = None  # None: the largest that fits in the budget, up to 500,000
    memory_big_max: int = 500_000
    tpm: int = 300_000
    tpm_s: float = 40.0
    tpm_backlog: int = 3_000

    @classmethod
    def quick_run(cls) -> Options:
        return cls(
            quick=True,
            budget_s=5 * 60,
            point_s=5.0,
            sequential_messages=15,
            overhead_backlog=20_000,
            overhead_s=6.0,
            profile_s=6.0,
            memory_small=2_000,
            memory_big=10_000,
            tpm=150_000,
            tpm_s=15.0,
            tpm_backlog=1_000,
        )


@dataclass
class Bench:
    """The run's shared state: broker, options, clock and results so far."""

    broker: Broker
    options: Options
    started: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    async def backlog(self, topic: str, count: int) -> float:
        """Create ``topic`` and fill it with ``count`` requests; return the seconds it took."""
        await create_topics(self.broker.bootstrap, {topic: INPUT_PARTITIONS})
        seconds = await produce_backlog(self.broker.bootstrap, topic, count, INPUT_PARTITIONS)
        self.say(f"produced {count:,} messages to {topic} in {seconds:.1f}s")
        return seconds

    def watch(self, fake: Fake | None) -> dict[str, int]:
        pids = {"machine": MACHINE}
        if self.broker.pid:
            pids["broker"] = self.broker.pid
        if fake is not None:
            pids["fake"] = fake.pid
        return pids

    async def modstream(
        self,
        name: str,
        input_topic: str,
        fake: Fake,
        *,
        run_for: float | None = None,
        stop_at: float | None = None,
        profile: Path | None = None,
        timeout: float = 900.0,
        **settings: object,
    ) -> Measured:
        """Run ``modstream consume`` as a process: to the end of the backlog (idle 3 s), or
        ``run_for`` seconds after its first verdict, or until ``stop_at`` (monotonic clock);
        then SIGTERM. With ``workers`` > 1 among the settings, CPU and RSS are the process
        tree's (the supervisor and its workers)."""
        await create_topics(self.broker.bootstrap, output_topics(name))
        env = modstream_env(self.broker.bootstrap, fake.url, name, input_topic, **settings)
        command = CONSUME
        if profile is not None:
            command = [
                sys.executable,
                "-m",
                "pyinstrument",
                "-r",
                "pyisession",
                "-o",
                str(profile),
                *CONSUME[1:],
            ]
        async with OutputWatch(self.broker.bootstrap, f"{name}.verdicts") as watch:
            after_first = watch.after_first(run_for) if run_for is not None else None

            async def stop() -> bool:
                if stop_at is not None and time.monotonic() >= stop_at:
                    return True
                return after_first is not None and await after_first()

            run = await run_process(
                name,
                command,
                env,
                watch=self.watch(fake),
                stop_when=stop,
                timeout=timeout,
                tree=int(str(settings.get("workers", 1))) > 1,
            )
        if run.returncode != 0:
            self.failures.append(f"{name}: exit {run.returncode}\n{run.tail()}")
        verdicts = await read_records(self.broker.bootstrap, f"{name}.verdicts", values=False)
        return measure(run, [t for t, _ in verdicts])

    async def baseline(
        self, kind: str, name: str, input_topic: str, fake: Fake | None, *extra: str
    ) -> Measured:
        """Run a baseline (``sequential`` or ``passthrough``) to the end of the backlog."""
        output = f"{name}.out"
        await create_topics(self.broker.bootstrap, {output: 3})
        command = [
            *BASELINES,
            kind,
            "--bootstrap",
            self.broker.bootstrap,
            "--input",
            input_topic,
            "--output",
            output,
            "--group",
            f"{name}.group",
            *extra,
        ]
        run = await run_process(name, command, clean_env({}), watch=self.watch(fake))
        if run.returncode != 0:
            self.failures.append(f"{name}: exit {run.returncode}\n{run.tail()}")
        stamps = [t for t, _ in await read_records(self.broker.bootstrap, output, values=False)]
        return measure(run, stamps)


@dataclass
class Measured:
    """One run's figures, in its steady-state window."""

    name: str
    outputs: int  # verdicts written in total
    in_window: int
    window_s: float
    rate: float  # msg/s in the window
    cpu_us: dict[str, float]  # CPU microseconds per message, by process
    cores: dict[str, float]  # cores busy on average in the window, by process (+ machine)
    maxrss_mb: float
    wall_s: float
    cpu_total_s: float
    returncode: int
    stopped: bool
    window: tuple[float, float]
    stamps: list[int] = field(default_factory=list, repr=False)
    run: ProcRun | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        skip = {"stamps", "run"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def measure(run: ProcRun, stamps: list[int]) -> Measured:
    """Throughput, CPU per message and cores busy in ``run``'s steady-state window."""
    before_stop = [s for s in stamps if run.stopped_at is None or s / 1000 <= run.stopped_at]
    if len(before_stop) < 3:
        return Measured(
            run.name, len(stamps), 0, 0.0, 0.0, {}, {}, run.maxrss_kb / 1024, run.wall_s,
            run.cpu_s, run.returncode, run.stopped_at is not None, (0.0, 0.0), stamps, run,
        )  # fmt: skip
    t0, t1, n = steady_window(before_stop)
    span = max(t1 - t0, 1e-3)
    cpu = {name: series.cpu_between(t0, t1) for name, series in run.series.items()}
    processes = {name: c for name, c in cpu.items() if name != "machine"}
    cores = {name: c / span for name, c in cpu.items()}
    if "machine" in cores:
        cores["others"] = max(0.0, cores["machine"] - sum(c / span for c in processes.values()))
    return Measured(
        name=run.name,
        outputs=len(stamps),
        in_window=n,
        window_s=span,
        rate=n / span,
        cpu_us={name: c / max(n, 1) * 1e6 for name, c in processes.items()},
        cores=cores,
        maxrss_mb=run.maxrss_kb / 1024,
        wall_s=run.wall_s,
        cpu_total_s=run.cpu_s,
        returncode=run.returncode,
        stopped=run.stopped_at is not None,
        window=(t0, t1),
        stamps=stamps,
        run=run,
    )


# --------------------------------------------------------------------------- 1 and 2


async def latency_point(bench: Bench, fake: Fake, concurrency: int) -> Measured:
    """modstream at concurrency C against the slow fake, for ``point_s`` of verdicts."""
    cache = bench.results.setdefault("_latency_points", {})
    if concurrency in cache:
        return cache[concurrency]  # type: ignore[no-any-return]
    opts = bench.options
    ideal = concurrency / (opts.latency_ms / 1000)
    # Enough that the backlog never runs dry within the window, even at the ideal rate.
    count = math.ceil(ideal * (opts.point_s + 8) * 1.25)
    topic = f"lat-c{concurrency}.in"
    await bench.backlog(topic, count)
    measured = await bench.modstream(
        f"lat-c{concurrency}",
        topic,
        fake,
        run_for=opts.point_s,
        concurrency=concurrency,
        # The window holds a message from fetch to commit: its call (L on average, longer
        # for the slowest of a partition's run), then up to a commit interval (1 s) until
        # its offset commits. C/L messages a second for ~L + 1 s need a window of about
        # C/L x (L + 1 s) = 6C at L = 200 ms; at 2C the window, not the calls, was the bound.
        max_in_flight=max(256, 6 * concurrency),
    )
    bench.say(
        f"C={concurrency}: {measured.rate:.1f} msg/s = {measured.rate / ideal:.3f} of C/L "
        f"({measured.in_window} verdicts in {measured.window_s:.1f}s)"
    )
    cache[concurrency] = measured
    return measured


def _slow_fake(bench: Bench) -> Any:
    return fake_server(latency_ms=bench.options.latency_ms, latency_dist="exponential")


async def latency(bench: Bench) -> dict[str, Any]:
    """1. Latency-bound: achieved msg/s against Little's law C/L."""
    opts = bench.options
    points = []
    with _slow_fake(bench) as fake:
        for c in opts.concurrencies:
            m = await latency_point(bench, fake, c)
            ideal = c / (opts.latency_ms / 1000)
            points.append({"concurrency": c, "ideal": ideal, "ratio": m.rate / ideal, **m.public()})
    return {"latency_ms": opts.latency_ms, "points": points}


async def sequential(bench: Bench) -> dict[str, Any]:
    """2. The seed's one-at-a-time consumer, and modstream at C=64 on the same fake."""
    opts = bench.options
    n = opts.sequential_messages
    with _slow_fake(bench) as fake:
        await bench.backlog("seq.in", n)
        seq = await bench.baseline("sequential", "seq", "seq.in", fake, "--base-url", fake.url)
        bench.say(f"sequential: {seq.rate:.2f} msg/s ({seq.outputs} verdicts)")
        ours = await latency_point(bench, fake, 64)
    return {
        "messages": n,
        "sequential": seq.public(),
        "modstream_c64": ours.public(),
        "ratio": ours.rate / seq.rate if seq.rate else math.nan,
        "ideal_sequential": 1000 / opts.latency_ms,
    }


# --------------------------------------------------------------------------- 3


async def overhead(bench: Bench) -> dict[str, Any]:
    """3. Instant model: modstream against a raw pass-through (profiles: ``speed``)."""
    opts = bench.options
    n = opts.overhead_backlog
    topic = "ovh.in"
    with fake_server() as fake:
        produce_s = await bench.backlog(topic, n)
        ours = await bench.modstream("ovh-modstream", topic, fake, run_for=opts.overhead_s)
        bench.say(
            f"modstream, latency 0: {ours.rate:.1f} msg/s, "
            f"{ours.cpu_us.get('self', 0):.0f} us CPU/msg"
        )
        raw = await bench.baseline("passthrough", "ovh-passthrough", topic, None)
        bench.say(f"pass-through: {raw.rate:.0f} msg/s ({raw.outputs:,} records)")
    return {
        "backlog": n,
        "nproc": os.cpu_count(),
        "produce_s": produce_s,
        "modstream": ours.public(),
        "passthrough": raw.public(),
        "ratio": ours.rate / raw.rate if raw.rate else math.nan,
    }


# --------------------------------------------------------------------------- 4


async def _drain(
    bench: Bench, fake: Fake, name: str, count: int, stop_at: float | None = None
) -> dict[str, Any]:
    topic = f"{name}.in"
    produce_s = await bench.backlog(topic, count)
    m = await bench.modstream(name, topic, fake, stop_at=stop_at, timeout=bench.options.budget_s)
    dead = await count_records(bench.broker.bootstrap, f"{name}.dlq")
    if not m.stopped and m.outputs + dead != count:
        bench.failures.append(f"{name}: {m.outputs} verdicts + {dead} dead letters != {count}")
    series = m.run.series["self"].samples if m.run else []
    # When the peak (VmHWM) was reached: start-up, while processing, or after the last verdict.
    peak_at = m.run.series["self"].peak_reached_at() if m.run else None
    phase = "unknown"
    if peak_at is not None and m.stamps and m.run:
        first, last = min(m.stamps) / 1000, max(m.stamps) / 1000
        phase = (
            "start-up (before the first verdict)"
            if peak_at < first
            else "processing"
            if peak_at <= last + 0.3
            else "shutdown (after the last verdict)"
        )
        peak_at -= m.run.started
    # RSS once the first ``small`` messages were done, to tell a leak from a plateau.
    marks = {}
    stamps = sorted(m.stamps)
    for k in (1, bench.options.memory_small, len(stamps)):
        if 0 < k <= len(stamps) and series:
            at = stamps[k - 1] / 1000
            before = [s for s in series if s[0] <= at] or series[:1]  # (t, cpu, rss, hwm)
            marks[str(k)] = before[-1][2] / 1024
    done = "stopped at the time budget after" if m.stopped else "drained"
    bench.say(
        f"{name}: {done} {m.outputs:,} of {count:,} in {m.wall_s:.0f}s ({m.rate:.0f} msg/s), "
        f"peak RSS {m.maxrss_mb:.0f} MB ({phase})"
    )
    return {
        "backlog": count,
        "produce_s": produce_s,
        "drain_s": m.wall_s,
        "drained": m.outputs,
        "complete": not m.stopped,
        "rss_mb_after": marks,
        "peak_at_s": peak_at,
        "peak_phase": phase,
        **m.public(),
    }


async def memory(bench: Bench) -> dict[str, Any]:
    """4. Peak RSS draining a small and a large backlog (latency 0, default window)."""
    opts = bench.options
    with fake_server() as fake:
        small = await _drain(bench, fake, "mem-small", opts.memory_small)
        big_n = opts.memory_big
        note = ""
        if big_n is None:
            # What the measured drain rate can finish before the budget (keeping 40 s spare).
            rate = small["rate"] or 1.0
            left = opts.budget_s - bench.elapsed() - 40
            fits = int(rate * max(left - 10, 0) * 0.85) // 10_000 * 10_000
            big_n = max(min(opts.memory_big_max, fits), 2 * opts.memory_small)
            if big_n < opts.memory_big_max:
                note = (
                    f"{opts.memory_big_max:,} messages would take about "
                    f"{opts.memory_big_max / rate / 60:.0f} min to drain at the measured "
                    f"{rate:.0f} msg/s; the largest backlog that fits the 15-minute budget "
                    f"was used: {big_n:,}."
                )
                bench.say(note)
        # Never past the budget: a drain that would overrun is stopped and says so.
        deadline = bench.started + opts.budget_s - 20
        big = await _drain(bench, fake, "mem-big", big_n, stop_at=deadline)
        if not big["complete"]:
            note += (
                f" The drain was stopped at the time budget after {big['drained']:,} of "
                f"{big_n:,} messages (the machine was slower than the small drain predicted)."
            )
    return {
        "small": small,
        "big": big,
        "ratio": big["maxrss_mb"] / small["maxrss_mb"] if small["maxrss_mb"] else math.nan,
        "note": note,
    }


# --------------------------------------------------------------------------- 5


async def tpm(bench: Bench) -> dict[str, Any]:
    """5. A tokens/minute budget L on both sides: achieved tokens/min and 429s."""
    opts = bench.options
    limit = opts.tpm
    name = "tpm"
    with fake_server(
        latency_ms=opts.latency_ms, latency_dist="exponential", tpm=limit, benchmark=False
    ) as fake:
        await bench.backlog(f"{name}.in", opts.tpm_backlog)
        m = await bench.modstream(
            name,
            f"{name}.in",
            fake,
            run_for=opts.tpm_s,
            concurrency=32,
            tpm=limit,
            shutdown_grace_s=2,
        )
        async with FakeAdmin(fake.url) as admin:
            stats = await admin.stats()
    events = []
    for _, value in await read_records(bench.broker.bootstrap, f"{name}.usage"):
        if value is None:
            continue
        e = json.loads(value)
        created = datetime.fromisoformat(e["created_at"]).timestamp()
        events.append((created, e["prompt_tokens"] + e["completion_tokens"], e["outcome"]))
    events.sort()
    end = m.run.stopped_at if m.run and m.run.stopped_at else (events[-1][0] if events else 0)
    events = [e for e in events if e[0] <= end]
    total = 0
    spent_at = None
    for t, tokens, _ in events:
        total += tokens
        if total >= limit:
            spent_at = t
            break
    result: dict[str, Any] = {
        "limit": limit,
        "calls": len(events),
        "rate_limited": sum(1 for e in events if e[2] == "rate_limited"),
        "fake_outcomes": stats.get("by_outcome", {}),
        "verdicts": m.outputs,
    }
    result["share_429"] = result["rate_limited"] / max(len(events), 1)
    if spent_at is None:
        bench.failures.append("tpm: the initial bucket was never spent; run longer")
        return result
    start = spent_at + 5.0
    in_window = [e for e in events if start < e[0] <= end]
    span = end - start
    tokens = sum(e[1] for e in in_window)
    achieved = tokens / span * 60 if span > 0 else math.nan
    result |= {
        "bucket_spent_after_s": spent_at - (events[0][0] if events else spent_at),
        "window_s": span,
        "window_calls": len(in_window),
        "window_429": sum(1 for e in in_window if e[2] == "rate_limited"),
        "achieved_tpm": achieved,
        "share": achieved / limit,
        "tokens_per_call": tokens / max(1, sum(1 for e in in_window if e[1] > 0)),
    }
    bench.say(
        f"tpm: {achieved:,.0f} tokens/min = {achieved / limit:.1%} of {limit:,}; "
        f"429s {result['share_429']:.2%} of {len(events)} calls"
    )
    return result


SECTIONS = {
    "latency": latency,
    "sequential": sequential,
    "overhead": overhead,
    "speed": speed,  # tests/benchmarks/speed.py
    "tpm": tpm,
    "batching": batching,  # tests/benchmarks/batching.py
    "ordering": ordering,  # tests/benchmarks/ordering.py
    "shadow": shadow,  # tests/benchmarks/shadow.py
    "memory": memory,  # last: it sizes its large backlog by the time left
}


async def run_sections(bench: Bench, only: list[str]) -> None:
    for name in only:
        bench.say(f"--- {name}")
        started = time.monotonic()
        try:
            bench.results[name] = await SECTIONS[name](bench)
        except Exception as exc:  # one broken section must not lose the others' figures
            bench.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            bench.say(f"{name} FAILED: {exc!r}")
        bench.results.setdefault("_section_s", {})[name] = time.monotonic() - started
    await asyncio.sleep(0)
