"""Create the topics modstream reads and writes (for the demo, tests and first set-up).

Production clusters usually manage topics elsewhere; ``modstream topics`` is the convenience for
everyone else. Existing topics are left as they are.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumer.settings import Settings


async def ensure_topics(
    settings: Settings, *, partitions: int = 6, replication_factor: int = 1
) -> list[str]:
    """Create the input, verdict, usage and dead-letter topics that are missing; return them."""
    from consumer.app import kafka_options  # noqa: PLC0415  (app imports every stage)

    options = kafka_options(settings)
    options.pop("client_id", None)
    admin = AIOKafkaAdminClient(**options, client_id=f"{settings.client_id}-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            settings.input_topic,
            settings.verdict_topic,
            settings.usage_topic,
            settings.dlq_topic,
        ]
        missing = [t for t in wanted if t not in existing]
        if missing:
            # Another process may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, partitions, replication_factor) for t in missing]
                )
        return missing
    finally:
        await admin.close()
