"""Replay a topic range through a candidate model, prompt or policy, for evaluation.

``modstream replay`` reads ``[from, to)`` of every partition by manual assignment (it never
joins a group, so the production group's committed offsets are untouched), runs each record
through the same decode, admit and classify stages as the service, and writes the verdicts to
an evaluation topic and one usage event per call to ``<topic>.usage``. A verdict cache keyed by
(content, model, prompt version, policy version) makes a repeated replay free. ``--max-cost``
reserves each message's worst case before calling the model and stops cleanly when the next
message could pass the budget; ``--dry-run`` estimates tokens and cost with no model call.

Built from the pipeline's parts, so a replayed verdict reads like the service's: the range reader
(:mod:`consumer.kafka.ranges`), decode and admit, the Classifier, its verdict factory and usage
ledger for cache hits (tiers included), and the :class:`~consumer.pipeline.publish.Publisher`
(schema headers, Kafka's errors in our terms). This module is the command's composition: the range
resolved from offsets or times, and every client of a replay (the cache's producer, the model
client, the consumer, the producer) in one exit stack, so whatever fails to start, the ones started
before it are closed. The run itself is :mod:`consumer.tools.replayer`, the budget
:mod:`consumer.tools.budget`, and what a person sees (the progress bar, the summary)
:mod:`consumer.tools.replay_view`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from consumer.errors import ConfigError
from consumer.kafka.client import kafka_options
from consumer.kafka.topics import create_missing, topic_partitions
from consumer.model.build import model_stages, openai_client
from consumer.model.chat_client import sender
from consumer.pipeline.publish import Publisher, Topics
from consumer.settings import Settings
from consumer.tools.budget import CostBudget
from consumer.tools.cache import VerdictCache
from consumer.tools.replayer import Quiet, Range, Replayer, ReplayProgress, ReplayResult

__all__ = ["ReplayRequest", "resolve_range", "run_replay"]


@dataclass(frozen=True)
class ReplayRequest:
    """What to replay and where to write it."""

    topic: str
    to_topic: str
    from_offset: int | None = None
    from_time: datetime | None = None
    to_offset: int | None = None
    to_time: datetime | None = None
    max_cost: float | None = None
    dry_run: bool = False
    cache_topic: str | None = None

    @property
    def usage_topic(self) -> str:
        """Where the replay's usage events go."""
        return f"{self.to_topic}.usage"


async def resolve_range(consumer: AIOKafkaConsumer, request: ReplayRequest) -> Range:
    """Turn offsets or times into per-partition bounds, clamped to what the log holds."""
    partitions = sorted(consumer.assignment())
    first = await consumer.beginning_offsets(partitions)
    last = await consumer.end_offsets(partitions)

    async def at_time(
        when: datetime | None, default: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        if when is None:
            return default
        found = await consumer.offsets_for_times(
            {tp: int(when.timestamp() * 1000) for tp in partitions}
        )
        return {tp: (found[tp].offset if found.get(tp) else last[tp]) for tp in partitions}

    start = await at_time(request.from_time, first)
    end = await at_time(request.to_time, last)
    if request.from_offset is not None:
        start = {tp: request.from_offset for tp in partitions}
    if request.to_offset is not None:
        end = {tp: request.to_offset for tp in partitions}
    start = {tp: min(max(start[tp], first[tp]), last[tp]) for tp in partitions}
    end = {tp: min(max(end[tp], start[tp]), last[tp]) for tp in partitions}
    return Range(start, end)


async def run_replay(
    settings: Settings, request: ReplayRequest, *, progress: ReplayProgress | None = None
) -> ReplayResult:
    """Build the replay's clients (one exit stack owns them), resolve the range, replay it.

    ``progress`` is told how the replay goes (the CLI passes its progress bar); default none.
    """
    options = kafka_options(settings)
    partitions = await topic_partitions(options, request.topic)
    if not partitions:
        raise ConfigError(f"topic {request.topic!r} does not exist")
    async with AsyncExitStack() as stack:
        cache = await stack.enter_async_context(VerdictCache())
        if request.cache_topic:
            await cache.attach(options, request.cache_topic)
        publisher = None
        if not request.dry_run:
            outputs = [NewTopic(request.to_topic, 3, 1), NewTopic(request.usage_topic, 3, 1)]
            await create_missing(options, outputs)
        client = await stack.enter_async_context(openai_client(settings))
        chat = await stack.enter_async_context(sender(settings.chat_client, client))
        consumer = await stack.enter_async_context(
            AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
        )
        if not request.dry_run:
            producer = AIOKafkaProducer(**options, acks="all", linger_ms=5)
            await stack.enter_async_context(producer)
            # A replay writes no dead letters: it counts them (ReplayResult.dead_letters).
            topics = Topics(request.to_topic, request.usage_topic, dead_letters="")
            publisher = Publisher(producer, topics)
        consumer.assign(partitions)
        bounds = await resolve_range(consumer, request)
        classifier, admitter = model_stages(settings, client, chat=chat)
        replayer = Replayer(
            settings,
            classifier=classifier,
            admitter=admitter,
            cache=cache,
            publisher=publisher,
            budget=CostBudget(request.max_cost),
            progress=progress or Quiet(),
            dry_run=request.dry_run,
        )
        return await replayer.run(consumer, bounds)
