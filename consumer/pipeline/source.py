"""Source stage: the aiokafka consumer, fetching only as much as the work window has room for.

It hands on ``Envelope`` values (the record, untouched) and reports rebalances through
``Rebalance``; it never decides anything about the content.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from schemas import Source


@dataclass(frozen=True, slots=True)
class Envelope:
    """One input record, exactly as fetched: the only thing the source hands on."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int | None

    @property
    def source(self) -> Source:
        """The record's coordinates, as every output event carries them."""
        return Source(
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            key=None if self.key is None else self.key.decode("utf-8", "backslashreplace"),
            timestamp=None
            if self.timestamp_ms is None or self.timestamp_ms < 0
            else datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC),
        )


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partition revocations to the pipeline, which drains and commits them.

    aiokafka awaits ``on_partitions_revoked`` before it rejoins the group, so the new owner of
    a partition starts from an offset we committed after our in-flight work finished.
    """

    def __init__(
        self,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[set[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Called by aiokafka before a rebalance takes partitions away."""
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Called by aiokafka once the new assignment is known."""
        await self._on_assigned(set(assigned))


class KafkaSource:
    """Fetches only as many records as the work window has room for.

    When the window is full the assigned partitions are paused and ``getmany`` keeps being
    called, returning nothing: the consumer stays in its group (``max_poll_interval_ms``) while
    memory stays bounded by the window, not by the backlog.
    """

    def __init__(self, consumer: AIOKafkaConsumer, *, fetch_timeout_ms: int = 200) -> None:
        self.consumer = consumer
        self.fetch_timeout_ms = fetch_timeout_ms
        self._paused = False

    async def fetch(self, room: int) -> list[Envelope]:
        """Up to ``room`` records, in offset order within each partition.

        Whatever ``getmany`` returns is handed on, never dropped: aiokafka has already moved
        its position past it, so a dropped record would be skipped and committed over. (A
        rebalance can assign a partition that is not paused yet while the window is full; its
        one record overfills the window by one, which is the price of never losing it.)
        """
        assignment = self.consumer.assignment()
        if room <= 0:
            # Every time, not once: a rebalance may have assigned new, unpaused partitions.
            self.consumer.pause(*assignment)
            self._paused = True
        elif self._paused:
            self.consumer.resume(*assignment)
            self._paused = False
        # A full window polls without waiting: the caller waits for room, not for records.
        batches = await self.consumer.getmany(
            timeout_ms=self.fetch_timeout_ms if room > 0 else 0, max_records=max(room, 1)
        )
        return [
            Envelope(
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                key=r.key,
                value=r.value,
                headers=tuple(r.headers),
                timestamp_ms=r.timestamp,
            )
            for records in batches.values()
            for r in records
        ]
