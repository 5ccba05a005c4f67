"""The broker guarantees modstream's delivery semantics stand on, checked on the real broker.

No mocks: aiokafka against the session's Apache Kafka. If one of these fails, the pipeline's
"nothing lost" and "exactly-once on request" promises cannot hold either, whatever our code does.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import MakeTopic
from tests.e2e.harness import until

TIMEOUT_S = 30.0


async def _read(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    isolation_level: str = "read_uncommitted",
    until: bytes | None = None,
    count: int | None = None,
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, with no group, until ``until`` or ``count``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
            if (until is not None and any(r.value == until for r in out)) or (
                count is not None and len(out) >= count
            ):
                return out
        raise AssertionError(f"timed out reading {topic}: got {[r.value for r in out]}")
    finally:
        await consumer.stop()


async def _group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    return consumer


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)


async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in offsets.items()}


async def _settled_offset(admin: AIOKafkaAdminClient, group: str, tp: TopicPartition) -> int:
    """The group's committed offset once no transactional commit of it is pending.

    A transaction's offsets become readable when the broker has written the commit marker to
    ``__consumer_offsets``, which happens just after EndTxn returns. aiokafka fetches offsets
    with OffsetFetch v1-v3 (no ``require_stable``, KIP-447), so right after a commit the old
    offset can still be served: poll briefly, and fail if it never settles.
    """
    found = -1

    async def settled() -> bool:
        nonlocal found
        found = (await _committed(admin, group)).get(tp, -1)
        return found >= 0

    await until(f"a committed offset of {tp} for {group}", settled, within=10, every=0.05)
    return found


async def test_manual_commit_and_resume_in_group(
    kafka_bootstrap: str, make_topic: MakeTopic, unique: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    topic = await make_topic(partitions=1)
    group = f"g-{unique}"
    tp = TopicPartition(topic, 0)
    await _produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(10)])

    first = await _group_consumer(kafka_bootstrap, topic, group)
    try:
        seen: list[ConsumerRecord] = []
        while len(seen) < 4:
            seen.append(await asyncio.wait_for(first.getone(), TIMEOUT_S))
        assert [r.value for r in seen] == [b"m0", b"m1", b"m2", b"m3"]
        # Processed m0..m3: the committed offset is the next one to read.
        await first.commit({tp: seen[-1].offset + 1})
        assert await first.committed(tp) == 4
    finally:
        await first.stop()

    assert (await _committed(kafka_admin, group))[tp] == 4

    second = await _group_consumer(kafka_bootstrap, topic, group)
    try:
        resumed = await asyncio.wait_for(second.getone(), TIMEOUT_S)
    finally:
        await second.stop()
    assert (resumed.offset, resumed.value) == (4, b"m4")


async def test_transaction_commits_outputs_and_offsets_together(
    kafka_bootstrap: str, make_topic: MakeTopic, unique: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    source = await make_topic(partitions=1, prefix="in")
    sink = await make_topic(partitions=2, prefix="out")
    group = f"g-{unique}"
    tp = TopicPartition(source, 0)
    await _produce(kafka_bootstrap, source, [f"req{i}".encode() for i in range(5)])

    consumer = await _group_consumer(kafka_bootstrap, source, group)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{unique}")
    await producer.start()
    try:
        inputs: list[ConsumerRecord] = []
        while len(inputs) < 3:
            inputs.append(await asyncio.wait_for(consumer.getone(), TIMEOUT_S))
        async with producer.transaction():
            for record in inputs:
                await producer.send(sink, b"verdict:" + record.value, partition=record.offset % 2)
            await producer.send_offsets_to_transaction({tp: inputs[-1].offset + 1}, group)
    finally:
        await producer.stop()
        await consumer.stop()

    # Read the group's offset from outside: the transaction, not a consumer, committed it.
    assert await _settled_offset(kafka_admin, group, tp) == 3
    fresh = await _group_consumer(kafka_bootstrap, source, group)
    try:
        assert await fresh.committed(tp) == 3
        assert (await asyncio.wait_for(fresh.getone(), TIMEOUT_S)).value == b"req3"
    finally:
        await fresh.stop()

    out = await _read(kafka_bootstrap, sink, 2, isolation_level="read_committed", count=3)
    assert sorted(r.value for r in out) == [b"verdict:req0", b"verdict:req1", b"verdict:req2"]


async def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_bootstrap: str, make_topic: MakeTopic, unique: str
) -> None:
    topic = await make_topic(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{unique}")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted-1", partition=0)
        await producer.send_and_wait(topic, b"aborted-2", partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed", partition=0)
    finally:
        await producer.stop()

    # The aborted records were really written (an uncommitted reader sees them) ...
    raw = await _read(kafka_bootstrap, topic, 1, until=b"committed")
    assert [r.value for r in raw] == [b"aborted-1", b"aborted-2", b"committed"]
    # ... and a read_committed reader that got past them never saw them.
    committed = await _read(
        kafka_bootstrap, topic, 1, isolation_level="read_committed", until=b"committed"
    )
    assert [r.value for r in committed] == [b"committed"]


async def test_idempotent_producer_with_acks_all(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(partitions=1)
    values = [f"event-{i}".encode() for i in range(50)]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    async with producer:
        futures = [await producer.send(topic, v, partition=0) for v in values]
        metadata = await asyncio.gather(*futures)
    assert [m.offset for m in metadata] == list(range(len(values)))

    records = await _read(kafka_bootstrap, topic, 1, count=len(values))
    assert [r.value for r in records] == values
