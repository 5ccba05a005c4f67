"""progress: the figures come from Metrics.totals(), the rate is per interval on the loop's
clock, an idle consumer writes no repeated line, and the line is short on a terminal and a
``progress`` JSON log line otherwise."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog
from aiokafka import TopicPartition

from consumer.app import Summary, summary
from consumer.errors import RateLimited
from consumer.ops.logs import configure_logging
from consumer.ops.metrics import Metrics, Totals
from consumer.ops.progress import (
    Progress,
    on_terminal,
    progress,
    progress_lines,
    render,
    report,
    write_line,
)
from consumer.settings import LogFormat, Settings
from schemas import UsageEvent, UsageOutcome
from tests.unit.ops.test_metrics import usage
from tests.unit.virtual_time import VirtualTimeLoop, on_virtual_time

pytestmark = pytest.mark.timeout(60)


def call(**fields: Any) -> UsageEvent:
    return usage(UsageOutcome.OK, **fields)


def test_totals_reads_every_figure_and_summary_agrees() -> None:
    metrics = Metrics()
    assert metrics.totals() == Totals(0, 0, 0, 0, 0, 0, 0, 0.0, 0)
    for _ in range(5):
        metrics.fetched()
    for _ in range(3):
        metrics.verdict()
    metrics.dead_letter("decode", "decode")
    metrics.model_call(call(prompt_tokens=100, completion_tokens=20, cached_tokens=64))
    metrics.model_call(call(prompt_tokens=50, completion_tokens=5, cached_tokens=0))
    metrics.retry(RateLimited("429"))
    metrics.lag(TopicPartition("in", 0), 40)
    metrics.lag(TopicPartition("in", 1), 2)
    metrics.watch_in_flight(lambda: 7)
    metrics.commit(0.01)
    metrics.commit(0.02)

    totals = metrics.totals()

    assert totals.cost_usd == pytest.approx(0.0004)
    assert totals._replace(cost_usd=0.0) == Totals(
        fetched=5,
        verdicts=3,
        dead_letters=1,
        commits=2,
        in_flight=7,
        lag=42,
        tokens=175,  # prompt + completion; cached tokens are part of prompt
        cost_usd=0.0,
        retries=1,
    )
    assert totals.processed == 4
    assert summary(metrics) == Summary(fetched=5, verdicts=3, dead_letters=1, commits=2)
    metrics.forget([TopicPartition("in", 0)])
    assert metrics.totals().lag == 2, "a revoked partition's lag is no longer ours"


def test_the_terminal_line() -> None:
    line = Progress(1234, 41.25, 64, 12345, 3, 1_234_567, 0.01234)
    assert render(line) == (
        "progress: 1,234 done, 41.2 msg/s, 64 in flight, lag 12,345, 3 dead letters, "
        "1,234,567 tokens, $0.0123"
    )
    assert "12.35M tokens" in render(line._replace(tokens=12_345_678))


def test_the_rate_is_messages_finished_since_the_last_line() -> None:
    before = Totals(10, 8, 1, 0, 0, 0, 0, 0.0, 0)
    now = Totals(40, 30, 4, 0, 6, 9, 500, 0.5, 0)
    assert progress(now, before, 5.0) == Progress(34, 5.0, 6, 9, 4, 500, 0.5)
    assert progress(now, before, 0.0).rate == 0.0


def test_a_line_every_interval_on_the_loops_clock_and_none_repeated_when_idle() -> None:
    lines: list[tuple[float, Progress]] = []

    async def play(loop: VirtualTimeLoop) -> None:
        metrics = Metrics()
        in_flight = [0]
        metrics.watch_in_flight(lambda: in_flight[0])
        task = asyncio.create_task(
            report(metrics, 10.0, lambda line: lines.append((loop.time(), line)))
        )
        await asyncio.sleep(5)
        for _ in range(50):
            metrics.verdict()
        in_flight[0] = 3
        await asyncio.sleep(10)  # t=15: one line (t=10) so far
        for _ in range(20):
            metrics.verdict()
        metrics.dead_letter("decode", "decode")
        in_flight[0] = 0
        await asyncio.sleep(60)  # t=75: lines at 20, then 30 (rate 0, differs), then silence
        in_flight[0] = 1  # busy again, though no count moved: a line says so
        await asyncio.sleep(10)
        task.cancel()

    on_virtual_time(play)

    assert [(at, line.processed, line.rate, line.in_flight) for at, line in lines] == [
        (10.0, 50, 5.0, 3),
        (20.0, 71, 2.1, 0),
        (30.0, 71, 0.0, 0),
        (80.0, 71, 0.0, 1),
    ]


def settings(**overrides: Any) -> Settings:
    return Settings(**({"log_format": LogFormat.JSON} | overrides))


def test_off_the_terminal_a_progress_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings())

    async def play(loop: VirtualTimeLoop) -> None:
        metrics = Metrics()
        async with progress_lines(settings(progress_interval_s=2), metrics):
            metrics.verdict()
            metrics.model_call(
                call(prompt_tokens=90, completion_tokens=10, cost_usd=0.000123456789)
            )
            metrics.lag(TopicPartition("in", 3), 17)
            await asyncio.sleep(3)

    on_virtual_time(play)

    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    (record,) = [r for r in records if r["event"] == "progress"]
    assert record["level"] == "info"
    assert {k: record[k] for k in Progress._fields} == {
        "processed": 1,
        "rate": 0.5,
        "in_flight": 0,
        "lag": 17,
        "dead_letters": 0,
        "tokens": 100,
        "cost_usd": 0.000123,
    }


def test_interval_zero_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings())

    async def play(loop: VirtualTimeLoop) -> None:
        metrics = Metrics()
        async with progress_lines(settings(progress_interval_s=0), metrics):
            metrics.verdict()
            await asyncio.sleep(100)
            assert len(asyncio.all_tasks()) == 1, "no progress task: only this one"

    on_virtual_time(play)
    assert "progress" not in capsys.readouterr().err


def test_the_terminal_form_only_on_a_terminal_not_forced_to_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tty = [True]
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty[0])
    assert on_terminal(settings(log_format=LogFormat.AUTO))
    assert on_terminal(settings(log_format=LogFormat.CONSOLE))
    assert not on_terminal(settings(log_format=LogFormat.JSON))
    tty[0] = False
    assert not on_terminal(settings(log_format=LogFormat.AUTO))


def test_a_workers_terminal_line_names_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    line = Progress(1, 0.1, 0, 0, 0, 0, 0.0)
    write_line(line)
    structlog.contextvars.bind_contextvars(worker=2)
    write_line(line)
    first, second = capsys.readouterr().err.splitlines()
    assert first == render(line)
    assert second == f"[worker 2] {render(line)}"
