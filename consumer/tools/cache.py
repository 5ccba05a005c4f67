"""A verdict cache: the same content under the same model, prompt and policy is judged once.

Keyed by (content sha256, model, prompt version, policy version): change any of them and the
cache misses, so a replay that evaluates a new prompt never sees stale answers. What it keeps is
a verdict's :class:`~consumer.model.verdicts.Decision` (the part that depends only on the
content and the settings); a hit is rebuilt into a verdict by the verdict factory. In-process by
default (bounded LRU); persistent across runs through a compacted Kafka topic that is read in
full at start-up (:mod:`consumer.kafka.ranges`) and appended to on every miss
(``cleanup.policy=compact`` keeps one record per key, so the topic stays as small as the set of
distinct contents).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from pydantic import ValidationError

from consumer.kafka.client import start_kafka
from consumer.kafka.ranges import read_topics
from consumer.kafka.topics import create_missing
from consumer.model.verdicts import Decision

__all__ = ["VerdictCache", "cache_key"]


def cache_key(
    text: str,
    context: str | None,
    model: str,
    prompt: str,
    policy: str,
    *,
    images: Sequence[str] = (),
) -> str:
    """The cache key: what the model saw and every setting that can change its answer.

    ``images``: the image URLs sent (data URLs included); a text-only key is what it was
    before images existed, so caches written then still hit."""
    seen = f"{text}\x00{context or ''}"
    if images:
        seen += "\x00" + "\x1e".join(images)
    content = hashlib.sha256(seen.encode()).hexdigest()
    return hashlib.sha256(f"{content}\x1f{model}\x1f{prompt}\x1f{policy}".encode()).hexdigest()


class VerdictCache:
    """A bounded in-process LRU, optionally backed by a compacted Kafka topic.

    Use as ``async with VerdictCache() as cache``: leaving closes the backing producer that
    :meth:`attach` starts, whatever happened in between.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Decision] = OrderedDict()
        self._producer: AIOKafkaProducer | None = None
        self._topic: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Decision | None:
        """The cached decision (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def _store(self, key: str, decision: Decision) -> None:
        self._entries[key] = decision
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def put(self, key: str, decision: Decision) -> None:
        """Remember ``decision``; persist it when a topic backs the cache."""
        self._store(key, decision)
        if self._producer is not None and self._topic is not None:
            await self._producer.send_and_wait(
                self._topic, decision.model_dump_json().encode(), key=key.encode()
            )

    async def attach(self, options: dict[str, Any], topic: str) -> None:
        """Back the cache with ``topic``: create it compacted if missing, then load it."""
        compacted = NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})
        await create_missing(options, [compacted])
        async for record in read_topics(options, [topic]):
            if record.key is None or record.value is None:
                continue
            try:
                decision = Decision.model_validate_json(record.value)
            except ValidationError:
                continue  # written by an older version: a miss, not a failure
            self._store(record.key.decode(), decision)
        producer = AIOKafkaProducer(**options, acks="all")
        await start_kafka(producer, options)  # a failed start is stopped there, not by close()
        self._producer = producer
        self._topic = topic

    async def close(self) -> None:
        """Flush and close the backing producer, if any."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
