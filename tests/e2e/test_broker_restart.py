"""A broker restart under a running consumer: quiet, cheap, and nothing lost.

The broker is this module's own (not the session's, which other tests share): started through
``deploy/kafka/kafka.sh`` with its data in ``.run/kafka-restart-PORT``, stopped for a fixed
outage, and started again on the same data (``kafka.sh up`` formats storage only when the data
dir has none; the test checks the cluster id survives). Its port is below the kernel's
ephemeral range (32768-60999 here): a client that reconnects in a tight loop to a port in that
range can be handed that very port as its source port and connect to itself (TCP
simultaneous open), and then holds the port the restarting broker needs (seen here:
``127.0.0.1:39410 -> 127.0.0.1:39410``, "Address already in use").

The consumer is a real ``modstream consume`` process with JSON logs on stderr, in both
delivery modes. While the broker is down (about 15 s, plus the broker's own start-up when it
comes back) it may write at most ``MAX_LINES`` lines (aiokafka alone writes ~100,000 without
``consumer.ops.logs.RepeatFilter``) and use a fraction of a core. Afterwards every input offset has
a verdict for a read_committed reader and the committed offsets reach the end; in exactly-once
mode, exactly one verdict per offset. The consumer's CPU time while the broker is down is
printed (see the note at the end of the test: it is not cheap yet).

``consumer.ops.metrics.kafka_connected`` (the ``modstream_broker_up`` gauge) is checked against the
same outage on an in-process aiokafka consumer: 1 before, 0 while the broker is down, 1 after.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from consumer.ops.metrics import Metrics, kafka_connected
from tests.e2e.harness import Run, clean_values, expected_offsets, outcomes_per_offset
from tests.fake_server import fake_openai_server
from tests.kafka_script import RUN_DIR, NoFreeSlot, claim_slot, run_kafka_sh

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Below the ephemeral port range, so no reconnecting client can take it (see the docstring).
BASE_PORT = 29500
OUTAGE_S = 15.0
#: Lines the consumer may write from the broker's stop until it has caught up again.
MAX_LINES = 100
MESSAGES = 4000


@dataclass
class Broker:
    port: int
    data: Path

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def kafka_sh(self, command: str) -> subprocess.CompletedProcess[str]:
        result = run_kafka_sh(command, self.port, self.data)
        if result.returncode != 0:
            log = self.data / "kafka.out"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"kafka.sh {command}: {result.stdout}{result.stderr}\n{tail}")
        return result

    def cluster_id(self) -> str:
        meta = (self.data / "kraft" / "meta.properties").read_text()
        return next(line for line in meta.splitlines() if line.startswith("cluster.id="))


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """A fresh broker of this module's own, on a port no client can steal."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert low > BASE_PORT + 50, "the restart broker's port must be below the ephemeral range"
    try:
        port, data, lock = claim_slot(BASE_PORT, lambda p: RUN_DIR / f"kafka-restart-{p}")
    except NoFreeSlot as exc:
        pytest.fail(f"restart broker: {exc}", pytrace=False)
    try:
        shutil.rmtree(data, ignore_errors=True)
        found = Broker(port, data)
        found.kafka_sh("up")
        try:
            yield found
        finally:
            run_kafka_sh("down", port, data)
    finally:
        lock.close()


@dataclass
class Stderr:
    """The consumer's stderr lines, each with the monotonic time it was read."""

    lines: list[tuple[float, bytes]] = field(default_factory=list)

    def follow(self, process: subprocess.Popen[bytes]) -> threading.Thread:
        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                self.lines.append((time.monotonic(), line))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def between(self, start: float, end: float) -> list[bytes]:
        return [line for at, line in list(self.lines) if start <= at <= end]

    def tail(self, n: int = 40) -> str:
        return b"".join(line for _, line in self.lines[-n:]).decode(errors="replace")


def summary(lines: list[bytes]) -> str:
    """The most frequent (logger, event) pairs, to show what flooded."""
    seen: Counter[str] = Counter()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            seen[f"(not JSON) {line[:100]!r}"] += 1
            continue
        seen[f"{event.get('logger', '-')}: {str(event.get('event'))[:100]}"] += 1
    return "\n".join(f"{n:6d}  {what}" for what, n in seen.most_common(15))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_for(
    condition: Callable[[], Awaitable[bool]], what: str, *, timeout: float, alive: Callable[[], str]
) -> None:
    """Poll ``condition`` until true; fail naming ``what`` (and the consumer's last lines)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{alive()}")
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_broker_restart_is_quiet_cheap_and_loses_nothing(
    broker: Broker, delivery: str
) -> None:
    with fake_openai_server(latency_ms=50, seed=31) as url:
        run = Run(broker.bootstrap, url, f"restart-{delivery}-{os.urandom(4).hex()}", 3)
        await run.create_topics()
        await run.produce(clean_values(MESSAGES))
        ends = await run.end_offsets()
        env = {
            "MODSTREAM_DELIVERY": delivery,
            "MODSTREAM_TRANSACTIONAL_ID": f"{run.name}-0",
            "MODSTREAM_CONCURRENCY": "16",
            "MODSTREAM_MAX_IN_FLIGHT": "64",
        }
        process = run.spawn(**env)
        stderr = Stderr()
        reader = stderr.follow(process)

        def state() -> str:
            code = process.poll()
            return f"consumer {'running' if code is None else f'exited {code}'}:\n{stderr.tail()}"

        async def committed_total() -> int:
            return sum(max(0, o) for o in (await run.committed()).values())

        # The broker watch: an in-process consumer, as the pipeline's would be, fetching.
        watcher = AIOKafkaConsumer(
            run.input_topic, bootstrap_servers=broker.bootstrap, group_id=f"{run.name}.watch"
        )
        metrics = Metrics()
        await watcher.start()
        metrics.watch_broker(lambda: kafka_connected(watcher))
        polling = asyncio.create_task(_poll_forever(watcher))

        async def broker_up_reads(expected: float) -> bool:
            return metrics.registry.get_sample_value("modstream_broker_up") == expected

        try:
            try:
                # Mid-run: some work committed, most of it still to do.
                await wait_for(
                    lambda: _at_least(committed_total, MESSAGES // 10),
                    "the first commits",
                    timeout=120,
                    alive=state,
                )
                await wait_for(lambda: broker_up_reads(1.0), "broker_up 1", timeout=30, alive=state)
                before = await committed_total()
                assert before < MESSAGES // 2, "finished too early to be under load at the outage"
                cluster = broker.cluster_id()

                down_at = time.monotonic()
                await asyncio.to_thread(broker.kafka_sh, "down")
                cpu_before = cpu_seconds(process.pid)
                await wait_for(lambda: broker_up_reads(0.0), "broker_up 0", timeout=10, alive=state)
                await asyncio.sleep(OUTAGE_S)  # the outage itself: a fixed duration is the point
                cpu_down = cpu_seconds(process.pid) - cpu_before
                down_for = time.monotonic() - down_at
                await asyncio.to_thread(broker.kafka_sh, "up")
                up_at = time.monotonic()
                assert broker.cluster_id() == cluster, "kafka.sh up reformatted the data dir"

                # Recovered: commits move again. Lines until then belong to the outage.
                await wait_for(
                    lambda: _at_least(committed_total, before + 1),
                    "commits after the restart",
                    timeout=180,
                    alive=state,
                )
                recovered_at = time.monotonic()
                await wait_for(
                    lambda: broker_up_reads(1.0), "broker_up 1 again", timeout=30, alive=state
                )
                await wait_for(
                    lambda: _at_least(committed_total, MESSAGES),
                    "every offset committed",
                    timeout=300,
                    alive=state,
                )
            finally:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, 60)
                reader.join(10)
        finally:
            polling.cancel()
            with suppress(asyncio.CancelledError):
                await polling
            await watcher.stop()

        assert code == 0, state()
        during = stderr.between(down_at, recovered_at)
        print(
            f"\n{delivery}: broker down {down_for:.1f} s, back up {up_at - down_at:.1f} s after "
            f"the stop, caught up {recovered_at - down_at:.1f} s after it; {len(during)} lines, "
            f"{cpu_down:.2f} CPU s while down\n{summary(during)}"
        )
        assert len(during) <= MAX_LINES, f"{len(during)} lines during the outage:\n" + summary(
            during
        )
        # Not asserted (yet): under load, aiokafka 0.14's metadata refresh retries without any
        # pause while the broker is down (the producer's sender and the fetcher wait on it and
        # ask again at once), about 3/4 of a core with the log lines dropped. No aiokafka
        # setting paces it; retry_backoff_ms does not reach that loop.

        result = await run.outputs()  # read_committed
        seen = outcomes_per_offset(result)
        want = expected_offsets(ends)
        missing = want - set(seen)
        assert not missing, f"{len(missing)} input offsets have no verdict or dead letter"
        assert await run.committed() == ends
        if delivery == "exactly_once":
            duplicates = {k: n for k, n in seen.items() if n > 1}
            assert not duplicates, f"{len(duplicates)} offsets have more than one verdict"


async def _at_least(count: Callable[[], Awaitable[int]], target: int) -> bool:
    return await count() >= target


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    """Keep the watcher fetching (as the pipeline's consumer does), so it holds connections."""
    while True:
        await consumer.getmany(timeout_ms=500)
