"""Read a range of a topic to its end: the one loop behind report, replay, the cache and the tests.

Reading "to the end" is subtler than reading until a fetch comes back empty: an end offset
counts transaction markers and records compacted away, so the last record's offset may never
reach ``end - 1``. A partition is therefore done when a record at or past its end arrives, or
when the consumer's position has reached the end. Partitions are read with manual assignment,
so nothing here joins (or moves) a consumer group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from consumer.kafka.client import enter_kafka
from consumer.kafka.topics import topic_partitions

#: A record as aiokafka hands it on, with the raw bytes modstream reads.
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


async def records_in_range(
    consumer: AIOKafkaConsumer,
    end: Mapping[TopicPartition, int],
    *,
    start: Mapping[TopicPartition, int] | None = None,
    max_records: int | None = None,
    timeout_ms: int = 1000,
) -> AsyncIterator[list[Record]]:
    """Batches of records of ``end``'s partitions, each partition up to its end (exclusive).

    ``consumer`` has the partitions assigned; it reads from ``start`` (seeked here) or from
    where each partition is now. A batch holds records of one partition, in offset order. The
    caller may pause between batches (replay waits for room in its window): fetching is done
    only when the next batch is asked for.
    """
    if start is not None:
        for tp, offset in start.items():
            consumer.seek(tp, offset)
    remaining = {tp for tp in end if await consumer.position(tp) < end[tp]}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=timeout_ms, max_records=max_records)
        for tp, records in batch.items():
            kept = [r for r in records if r.offset < end[tp]]
            if len(kept) < len(records):
                remaining.discard(tp)
            if kept:
                yield kept
        for tp in list(remaining):
            if await consumer.position(tp) >= end[tp]:
                remaining.discard(tp)


async def read_topics(
    options: dict[str, Any],
    topics: Iterable[str],
    *,
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
    max_records: int | None = None,
    **consumer_options: Any,
) -> AsyncIterator[Record]:
    """Every record of ``topics`` from the beginning up to the end offsets seen at the start.

    A topic that does not exist holds nothing. ``read_committed`` (the default) leaves out
    the records of aborted transactions, as a downstream consumer of exactly-once outputs
    would; ``consumer_options`` go to the ``AIOKafkaConsumer`` (e.g. ``fetch_max_bytes``).
    """
    partitions = [tp for topic in topics for tp in await topic_partitions(options, topic)]
    if not partitions:
        return
    consumer = AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        **consumer_options,
    )
    async with AsyncExitStack() as stack:
        await enter_kafka(stack, consumer, options)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async for batch in records_in_range(consumer, ends, max_records=max_records):
            for record in batch:
                yield record
