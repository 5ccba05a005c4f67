"""consume's progress line and ``modstream top``, end to end: the real ``modstream consume``
on a backlog (the real broker, the fake model over HTTP), and the real ``modstream top``
against its operations port.

- With a short ``MODSTREAM_PROGRESS_INTERVAL_S``, ``progress`` log lines appear while the
  backlog drains; their counts never go back and end at the backlog's size; tokens and cost
  grow with them; the lag they report is the backlog's at most.
- ``top --once`` shows every input partition's lag and a non-zero processed count.
- ``top`` against a port nothing listens on exits 2 with one line and no traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.harness import ROOT, Consumer, Endpoints, clean_values, new_run, until
from tests.fake_server import fake_openai_server, free_port

pytestmark = pytest.mark.timeout(300)

MESSAGES = 400
PARTITIONS = 4


def top(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``modstream top`` (wide enough that no table row wraps)."""
    return subprocess.run(
        [sys.executable, "-m", "consumer", "top", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def progress_lines(consumer: Consumer) -> list[dict[str, Any]]:
    return consumer.logs.events("progress")


async def test_progress_lines_while_a_backlog_drains_and_top_shows_it(
    kafka_bootstrap: str,
) -> None:
    # The fake's latency and two concurrent calls make the backlog take many progress
    # intervals to drain, so lines in the middle of it exist to be seen.
    with fake_openai_server(latency_ms=40, seed=3) as url:
        run = new_run(kafka_bootstrap, url, partitions=PARTITIONS)
        await run.create_topics()
        await run.produce(clean_values(MESSAGES))
        port = free_port()
        ops = Endpoints(port)
        consumer = run.start(
            MODSTREAM_METRICS_PORT=str(port),
            MODSTREAM_METRICS_HOST="127.0.0.1",
            MODSTREAM_PROGRESS_INTERVAL_S="0.5",
            MODSTREAM_CONCURRENCY="2",
        )
        try:

            async def midway_line() -> bool:
                return any(0 < p["processed"] < MESSAGES for p in progress_lines(consumer))

            await until(
                "a progress line in the middle of the backlog",
                midway_line,
                unless=consumer.exited,
                context=consumer.tail,
            )

            async def lag_of_every_partition_and_some_processed() -> bool:
                scrape = await ops.scrape()
                return (
                    len(scrape.series("modstream_consumer_lag")) == PARTITIONS
                    and scrape.total("modstream_messages_processed_total") > 0
                )

            await until(
                "lag reported for every partition",
                lag_of_every_partition_and_some_processed,
                unless=consumer.exited,
                context=consumer.tail,
            )
            shown = await asyncio.to_thread(
                top, "--once", "--metrics-url", f"http://127.0.0.1:{port}"
            )
            assert shown.returncode == 0, shown.stderr
            lag_rows = re.findall(rf"{re.escape(run.input_topic)}\W+(\d+)\W+([\d,]+)", shown.stdout)
            assert sorted(int(p) for p, _ in lag_rows) == list(range(PARTITIONS)), shown.stdout
            done = re.search(r"processed\s+([\d,]+) \(", shown.stdout)
            assert done is not None, shown.stdout
            assert 0 < int(done.group(1).replace(",", "")) <= MESSAGES
            assert re.search(r"rate\s+[\d,.]+ msg/s", shown.stdout), shown.stdout
            assert re.search(r"circuit\s+closed", shown.stdout), shown.stdout

            async def all_done() -> bool:
                lines = progress_lines(consumer)
                return bool(lines) and lines[-1]["processed"] == MESSAGES

            await until(
                "a progress line with every message done",
                all_done,
                unless=consumer.exited,
                context=consumer.tail,
            )
        finally:
            assert await consumer.stop() == 0, consumer.tail()
            await ops.close()

    lines = progress_lines(consumer)
    processed = [p["processed"] for p in lines]
    assert processed == sorted(processed), f"counts never go back: {processed}"
    assert len(set(processed)) >= 3, f"counts grew line by line: {processed}"
    tokens = [p["tokens"] for p in lines]
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0] >= 0
    assert lines[-1]["cost_usd"] > 0
    assert all(p["dead_letters"] == 0 for p in lines), "clean input, no dead letters"
    assert all(0 <= p["lag"] <= MESSAGES for p in lines)
    assert all(0 <= p["in_flight"] <= MESSAGES for p in lines)
    assert any(p["rate"] > 0 for p in lines)
    assert all(p["level"] == "info" and "timestamp" in p for p in lines), "structlog lines"
    stopped = consumer.logs.events("stopped")[-1]
    assert stopped["verdicts"] == MESSAGES


def test_top_against_a_closed_port_is_one_line_and_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    answer = top("--once", "--metrics-url", url)
    assert answer.returncode == 2, answer
    assert answer.stdout == ""
    (line,) = answer.stderr.splitlines()
    assert line.startswith(f"modstream: cannot reach {url}/metrics: "), line
    assert "Traceback" not in answer.stderr
