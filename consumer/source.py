"""Source stage: the aiokafka consumer, fetching only as much as the work window has room for.

(The consumer loop lands here next; ``Envelope`` is the value this stage hands on.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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
