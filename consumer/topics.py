"""Create the topics modstream reads and writes (for the demo, tests and first set-up).

Production clusters usually manage topics elsewhere; ``modstream topics`` is the convenience for
everyone else. Existing topics are left as they are.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumer.settings import Settings


async def create_missing(options: dict[str, Any], topics: list[NewTopic]) -> list[str]:
    """Create those of ``topics`` that don't exist yet; return the names created."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            # Another process may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def ensure_topics(
    settings: Settings, *, partitions: int = 6, replication_factor: int = 1
) -> list[str]:
    """Create the input, verdict, usage and dead-letter topics that are missing; return them."""
    from consumer.app import kafka_options  # noqa: PLC0415  (app imports every stage)

    names = [settings.input_topic, settings.verdict_topic, settings.usage_topic, settings.dlq_topic]
    topics = [NewTopic(name, partitions, replication_factor) for name in names]
    return await create_missing(kafka_options(settings), topics)


async def topic_partitions(options: dict[str, Any], topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (empty when it does not exist), asked of the broker."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        TopicPartition(topic, p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    )
