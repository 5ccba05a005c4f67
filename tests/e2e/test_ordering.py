"""Key-ordered mode: one key's verdicts come out in offset order; other keys still overlap."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from consumer.app import serve, summary
from tests.e2e.harness import assert_nothing_lost, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("ordering", ["key", "partition"])
async def test_each_key_is_published_in_offset_order(kafka_bootstrap: str, ordering: str) -> None:
    # Random latency makes later messages of a key finish first unless the pipeline orders them.
    with fake_openai_server(latency_ms=20, latency_dist="exponential", seed=13) as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        values = [
            json.dumps({"id": f"m{i}", "text": f"message {i} from user {i % 50}"}).encode()
            for i in range(1000)
        ]
        await run.produce(values, keyed=True)

        pipeline = await serve(run.settings(ordering=ordering, concurrency=32), exit_when_idle=2)

        await assert_nothing_lost(run)
        outputs = await run.outputs()
        by_key: dict[tuple[int, str | None], list[int]] = defaultdict(list)
        for verdict in outputs.verdicts:  # in the order each output partition holds them
            by_key[(verdict.source.partition, verdict.source.key)].append(verdict.source.offset)
        assert len(by_key) >= 50
        for key, offsets in by_key.items():
            assert offsets == sorted(offsets), f"key {key} published out of order"
        assert summary(pipeline.metrics).verdicts == 1000
