"""``modstream consume --workers 2`` end to end: the real broker, the fake model over HTTP, the
supervisor and its workers as real processes, and the supervisor's one operations port.

- A worker SIGKILLed mid-run is restarted (a new pid, a restart counted in /metrics) and
  nothing is lost: every input offset has a verdict, the group's commits reach the end.
- The supervisor's /metrics merges both workers (a ``worker`` label, HELP/TYPE once) and its
  /readyz is 200 once every worker owns partitions; SIGTERM stops every worker, exit 0.
- ``--exit-when-idle``: the supervisor exits 0 once every worker has.
- A worker's configuration error (exit 2) stops the whole group with exit 2, no restart loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    Run,
    clean_values,
    expected_offsets,
    new_run,
    outcomes_per_offset,
    until,
)
from tests.fake_server import fake_openai_server, free_port

pytestmark = pytest.mark.timeout(420)

MAX_IN_FLIGHT = 64


class Lines:
    """The supervisor's stderr (its lines and its workers'), read as it comes, JSON parsed."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self.raw: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.raw.append(line.decode(errors="replace"))

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in list(self.raw):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found

    def pids(self, worker: int) -> list[int]:
        """Every pid worker ``worker`` has had, in start order."""
        return [int(e["pid"]) for e in self.events("worker started") if e["worker"] == worker]

    def tail(self) -> str:
        return "".join(self.raw[-60:])


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def get(session: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str] | None:
    try:
        async with session.get(url, headers=headers) as response:
            return response.status, await response.text()
    except aiohttp.ClientConnectionError:
        return None


def spawn_workers(run: Run, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return run.spawn(
        "--workers",
        "2",
        *args,
        MODSTREAM_CONCURRENCY="8",
        MODSTREAM_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
        MODSTREAM_SHUTDOWN_GRACE_S="10",
        **env,
    )


async def test_a_sigkilled_worker_is_restarted_and_nothing_is_lost(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=40, latency_dist="exponential", seed=21) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(3000))
        ends = await run.end_offsets()
        total = sum(ends.values())
        assert total == 3000
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        process = spawn_workers(
            run, MODSTREAM_METRICS_PORT=str(port), MODSTREAM_METRICS_HOST="127.0.0.1"
        )
        lines = Lines(process)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:

            def running() -> None:
                assert process.poll() is None, lines.tail()

            async def committed() -> int:
                return sum(max(0, o) for o in (await run.committed()).values())

            async def all_ready_and_working() -> bool:
                running()
                answer = await get(session, origin + "/readyz")
                return answer is not None and answer[0] == 200 and await committed() >= 300

            await until("both workers ready and the first verdicts", all_ready_and_working)
            # Mid-run: some verdicts committed, not all.
            done_at_kill = await committed()
            assert done_at_kill < total, "the run finished before the kill; slow the fake down"
            (victim,) = lines.pids(0)
            assert parent_of(victim) == process.pid, "worker 0 must be the supervisor's child"
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> bool:
                running()
                return len(lines.pids(0)) == 2

            await until("worker 0 restarted", restarted, within=60)
            replacement = lines.pids(0)[1]
            assert replacement != victim
            died = lines.events("worker died; restarting")
            assert [(e["worker"], e["code"]) for e in died] == [(0, -signal.SIGKILL)]

            async def all_committed() -> bool:
                running()
                return await run.committed() == ends

            await until("every offset committed", all_committed, within=240)

            async def ready_again() -> bool:
                answer = await get(session, origin + "/readyz")
                return answer is not None and answer[0] == 200

            await until("both workers ready again", ready_again, within=90)
            answer = await get(session, origin + "/readyz")
            assert answer is not None
            body = json.loads(answer[1])
            assert body == {"status": "ready", "workers": {"0": "ready", "1": "ready"}}
            health = await get(session, origin + "/healthz")
            assert health is not None and health[0] == 200

            scrape = await get(session, origin + "/metrics")
            assert scrape is not None and scrape[0] == 200
            text = scrape[1]
            assert text.count("# TYPE modstream_messages_processed_total counter") == 1
            samples = {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            restarts = {
                dict(labels)["worker"]: value
                for (name, labels), value in samples.items()
                if name == "modstream_worker_restarts_total"
            }
            assert restarts == {"0": 1.0, "1": 0.0}
            verdicts_by_worker = {
                dict(labels)["worker"]: value
                for (name, labels), value in samples.items()
                if name == "modstream_messages_processed_total"
                and dict(labels).get("outcome") == "verdict"
            }
            assert set(verdicts_by_worker) == {"0", "1"}
            assert verdicts_by_worker["1"] > 0
            openmetrics = await get(
                session, origin + "/metrics", Accept="application/openmetrics-text; version=1.0.0"
            )
            assert openmetrics is not None and openmetrics[0] == 200
            assert openmetrics[1].rstrip().endswith("# EOF")
            assert 'modstream_worker_up{worker="0"} 1.0' in openmetrics[1]

            # A clean stop: SIGTERM reaches both workers, the supervisor exits 0.
            current = [lines.pids(0)[-1], lines.pids(1)[-1]]
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 60)
            assert process.returncode == 0, lines.tail()
            assert all(gone(pid) for pid in current), "a worker outlived its supervisor"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            await session.close()

        summary = await run.outputs()
        seen = outcomes_per_offset(summary)
        want = expected_offsets(ends)
        missing = want - set(seen)
        assert not missing, f"{len(missing)} input offsets have no verdict or dead letter"
        assert set(seen) <= want
        # At least once: the killed worker's window (and a rebalance's) may be redone.
        assert sum(n - 1 for n in seen.values()) <= 2 * MAX_IN_FLIGHT
        assert summary.dead_letters == []
        assert len(lines.events("stop requested; stopping the workers")) == 1
        # One stream, three processes: every line whole (JSON), each worker's lines say which.
        unreadable = [line for line in lines.raw if not line.startswith("{")]
        assert not unreadable, unreadable[:5]
        assert {e.get("worker") for e in lines.events("consuming")} == {0, 1}


async def test_exit_when_idle_exits_zero_once_every_worker_has(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=5, seed=22) as url:
        run = new_run(kafka_bootstrap, url, partitions=4)
        await run.create_topics()
        await run.produce(clean_values(300))
        process = spawn_workers(run, "--exit-when-idle", "3")
        _, stderr = await asyncio.to_thread(process.communicate, timeout=180)
        text = stderr.decode(errors="replace")
        assert process.returncode == 0, text[-3000:]
        assert "worker died" not in text
        ends = await run.end_offsets()
        assert await run.committed() == ends
        seen = outcomes_per_offset(await run.outputs())
        assert set(seen) == expected_offsets(ends)


async def test_a_worker_config_error_stops_the_group_with_exit_2(kafka_bootstrap: str) -> None:
    with fake_openai_server(seed=23) as url:
        run = new_run(kafka_bootstrap, url)  # its topics are never created
        process = spawn_workers(run)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)
    text = stderr.decode(errors="replace")
    assert process.returncode == 2, text[-3000:]
    assert "topics do not exist" in text
    assert "worker died" not in text, "a configuration error must not be restarted"
