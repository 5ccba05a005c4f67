"""VerdictCache: a bounded LRU of decisions, loaded from and appended to a compacted topic.

The topic is read through the shared range reader and written by a producer the cache starts;
both are replaced here by in-memory stand-ins, so what is tested is the cache's own rules: the
key, the bound, what a record must be to load, that a decision keeps its tiers (and that what
older versions cached, without tiers, still loads), and that leaving closes the producer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

import consumer.tools.cache
from consumer.model.verdicts import Decision
from consumer.tools.cache import VerdictCache, cache_key
from schemas import Action, CategoryScore, Source, TierScores, Verdict

TIERS = [
    TierScores(name="moderation", model="omni-moderation-latest", scores={"hate": 0.5}),
    TierScores(name="chat", model="gpt-4o-mini", scores={"hate": 0.9}),
]


def decision(rationale: str = "fine", tiers: list[TierScores] | None = None) -> Decision:
    return Decision(
        flagged=False,
        action=Action.ALLOW,
        categories={"hate": CategoryScore(score=0.1, flagged=False)},
        rationale=rationale,
        tiers=tiers or [],
    )


def record(key: bytes | None, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="cache",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        headers=[],
    )


def test_the_key_changes_with_every_input_that_can_change_the_answer() -> None:
    base = ("text", None, "gpt-4o-mini", "p1", "v1")
    keys = {
        cache_key(*base),
        cache_key("text!", None, "gpt-4o-mini", "p1", "v1"),
        cache_key("text", "context", "gpt-4o-mini", "p1", "v1"),
        cache_key("text", None, "gpt-4o", "p1", "v1"),
        cache_key("text", None, "gpt-4o-mini", "p2", "v1"),
        cache_key("text", None, "gpt-4o-mini", "p1", "v2"),
    }
    assert len(keys) == 6
    assert cache_key(*base) == cache_key(*base)


async def test_the_least_recently_used_entry_goes_first() -> None:
    cache = VerdictCache(max_entries=2)
    await cache.put("a", decision("a"))
    await cache.put("b", decision("b"))
    assert cache.get("a") is not None  # a is now the most recent
    await cache.put("c", decision("c"))
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_a_decision_is_the_cacheable_part_of_a_verdict_tiers_included() -> None:
    verdict = Verdict(
        event_id="e",
        source=Source(topic="in", partition=0, offset=1),
        content_id="c",
        content_sha256="0" * 64,
        flagged=True,
        action=Action.BLOCK,
        categories={"hate": CategoryScore(score=0.9, flagged=True)},
        rationale="hateful",
        model="gpt-4o-mini",
        policy_version="v1",
        prompt_version="p1",
        truncated=False,
        latency_ms=12.0,
        created_at=datetime.now(UTC),
        tiers=TIERS,
        category_inputs={"hate": ["text", "image:0"]},
    )
    kept = Decision.of(verdict)
    assert kept.model_dump() == verdict.model_dump(
        include={
            "flagged",
            "action",
            "categories",
            "rationale",
            "refusal",
            "tiers",
            "category_inputs",
        }
    )
    assert Decision.model_validate_json(kept.model_dump_json()) == kept


def test_what_older_versions_cached_without_tiers_still_loads() -> None:
    older = decision().model_dump(exclude={"tiers"})
    assert Decision.model_validate(older).tiers == []


class Producer:
    """Stands in for the cache's producer: what it sent, and whether it was stopped."""

    def __init__(self, **options: Any) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))


async def test_attach_loads_the_topic_skipping_what_is_not_a_decision_and_appends_misses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = decision("from the topic", TIERS)
    records = [
        record(b"k1", stored.model_dump_json().encode()),
        record(b"k2", None),  # a tombstone
        record(None, stored.model_dump_json().encode()),  # no key
        record(b"k3", b'{"flagged": "perhaps"}'),  # not a decision (another version's)
    ]

    async def topic(options: dict[str, Any], topics: list[str]) -> AsyncIterator[Any]:
        assert topics == ["cache"]
        for r in records:
            yield r

    async def nothing(*args: Any) -> None:
        return None

    made: list[Producer] = []

    def producer(**options: Any) -> Producer:
        made.append(Producer(**options))
        return made[-1]

    monkeypatch.setattr(consumer.tools.cache, "read_topics", topic)
    monkeypatch.setattr(consumer.tools.cache, "create_missing", nothing)
    monkeypatch.setattr(consumer.tools.cache, "AIOKafkaProducer", producer)
    async with VerdictCache() as cache:
        await cache.attach({}, "cache")
        assert len(cache) == 1
        assert cache.get("k1") == stored
        await cache.put("k4", decision("new"))
    [sender] = made
    assert [(t, k) for t, _, k in sender.sent] == [("cache", b"k4")]
    assert sender.stopped, "leaving the cache closes its producer"
