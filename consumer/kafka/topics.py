"""Create the topics modstream reads and writes (for the demo, tests and first set-up).

Production clusters usually manage topics elsewhere; ``modstream topics`` is the convenience for
everyone else. Existing topics are left as they are.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from consumer.errors import ConfigError
from consumer.kafka.client import kafka_options
from consumer.pipeline.publish import Topics
from consumer.settings import Settings

log = structlog.get_logger(__name__)


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


#: The producer's largest request (aiokafka's default, set explicitly: outputs are cut to it).
MAX_REQUEST_BYTES = 1_048_576


#: What a topic takes when its config cannot be read (Kafka's default max.message.bytes).
DEFAULT_TOPIC_MAX_BYTES = 1_048_588


async def check_topics(consumer: AIOKafkaConsumer, settings: Settings) -> None:
    """Fail at start-up, naming the topic, rather than block on a missing one later."""
    existing = await consumer.topics()
    wanted = {
        "MODSTREAM_INPUT_TOPIC": settings.input_topic,
        "MODSTREAM_VERDICT_TOPIC": settings.verdict_topic,
        "MODSTREAM_USAGE_TOPIC": settings.usage_topic,
        "MODSTREAM_DLQ_TOPIC": settings.dlq_topic,
    }
    missing = [f"{name}={topic}" for name, topic in wanted.items() if topic not in existing]
    if missing:
        raise ConfigError("topics do not exist on the broker: " + ", ".join(missing))


async def output_limits(options: dict[str, Any], topics: Topics) -> dict[str, int]:
    """The largest record each output topic takes: its ``max.message.bytes``, within the
    producer's ``max_request_size``. Dead letters are cut to it; other outputs over it are
    dead-lettered instead of being retried forever."""
    names = [topics.verdicts, topics.usage, topics.dead_letters]
    found: dict[str, int] = {}
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        wanted = {"max.message.bytes": None}
        resources = [ConfigResource(ConfigResourceType.TOPIC, n, wanted) for n in names]
        for response in await admin.describe_configs(resources):
            for error, _, _, name, entries in response.resources:
                for entry in entries if not error else ():
                    if entry[0] == "max.message.bytes":
                        found[name] = int(entry[1])
    except (KafkaError, OSError, ValueError) as exc:  # e.g. no DescribeConfigs ACL
        log.warning("cannot read the output topics' max.message.bytes", error=str(exc))
    finally:
        await admin.close()
    limits = {n: min(found.get(n, DEFAULT_TOPIC_MAX_BYTES), MAX_REQUEST_BYTES) for n in names}
    log.debug("output size limits", **{n.replace(".", "_"): b for n, b in limits.items()})
    return limits
