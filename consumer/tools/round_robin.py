"""A range's partitions read in turn: one record of each partition with records left, again.

A replay capped by ``--max-cost`` replays a prefix of what it reads; read partition by partition
(as the range reader hands batches), that prefix is one partition's head, not a sample of the
topic. Interleaved, the prefix holds as many records of every partition, within one. Memory
stays bounded: at most one fetched batch per partition is held here (``max_records``), never
the range read ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Mapping
from typing import cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.kafka.ranges import Record, records_in_range

__all__ = ["round_robin"]

#: Records asked of the broker at once, and how long a fetch may wait for them.
FETCH_RECORDS = 256
FETCH_TIMEOUT_MS = 500


async def round_robin(
    consumer: AIOKafkaConsumer,
    start: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
    *,
    max_records: int = FETCH_RECORDS,
    timeout_ms: int = FETCH_TIMEOUT_MS,
) -> AsyncGenerator[Record, None]:
    """Records of ``[start, end)`` of every partition, in turn (partition order), each
    partition in offset order. ``consumer`` has the partitions assigned. An async generator:
    close it (``aclosing``) to leave early."""
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    # One range reader per partition over the one consumer: each fetches only its partition.
    readers = {
        tp: cast(
            "AsyncGenerator[list[Record], None]",
            records_in_range(
                consumer, {tp: end[tp]}, max_records=max_records, timeout_ms=timeout_ms
            ),
        )
        for tp in sorted(start)
    }
    held: dict[TopicPartition, deque[Record]] = {tp: deque() for tp in readers}
    try:
        while readers:
            for tp in list(readers):
                if not held[tp]:
                    try:
                        held[tp].extend(await anext(readers[tp]))
                    except StopAsyncIteration:
                        del readers[tp]
                        continue
                yield held[tp].popleft()
    finally:
        for reader in readers.values():
            await reader.aclose()
