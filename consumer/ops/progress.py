"""consume's progress line: what the run has done, every ``MODSTREAM_PROGRESS_INTERVAL_S``.

Each line says how many messages finished (verdicts and dead letters) and at what rate since
the last line, how many are in flight, the lag over the assigned partitions (as the committer
last read it), the dead letters, and the tokens and cost so far; every figure comes from
:meth:`consumer.ops.metrics.Metrics.totals`, the counts ``/metrics`` serves. On a terminal it is
one short line on stderr; otherwise a ``progress`` log line with the same figures, JSON like
every other line. A line that would repeat the last one exactly (idle, nothing in flight) is
left out, so a quiet consumer does not fill its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import structlog

from consumer.ops.metrics import Metrics, Totals
from consumer.settings import LogFormat, Settings

log = structlog.get_logger(__name__)


class Progress(NamedTuple):
    """One progress line's figures."""

    processed: int
    rate: float  # messages finished per second since the last line
    in_flight: int
    lag: int
    dead_letters: int
    tokens: int
    cost_usd: float


def progress(now: Totals, before: Totals, elapsed_s: float) -> Progress:
    """The line for ``now``, ``elapsed_s`` seconds after the line of ``before``."""
    done = now.processed - before.processed
    return Progress(
        processed=now.processed,
        rate=done / elapsed_s if elapsed_s > 0 else 0.0,
        in_flight=now.in_flight,
        lag=now.lag,
        dead_letters=now.dead_letters,
        tokens=now.tokens,
        cost_usd=now.cost_usd,
    )


def _compact(n: int) -> str:
    """1234 -> 1,234; 1234567 -> 1.23M (tokens grow large quickly)."""
    return f"{n / 1e6:.2f}M" if n >= 10_000_000 else f"{n:,}"


def render(line: Progress) -> str:
    """The terminal form: one short line a person reads at a glance."""
    return (
        f"progress: {line.processed:,} done, {line.rate:,.1f} msg/s, "
        f"{line.in_flight:,} in flight, lag {line.lag:,}, "
        f"{line.dead_letters:,} dead letters, {_compact(line.tokens)} tokens, "
        f"${line.cost_usd:,.4f}"
    )


def on_terminal(settings: Settings) -> bool:
    """Whether the progress line is the terminal form: stderr is a TTY and the logs are not
    forced to JSON (the same choice :func:`consumer.ops.logs.configure_logging` makes)."""
    return sys.stderr.isatty() and settings.log_format is not LogFormat.JSON


def write_line(line: Progress) -> None:
    """The terminal form on stderr, one ``write`` (lines of ``--workers`` never interleave);
    a worker's line says which worker it is, as its log lines do."""
    worker = structlog.contextvars.get_contextvars().get("worker")
    prefix = "" if worker is None else f"[worker {worker}] "
    sys.stderr.write(f"{prefix}{render(line)}\n")
    sys.stderr.flush()


def log_line(line: Progress) -> None:
    """The structured form: a ``progress`` log line carrying every figure."""
    rounded = {"rate": round(line.rate, 2), "cost_usd": round(line.cost_usd, 6)}
    log.info("progress", **line._asdict() | rounded)


async def report(
    metrics: Metrics,
    interval_s: float,
    emit: Callable[[Progress], None],
    *,
    since: tuple[Totals, float] | None = None,
    clock: Callable[[], float] | None = None,
) -> None:
    """Emit a progress line every ``interval_s`` seconds, until cancelled.

    ``clock`` (the running loop's time by default) measures the rate's interval; ``since``:
    the totals the first line's rate counts from, and when they were read (default: now).
    """
    time = clock or asyncio.get_running_loop().time
    before, then = since or (metrics.totals(), time())
    last: Progress | None = None
    while True:
        await asyncio.sleep(interval_s)
        now, at = metrics.totals(), time()
        line = progress(now, before, at - then)
        if line != last or line.in_flight:
            emit(line)
        before, then, last = now, at, line


@contextlib.asynccontextmanager
async def progress_lines(settings: Settings, metrics: Metrics) -> AsyncIterator[None]:
    """Write progress lines while the block runs (none when the interval is 0)."""
    if not settings.progress_interval_s:
        yield
        return
    emit = write_line if on_terminal(settings) else log_line
    since = metrics.totals(), asyncio.get_running_loop().time()  # the block's start, not the task's
    task = asyncio.create_task(
        report(metrics, settings.progress_interval_s, emit, since=since), name="progress"
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
