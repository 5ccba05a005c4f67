"""Exactly-once: SIGKILLs mid-run, and a read_committed reader still sees one verdict per input.

Outputs and input offsets commit in one Kafka transaction; a restarted instance reuses its
transactional id, which fences its killed predecessor and aborts that one's open transaction.
"""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from tests.e2e.harness import expected_offsets, new_run, outcomes_per_offset
from tests.e2e.test_core import clean_values
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(600)


async def test_three_sigkills_no_duplicates_no_loss(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=20, latency_dist="exponential", seed=17) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(5000))
        env = {
            "MODSTREAM_DELIVERY": "exactly_once",
            "MODSTREAM_TRANSACTIONAL_ID": f"{run.name}-instance-0",  # stable across restarts
            "MODSTREAM_CONCURRENCY": "64",
            "MODSTREAM_MAX_IN_FLIGHT": "128",
        }
        rng = random.Random(23)
        for _ in range(3):
            process = run.spawn(**env)
            await asyncio.sleep(rng.uniform(4.0, 7.0))
            assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            process.send_signal(signal.SIGKILL)
            process.wait()
        final = run.spawn("--exit-when-idle", "3", **env)
        _, stderr = await asyncio.to_thread(final.communicate, timeout=300)
        assert final.returncode == 0, stderr.decode()[-3000:]

        summary = await run.outputs()  # read_committed
        seen = outcomes_per_offset(summary)
        want = expected_offsets(await run.end_offsets())
        assert set(seen) == want, f"{len(want - set(seen))} lost"
        duplicates = {k: n for k, n in seen.items() if n > 1}
        assert not duplicates, f"{len(duplicates)} inputs have more than one verdict"
        assert await run.committed() == await run.end_offsets()
