"""A verdict cache: the same content under the same model, prompt and policy is judged once.

Keyed by (content sha256, model, prompt version, policy version): change any of them and the
cache misses, so a replay that evaluates a new prompt never sees stale answers. In-process by
default (bounded LRU); persistent across runs through a compacted Kafka topic that is read in
full at start-up and appended to on every miss (``cleanup.policy=compact`` keeps one record per
key, so the topic stays as small as the set of distinct contents).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from pydantic import BaseModel, ConfigDict, ValidationError

from consumer.kafka.topics import create_missing
from schemas import Action, CategoryScore, Verdict


class CachedDecision(BaseModel):
    """The part of a verdict that depends only on the content and the settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flagged: bool
    action: Action
    categories: dict[str, CategoryScore]
    rationale: str
    refusal: str | None = None

    @classmethod
    def of(cls, verdict: Verdict) -> CachedDecision:
        """The cacheable part of ``verdict``."""
        return cls(
            flagged=verdict.flagged,
            action=verdict.action,
            categories=verdict.categories,
            rationale=verdict.rationale,
            refusal=verdict.refusal,
        )


def cache_key(text: str, context: str | None, model: str, prompt: str, policy: str) -> str:
    """The cache key: what the model saw and every setting that can change its answer."""
    content = hashlib.sha256(f"{text}\x00{context or ''}".encode()).hexdigest()
    return hashlib.sha256(f"{content}\x1f{model}\x1f{prompt}\x1f{policy}".encode()).hexdigest()


class VerdictCache:
    """A bounded in-process LRU, optionally backed by a compacted Kafka topic."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedDecision] = OrderedDict()
        self._producer: AIOKafkaProducer | None = None
        self._topic: str | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedDecision | None:
        """The cached decision, counting the hit or miss."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def _store(self, key: str, decision: CachedDecision) -> None:
        self._entries[key] = decision
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def put(self, key: str, decision: CachedDecision) -> None:
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
        await self._load(options, topic)
        self._producer = AIOKafkaProducer(**options, acks="all")
        await self._producer.start()
        self._topic = topic

    async def _load(self, options: dict[str, Any], topic: str) -> None:
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
        async with consumer:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.key is None or record.value is None:
                        continue
                    try:
                        decision = CachedDecision.model_validate_json(record.value)
                    except ValidationError:
                        continue  # written by an older version: a miss, not a failure
                    self._store(record.key.decode(), decision)

    async def close(self) -> None:
        """Flush and close the backing producer, if any."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
