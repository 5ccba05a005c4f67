"""The topics modstream reads and writes: checked before use, created on demand, size limits read.

Production clusters usually manage topics elsewhere; ``modstream topics`` is the convenience for
everyone else. Existing topics are left as they are. Every command names a topic it needs that
does not exist in the same words (:func:`missing_topics`) before it waits on one: aiokafka
would otherwise wait ``request_timeout_ms`` for its metadata, logging each attempt.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from consumer.errors import ConfigError
from consumer.kafka.client import admin_client, kafka_options
from consumer.pipeline.publish import Topics
from consumer.settings import Settings

log = structlog.get_logger(__name__)

#: What to do about a missing topic of the settings.
CREATE_HINT = "create it with `modstream topics`"


#: What names a topic (``MODSTREAM_INPUT_TOPIC``, ``--verdicts``) to the topic; pairs when one
#: option names several (``eval --verdicts a --verdicts b``).
Wanted = Mapping[str, str] | Iterable[tuple[str, str]]


def missing_topics(
    wanted: Wanted, existing: Collection[str], *, hint: str = CREATE_HINT
) -> ConfigError | None:
    """The error for those of ``wanted`` (what names it, e.g. ``MODSTREAM_INPUT_TOPIC`` or
    ``--verdicts``, to the topic) not in ``existing``; ``None`` when every one exists.
    ``hint`` says what to do, for one topic (``it``; made plural for several)."""
    pairs = wanted.items() if isinstance(wanted, Mapping) else wanted
    missing = list(dict.fromkeys(f"{t} ({name})" for name, t in pairs if t not in existing))
    if not missing:
        return None
    if len(missing) == 1:
        return ConfigError(f"topic does not exist: {missing[0]}; {hint}")
    plural = hint.replace(" it ", " them ")
    return ConfigError(f"topics do not exist: {', '.join(missing)}; {plural}")


async def require_topics(
    options: dict[str, Any], wanted: Wanted, *, hint: str = CREATE_HINT
) -> None:
    """Raise :func:`missing_topics`'s error when one of ``wanted`` does not exist."""
    async with admin_client(options) as admin:
        existing = set(await admin.list_topics())
    if (problem := missing_topics(wanted, existing, hint=hint)) is not None:
        raise problem


@dataclass
class Creation:
    """What the broker answered to a creation: the topics it made, those that already
    existed, and each one it refused with its reason."""

    created: list[str] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def error(self) -> ConfigError | None:
        """The refusals as one error, or ``None`` when there were none."""
        if not self.failed:
            return None
        by_reason: dict[str, list[str]] = {}
        for name, why in self.failed.items():
            by_reason.setdefault(why, []).append(name)
        reasons = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
        return ConfigError(f"Kafka refused to create {reasons}")


async def create_topics(options: dict[str, Any], topics: list[NewTopic]) -> Creation:
    """Create those of ``topics`` that don't exist yet, reading each answer's error code."""
    done = Creation()
    async with admin_client(options) as admin:
        existing = set(await admin.list_topics())
        done.existed = [t.name for t in topics if t.name in existing]
        missing = [t for t in topics if t.name not in existing]
        if not missing:
            return done
        response = await admin.create_topics(missing)
    for name, code, *message in response.topic_errors:  # v0 has no message
        error = for_code(code)
        if code == 0:
            done.created.append(name)
        elif error is TopicAlreadyExistsError:  # another process made it since our list
            done.existed.append(name)
        else:
            done.failed[name] = f"{error.message} ({(message and message[0]) or error.description})"
    return done


async def create_missing(options: dict[str, Any], topics: list[NewTopic]) -> list[str]:
    """Create those of ``topics`` that don't exist yet; return the names created.

    A topic the broker refuses to create (an invalid name, a replication factor it cannot
    meet, no ACL) is a :class:`~consumer.errors.ConfigError` naming it and the reason.
    """
    done = await create_topics(options, topics)
    if (problem := done.error()) is not None:
        raise problem
    return done.created


async def ensure_topics(
    settings: Settings, *, partitions: int = 6, replication_factor: int = 1
) -> Creation:
    """Create the input, verdict, usage and dead-letter topics that are missing (and the
    shadow topics, when shadow is on)."""
    names = [settings.input_topic, settings.verdict_topic, settings.usage_topic, settings.dlq_topic]
    if settings.shadow_share:
        names += [settings.effective_shadow_topic, f"{settings.effective_shadow_topic}.usage"]
    topics = [NewTopic(name, partitions, replication_factor) for name in names]
    return await create_topics(kafka_options(settings), topics)


async def topic_partitions(options: dict[str, Any], topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (empty when it does not exist), asked of the broker."""
    async with admin_client(options) as admin:
        described = await admin.describe_topics([topic])
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
    wanted = {
        "MODSTREAM_INPUT_TOPIC": settings.input_topic,
        "MODSTREAM_VERDICT_TOPIC": settings.verdict_topic,
        "MODSTREAM_USAGE_TOPIC": settings.usage_topic,
        "MODSTREAM_DLQ_TOPIC": settings.dlq_topic,
    }
    if settings.shadow_share:
        shadow = settings.effective_shadow_topic
        wanted["MODSTREAM_SHADOW_TOPIC"] = shadow
        wanted["MODSTREAM_SHADOW_TOPIC + .usage"] = f"{shadow}.usage"
    if (problem := missing_topics(wanted, await consumer.topics())) is not None:
        raise problem


async def output_limits(options: dict[str, Any], topics: Topics) -> dict[str, int]:
    """The largest record each output topic takes: its ``max.message.bytes``, within the
    producer's ``max_request_size``. Dead letters are cut to it; other outputs over it are
    dead-lettered instead of being retried forever."""
    names = [topics.verdicts, topics.usage, topics.dead_letters]
    found: dict[str, int] = {}
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()  # after the consumer's start: the broker is known to answer
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
