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
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from consumer.ops.metrics import Metrics, kafka_connected
from tests.e2e.harness import Run, assert_nothing_lost, clean_values, until
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
        consumer = run.start(**env)

        async def wait(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
            await until(what, check, within=within, unless=consumer.exited, context=consumer.tail)

        def committed_at_least(target: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await run.committed_total() >= target

            return check

        # The broker watch: an in-process consumer, as the pipeline's would be, fetching.
        watcher = AIOKafkaConsumer(
            run.input_topic, bootstrap_servers=broker.bootstrap, group_id=f"{run.name}.watch"
        )
        metrics = Metrics()
        await watcher.start()
        metrics.watch_broker(lambda: kafka_connected(watcher))
        polling = asyncio.create_task(_poll_forever(watcher))

        def broker_up_reads(expected: float) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return metrics.registry.get_sample_value("modstream_broker_up") == expected

            return check

        try:
            try:
                # Mid-run: some work committed, most of it still to do.
                await wait(committed_at_least(MESSAGES // 10), "the first commits", 120)
                await wait(broker_up_reads(1.0), "broker_up 1", 30)
                before = await run.committed_total()
                assert before < MESSAGES // 2, "finished too early to be under load at the outage"
                cluster = broker.cluster_id()

                down_at = time.monotonic()
                await asyncio.to_thread(broker.kafka_sh, "down")
                cpu_before = cpu_seconds(consumer.pid)
                await wait(broker_up_reads(0.0), "broker_up 0", 10)
                await asyncio.sleep(OUTAGE_S)  # the outage itself: a fixed duration is the point
                cpu_down = cpu_seconds(consumer.pid) - cpu_before
                down_for = time.monotonic() - down_at
                await asyncio.to_thread(broker.kafka_sh, "up")
                up_at = time.monotonic()
                assert broker.cluster_id() == cluster, "kafka.sh up reformatted the data dir"

                # Recovered: commits move again. Lines until then belong to the outage.
                await wait(committed_at_least(before + 1), "commits after the restart", 180)
                recovered_at = time.monotonic()
                await wait(broker_up_reads(1.0), "broker_up 1 again", 30)

                async def all_committed() -> bool:
                    return await run.committed() == ends

                await wait(all_committed, "every offset committed", 300)
            finally:
                code = await consumer.stop(60)
        finally:
            polling.cancel()
            with suppress(asyncio.CancelledError):
                await polling
            await watcher.stop()
            consumer.kill_if_running()

        assert code == 0, consumer.tail()
        during = consumer.logs.between(down_at, recovered_at)
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

        # read_committed. At least once may repeat what was in flight when the broker went (not
        # bounded here); exactly once, nothing.
        repeats = 0 if delivery == "exactly_once" else None
        await assert_nothing_lost(run, max_duplicates=repeats, ends=ends)


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    """Keep the watcher fetching (as the pipeline's consumer does), so it holds connections."""
    while True:
        await consumer.getmany(timeout_ms=500)
