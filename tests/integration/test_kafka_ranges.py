"""``consumer.kafka.ranges`` on the real broker: to the end, and no further, past markers.

Transactions leave control records (markers) that take an offset but never reach a
consumer, so the last record read is not at ``end - 1``: a reader that waits for it hangs.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.kafka.ranges import read_topics, records_in_range
from tests.conftest import MakeTopic

TIMEOUT_S = 60.0


async def _transactions(bootstrap: str, topic: str, tx_id: str) -> None:
    """p0: a0 a1 committed, b0 b1 aborted, c0 committed (markers between); p1: nothing."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tx_id)
    async with producer:
        async with producer.transaction():
            for value in (b"a0", b"a1"):
                await producer.send_and_wait(topic, value, partition=0)
        await producer.begin_transaction()
        for value in (b"b0", b"b1"):
            await producer.send_and_wait(topic, value, partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"c0", partition=0)


async def test_read_topics_stops_at_the_end_past_transaction_markers(
    kafka_bootstrap: str, make_topic: MakeTopic, unique: str
) -> None:
    topic = await make_topic(partitions=2, prefix="ranges")
    await _transactions(kafka_bootstrap, topic, f"tx-ranges-{unique}")
    options = {"bootstrap_servers": kafka_bootstrap}

    async def values(isolation: str) -> list[bytes | None]:
        records = read_topics(options, [topic], isolation_level=isolation)  # type: ignore[arg-type]
        return [r.value async for r in records]

    committed = await asyncio.wait_for(values("read_committed"), TIMEOUT_S)
    assert committed == [b"a0", b"a1", b"c0"]
    everything = await asyncio.wait_for(values("read_uncommitted"), TIMEOUT_S)
    assert everything == [b"a0", b"a1", b"b0", b"b1", b"c0"]
    missing = read_topics(options, [f"{topic}-does-not-exist"])
    assert [r async for r in missing] == []


async def test_records_in_range_reads_exactly_the_bounds(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(partitions=2, prefix="ranges")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    async with producer:
        for i in range(10):
            await producer.send_and_wait(topic, str(i).encode(), partition=i % 2)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    async with consumer:
        consumer.assign([p0, p1])

        async def read(
            start: dict[TopicPartition, int], end: dict[TopicPartition, int]
        ) -> set[tuple[int, int]]:
            got: set[tuple[int, int]] = set()
            async for batch in records_in_range(consumer, end, start=start, max_records=1):
                assert len({r.partition for r in batch}) == 1
                got.update((r.partition, r.offset) for r in batch)
            return got

        bounded = await asyncio.wait_for(read({p0: 1, p1: 0}, {p0: 3, p1: 2}), TIMEOUT_S)
        assert bounded == {(0, 1), (0, 2), (1, 0), (1, 1)}
        empty = await asyncio.wait_for(read({p0: 4, p1: 5}, {p0: 4, p1: 5}), TIMEOUT_S)
        assert empty == set()
