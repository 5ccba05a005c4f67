"""Replay a topic range through a candidate model, prompt or policy, for evaluation.

``modstream replay`` reads ``[from, to)`` of every partition by manual assignment (it never
joins a group, so the production group's committed offsets are untouched), runs each record
through the same decode, admit and classify stages as the service, and writes the verdicts to
an evaluation topic and one usage event per call to ``<topic>.usage``. A verdict cache keyed by
(content, model, prompt version, policy version) makes a repeated replay free. ``--max-cost``
reserves each message's worst case before calling the model and stops cleanly when the next
message could pass the budget (exit code 4, :data:`STOPPED_EARLY_EXIT`); the partitions are read
in turn, so the part replayed is a fair sample. ``--dry-run`` estimates tokens and cost with no
model call and needs no key. A ``--to-topic`` that is a topic of the service's is refused
(:func:`check_destination`), and a model unreachable for ``--max-outage`` seconds ends the
replay. ``--batch-api`` sends the range as one batch of the provider's Batch API instead, at
half the price (:mod:`consumer.tools.batch_replay`).

Built from the pipeline's parts, so a replayed verdict reads like the service's: the range reader
(:mod:`consumer.kafka.ranges`), decode and admit, the Classifier, its verdict factory and usage
ledger for cache hits (tiers included), and the :class:`~consumer.pipeline.publish.Publisher`
(schema headers, Kafka's errors in our terms). This module is the command's composition: the range
resolved from offsets or times, and every client of a replay (the cache's producer, the model
client, the consumer, the producer) in one exit stack, so whatever fails to start, the ones started
before it are closed. A ``--topic`` that does not exist, or a broker that cannot be reached, is one
line in the words every command uses (:mod:`consumer.kafka.topics`, :mod:`consumer.kafka.client`).
The run itself is :mod:`consumer.tools.replayer`, the budget :mod:`consumer.tools.budget`, and
what a person sees (the progress bar, the summary) :mod:`consumer.tools.replay_view`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime

import httpx2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from openai import AsyncOpenAI
from pydantic import BaseModel

from consumer.errors import ConfigError
from consumer.kafka.client import enter_kafka, kafka_options
from consumer.kafka.registry import enter_input_registry
from consumer.kafka.registry_outputs import output_encoder
from consumer.kafka.topics import create_missing, require_topics, topic_partitions
from consumer.model.build import log_request_params, model_stages, openai_client
from consumer.model.chat_client import sender
from consumer.pipeline.publish import Publisher, Topics
from consumer.settings import Settings
from consumer.tools.batch_job import BATCH_POLL_S, BatchProgress, QuietBatch
from consumer.tools.batch_replay import BatchReplayer
from consumer.tools.budget import CostBudget
from consumer.tools.cache import VerdictCache
from consumer.tools.replay_outcome import MAX_OUTAGE_S, Quiet, Range, ReplayProgress, ReplayResult
from consumer.tools.replayer import Replayer
from schemas import UsageEvent, Verdict

__all__ = [
    "STOPPED_EARLY_EXIT",
    "ReplayRequest",
    "check_destination",
    "parse_offsets",
    "resolve_range",
    "run_replay",
]

#: The exit code of a replay that ``--max-cost`` stopped before the end of its range.
STOPPED_EARLY_EXIT = 4

#: What to do about a ``--topic`` that does not exist (replay reads it, never creates it).
REPLAYED_HINT = "check the name (the topic to replay, e.g. the service's input topic)"


def parse_offsets(text: str) -> int | dict[int, int]:
    """``--from-offset``: ``N`` (every partition) or ``P:N,P:N`` (those partitions only)."""
    try:
        if ":" not in text:
            return int(text)
        pairs = (item.split(":") for item in text.split(",") if item.strip())
        return {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise ConfigError(
            f"--from-offset {text!r}: give an offset (12) or partition:offset pairs (0:12,1:40)"
        ) from None


@dataclass(frozen=True)
class ReplayRequest:
    """What to replay and where to write it."""

    topic: str
    to_topic: str
    #: One first offset for every partition, or per partition (only those are replayed).
    from_offset: int | dict[int, int] | None = None
    from_time: datetime | None = None
    to_offset: int | None = None
    to_time: datetime | None = None
    max_cost: float | None = None
    dry_run: bool = False
    cache_topic: str | None = None
    #: Seconds the model may be unreachable, nothing answered, before the replay stops.
    max_outage_s: float = MAX_OUTAGE_S
    #: Write to ``to_topic`` even when it is a topic of the service's (see check_destination).
    force: bool = False
    #: Through the provider's Batch API, at its price (:mod:`consumer.tools.batch_replay`).
    batch_api: bool = False
    #: ``batch_api``: seconds between two looks at the batch.
    batch_poll_s: float = BATCH_POLL_S

    @property
    def usage_topic(self) -> str:
        """Where the replay's usage events go."""
        return f"{self.to_topic}.usage"


def check_destination(settings: Settings, request: ReplayRequest) -> None:
    """Refuse to write a replay's verdicts or usage into a topic that is not an evaluation one.

    ``--to-topic`` and ``<to-topic>.usage`` must be neither the topic replayed, nor a topic of
    the production service (input, verdicts, usage, dead letters), nor the verdict cache:
    evaluation events there would reach the service's downstream consumers or pollute the
    cache. Checked before any Kafka connection; ``request.force`` skips it.
    """
    if request.force:
        return
    taken = [
        (request.topic, "--topic, the topic replayed"),
        (settings.input_topic, "MODSTREAM_INPUT_TOPIC"),
        (settings.verdict_topic, "MODSTREAM_VERDICT_TOPIC"),
        (settings.usage_topic, "MODSTREAM_USAGE_TOPIC"),
        (settings.dlq_topic, "MODSTREAM_DLQ_TOPIC"),
    ]
    if request.cache_topic:
        taken.append((request.cache_topic, "--cache-topic, the verdict cache"))
    for written, what in ((request.to_topic, "verdicts"), (request.usage_topic, "usage events")):
        settings_named = [name for topic, name in taken if topic == written]
        if settings_named:
            via = "" if written == request.to_topic else f" (--to-topic {request.to_topic!r})"
            raise ConfigError(
                f"replay would write its {what} to {written!r}{via}, which is "
                f"{' and '.join(settings_named)}: choose another --to-topic, "
                "or pass --force to write there anyway"
            )


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
    if isinstance(request.from_offset, dict):
        known = {tp.partition for tp in partitions}
        if unknown := sorted(set(request.from_offset) - known):
            raise ConfigError(
                f"--from-offset names partitions {unknown} that {request.topic!r} does not have"
            )
        # Only the partitions named are replayed: the others start at their end.
        start = {tp: request.from_offset.get(tp.partition, last[tp]) for tp in partitions}
    elif request.from_offset is not None:
        start = {tp: request.from_offset for tp in partitions}
    if request.to_offset is not None:
        end = {tp: request.to_offset for tp in partitions}
    start = {tp: min(max(start[tp], first[tp]), last[tp]) for tp in partitions}
    end = {tp: min(max(end[tp], start[tp]), last[tp]) for tp in partitions}
    return Range(start, end)


def no_call_client(settings: Settings) -> AsyncOpenAI:
    """A client for ``--dry-run``: the settings' base URL (so the server kind and prices are
    the real run's), no key, and a transport that refuses every request."""

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError(f"a dry run makes no model call (asked for {request.url})")

    return AsyncOpenAI(
        api_key="dry-run",
        base_url=settings.openai_base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)),
    )


async def run_replay(
    settings: Settings,
    request: ReplayRequest,
    *,
    progress: ReplayProgress | None = None,
    batch_progress: BatchProgress | None = None,
) -> ReplayResult:
    """Build the replay's clients (one exit stack owns them), resolve the range, replay it.

    ``progress`` is told how the replay goes (the CLI passes its progress bar), and
    ``batch_progress`` how a ``batch_api`` replay's batch goes; default none. A ``batch_api``
    dry run is the synchronous dry run at the batch price: the same estimate, no call.
    """
    check_destination(settings, request)
    options = kafka_options(settings)
    await require_topics(options, {"--topic": request.topic}, hint=REPLAYED_HINT)
    partitions = await topic_partitions(options, request.topic)
    async with AsyncExitStack() as stack:
        cache = await stack.enter_async_context(VerdictCache())
        if request.cache_topic:
            await cache.attach(options, request.cache_topic)
        publisher = None
        if not request.dry_run:
            outputs = [NewTopic(request.to_topic, 3, 1), NewTopic(request.usage_topic, 3, 1)]
            await create_missing(options, outputs)
        if request.dry_run:
            # No key needed and no call possible: the estimate uses the tokenizer and prices.
            client = await stack.enter_async_context(no_call_client(settings))
            chat = None
        else:
            client = await stack.enter_async_context(openai_client(settings))
            # A batch replay sends no chat request of its own: no sender to open.
            chat = (
                None
                if request.batch_api
                else await stack.enter_async_context(sender(settings.chat_client, client))
            )
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
        await enter_kafka(stack, consumer, options)
        if not request.dry_run:
            producer = AIOKafkaProducer(**options, acks="all", linger_ms=5)
            await enter_kafka(stack, producer, options)
            # A replay writes no dead letters: it counts them (ReplayResult.dead_letters).
            topics = Topics(request.to_topic, request.usage_topic, dead_letters="")
            written: dict[str, type[BaseModel]] = {
                request.to_topic: Verdict,
                request.usage_topic: UsageEvent,
            }
            encoder = await output_encoder(settings, written)
            publisher = Publisher(producer, topics, encoder=encoder)
        consumer.assign(partitions)
        bounds = await resolve_range(consumer, request)
        classifier, admitter = model_stages(
            settings, client, chat=chat, batch_api=request.batch_api
        )
        log_request_params(settings)
        registry = await enter_input_registry(stack, settings)
        if request.batch_api and publisher is not None:
            batch = BatchReplayer(
                settings,
                classifier=classifier,
                admitter=admitter,
                cache=cache,
                publisher=publisher,
                budget=CostBudget(request.max_cost),
                progress=batch_progress or QuietBatch(),
                topic=request.topic,
                poll_s=request.batch_poll_s,
                max_outage_s=request.max_outage_s,
                registry=registry,
            )
            return await batch.run(consumer, bounds)
        replayer = Replayer(
            settings,
            classifier=classifier,
            admitter=admitter,
            cache=cache,
            publisher=publisher,
            budget=CostBudget(request.max_cost),
            progress=progress or Quiet(),
            dry_run=request.dry_run,
            max_outage_s=request.max_outage_s,
            registry=registry,
        )
        return await replayer.run(consumer, bounds)
