"""kafka_pacing: a failed metadata update returns only after the backoff; a good one at once."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer

from consumer.kafka.pacing import pace_metadata_refresh


class Client:
    def __init__(self, results: list[bool]) -> None:
        self.results = results

    async def _metadata_update(self, cluster_metadata: Any, topics: Any) -> bool:
        return self.results.pop(0)


async def test_failed_updates_wait_the_backoff_and_good_ones_do_not() -> None:
    kafka = SimpleNamespace(_client=Client([False, True]))
    assert pace_metadata_refresh(kafka, 0.2)
    assert not pace_metadata_refresh(kafka, 0.2), "applied once only"
    started = time.monotonic()
    assert await kafka._client._metadata_update(None, set()) is False
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert await kafka._client._metadata_update(None, set()) is True
    assert time.monotonic() - started < 0.1


async def test_applies_to_a_real_aiokafka_producer_and_leaves_unknown_objects_alone() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="localhost:1")
    assert pace_metadata_refresh(producer, 0.1)
    assert not pace_metadata_refresh(object(), 0.1)
    await asyncio.sleep(0)
