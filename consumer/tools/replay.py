"""Replay a topic range through a candidate model, prompt or policy, for evaluation.

``modstream replay`` reads ``[from, to)`` of every partition by manual assignment (it never
joins a group, so the production group's committed offsets are untouched), runs each record
through the same decode, admit and classify stages as the service, and writes the verdicts to
an evaluation topic and one usage event per call to ``<topic>.usage``. A verdict cache keyed by
(content, model, prompt version, policy version) makes a repeated replay free. ``--max-cost``
reserves each message's worst case before calling the model and stops cleanly when the next
message could pass the budget; ``--dry-run`` estimates tokens and cost with no model call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from openai import AsyncOpenAI
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from consumer.errors import ConfigError, PermanentError
from consumer.kafka.client import kafka_options
from consumer.kafka.topics import create_missing, topic_partitions
from consumer.model.build import model_stages, openai_client
from consumer.model.chat_client import sender
from consumer.model.classify import Classifier
from consumer.model.tokens import chat_prompt_tokens, count_tokens
from consumer.pipeline.admit import Admitted, Admitter
from consumer.pipeline.decode import decode
from consumer.pipeline.source import Envelope
from consumer.settings import Settings
from consumer.tools.cache import CachedDecision, VerdictCache, cache_key
from schemas import UsageEvent, UsageOutcome, Verdict, make_event_id

#: A typical reply's rationale, for the dry-run's completion estimate.
_TYPICAL_RATIONALE = (
    "The content is an ordinary question with no policy concern; no category applies."
)


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


@dataclass
class ReplayResult:
    """What a replay did, for the summary and the tests."""

    messages: int = 0
    verdicts: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False
    stopped_at: dict[int, int] | None = None  # partition -> first offset not replayed

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Range:
    """Per partition, the first offset to read and the end (exclusive)."""

    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        """Offsets in the range (records, less any compacted away)."""
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.start)


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


class Replayer:
    """Runs one replay; built by ``run_replay`` with the app's clients."""

    def __init__(
        self,
        settings: Settings,
        request: ReplayRequest,
        *,
        classifier: Classifier,
        admitter: Admitter,
        cache: VerdictCache,
        producer: AIOKafkaProducer | None,
    ) -> None:
        self.settings = settings
        self.request = request
        self.classifier = classifier
        self.admitter = admitter
        self.cache = cache
        self.producer = producer
        self.result = ReplayResult(estimated=request.dry_run)
        self._reserved = 0.0
        self._budget = asyncio.Condition()
        self._holders = 0  # reservations held (a count: float sums never return to exactly 0)
        self._stop = False
        self._window = asyncio.Semaphore(settings.max_in_flight)
        self._unfinished: dict[int, int] = {}

    # Budget --------------------------------------------------------------------------------

    def worst_case_cost(self, admitted: Admitted) -> float:
        """The most one message may cost: a full completion budget (the reply and any room
        for reasoning), twice (repair/retry)."""
        prompt = self.classifier.overhead_tokens + admitted.content_tokens
        one = self.classifier.ledger.prices.cost(
            self.classifier.model, prompt, self.classifier.max_tokens
        )
        return 2 * (one or 0.0)

    async def _reserve(self, amount: float) -> bool:
        """Hold ``amount`` of the budget; wait while in-flight reservations may free some."""
        budget = self.request.max_cost
        async with self._budget:
            while budget is not None and self.result.cost_usd + self._reserved + amount > budget:
                if self._holders == 0:
                    return False  # nothing in flight will free more: the budget is spent
                await self._budget.wait()
            self._reserved += amount
            self._holders += 1
            return True

    async def _release(self, amount: float) -> None:
        async with self._budget:
            self._reserved -= amount
            self._holders -= 1
            self._budget.notify_all()

    # One message ---------------------------------------------------------------------------

    async def handle(self, envelope: Envelope) -> None:
        """Decode, admit, then answer from the cache, estimate, or ask the model."""
        if self._stop:
            self._not_replayed(envelope)
            return
        self.result.messages += 1
        try:
            request = decode(
                envelope,
                input_format=self.settings.input_format,
                max_message_bytes=self.settings.max_message_bytes,
            )
            admitted = self.admitter.admit(request)
        except PermanentError as exc:
            self.result.dead_letters[exc.kind] += 1
            return
        builder = self.classifier.builder
        key = cache_key(
            admitted.text,
            admitted.context,
            self.classifier.model,
            builder.prompt.version,
            builder.policy.version,
        )
        if (hit := self.cache.get(key)) is not None:
            await self._publish_hit(envelope, admitted, hit)
            return
        if self.request.dry_run:
            self._estimate(admitted)
            return
        worst = self.worst_case_cost(admitted)
        if not await self._reserve(worst):
            self._stop = True
            self.result.messages -= 1
            self._not_replayed(envelope)
            return
        try:
            classified = await self.classifier.classify(admitted, envelope.source)
            for usage in classified.usage:
                self.result.model_calls += 1
                self.result.prompt_tokens += usage.prompt_tokens
                self.result.completion_tokens += usage.completion_tokens
                self.result.cost_usd += usage.cost_usd or 0.0
        finally:
            await self._release(worst)
        if classified.verdict is None:
            kind = classified.failure.kind if classified.failure else "unknown"
            self.result.dead_letters[kind] += 1
            await self._send([], classified.usage)
            return
        self.result.verdicts += 1
        await self.cache.put(key, CachedDecision.of(classified.verdict))
        await self._send([classified.verdict], classified.usage)

    def _not_replayed(self, envelope: Envelope) -> None:
        """Remember the first offset per partition that the budget stop left out."""
        first = self._unfinished.get(envelope.partition, envelope.offset)
        self._unfinished[envelope.partition] = min(first, envelope.offset)

    def _estimate(self, admitted: Admitted) -> None:
        builder = self.classifier.builder
        messages = builder.messages(admitted.text, admitted.context)
        model = self.classifier.model
        scores = ",".join(f'"{c.field}":0.02' for c in builder.policy.categories)
        reply = f'{{"scores":{{{scores}}},"rationale":"{_TYPICAL_RATIONALE}"}}'
        prompt = chat_prompt_tokens(messages, model)
        completion = count_tokens(reply, model)
        self.result.model_calls += 1
        self.result.prompt_tokens += prompt
        self.result.completion_tokens += completion
        self.result.cost_usd += self.classifier.ledger.prices.cost(model, prompt, completion) or 0.0

    async def _publish_hit(
        self, envelope: Envelope, admitted: Admitted, hit: CachedDecision
    ) -> None:
        self.result.cache_hits += 1
        self.result.verdicts += 1
        if self.request.dry_run:
            return
        source = envelope.source
        policy = self.classifier.builder.policy
        now = datetime.now(UTC)
        verdict = Verdict(
            event_id=make_event_id(source, policy.version, "verdict"),
            source=source,
            content_id=admitted.request.id,
            content_sha256=hashlib.sha256(admitted.request.text.encode()).hexdigest(),
            **hit.model_dump(),
            model=self.classifier.model,
            policy_version=policy.version,
            prompt_version=self.classifier.builder.prompt.version,
            truncated=admitted.truncated,
            latency_ms=0.0,
            cache_hit=True,
            metadata=admitted.request.metadata,
            created_at=now,
        )
        usage = UsageEvent(
            event_id=make_event_id(source, policy.version, "usage", 1),
            source=source,
            content_id=admitted.request.id,
            model=self.classifier.model,
            attempt=1,
            outcome=UsageOutcome.CACHE_HIT,
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            price_source=self.classifier.ledger.prices.source,
            latency_ms=0.0,
            created_at=now,
        )
        await self._send([verdict], [usage])

    async def _send(self, verdicts: list[Verdict], usage: list[UsageEvent]) -> None:
        if self.producer is None:
            return
        futures = [
            await self.producer.send(
                self.request.to_topic, v.model_dump_json().encode(), key=v.content_id.encode()
            )
            for v in verdicts
        ]
        futures += [
            await self.producer.send(self.request.usage_topic, u.model_dump_json().encode())
            for u in usage
        ]
        await asyncio.gather(*futures)

    # The loop ------------------------------------------------------------------------------

    async def run(
        self, consumer: AIOKafkaConsumer, bounds: Range, progress: Progress
    ) -> ReplayResult:
        """Read the range, at most ``max_in_flight`` messages in flight."""
        task = progress.add_task("replay", total=bounds.total, tokens=0, cost=0.0)
        remaining = {tp for tp in bounds.start if bounds.end[tp] > bounds.start[tp]}
        for tp in bounds.start:
            consumer.seek(tp, bounds.start[tp])
        async with asyncio.TaskGroup() as group:

            async def one(envelope: Envelope) -> None:
                try:
                    await self.handle(envelope)
                finally:
                    self._window.release()
                    progress.update(
                        task, advance=1, tokens=self.result.tokens, cost=self.result.cost_usd
                    )

            while remaining and not self._stop:
                batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=256)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= bounds.end[tp]:
                            remaining.discard(tp)
                            break
                        await self._window.acquire()
                        envelope = Envelope(
                            record.topic,
                            record.partition,
                            record.offset,
                            record.key,
                            record.value,
                            tuple(record.headers),
                            record.timestamp,
                        )
                        group.create_task(one(envelope))
                for tp in list(remaining):
                    if await consumer.position(tp) >= bounds.end[tp]:
                        remaining.discard(tp)
        if self._stop:
            self.result.stopped_at = dict(sorted(self._unfinished.items()))
        return self.result


class RateColumn(ProgressColumn):
    """Messages per second."""

    def render(self, task: Task) -> Text:
        """The task's speed, or nothing before there is one."""
        return Text(f"{task.speed:,.0f} msg/s" if task.speed else "", style="magenta")


async def run_replay(
    settings: Settings, request: ReplayRequest, *, console: Console | None = None
) -> ReplayResult:
    """Build the clients, resolve the range, replay it with a progress bar."""

    console = console or Console(stderr=True)
    options = kafka_options(settings)
    partitions = await topic_partitions(options, request.topic)
    if not partitions:
        raise ConfigError(f"topic {request.topic!r} does not exist")
    cache = VerdictCache()
    if request.cache_topic:
        await cache.attach(options, request.cache_topic)
    if not request.dry_run:
        await create_missing(
            options, [NewTopic(request.to_topic, 3, 1), NewTopic(request.usage_topic, 3, 1)]
        )
    client: AsyncOpenAI = openai_client(settings)
    producer = None if request.dry_run else AIOKafkaProducer(**options, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    try:
        async with client, consumer, sender(settings.chat_client, client) as chat:
            if producer is not None:
                await producer.start()
            consumer.assign(partitions)
            bounds = await resolve_range(consumer, request)
            classifier, admitter = model_stages(settings, client, chat=chat)
            replayer = Replayer(
                settings,
                request,
                classifier=classifier,
                admitter=admitter,
                cache=cache,
                producer=producer,
            )
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                RateColumn(),
                TextColumn("[cyan]{task.fields[tokens]:,} tokens"),
                TextColumn("[green]${task.fields[cost]:.4f}"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console, transient=False) as progress:
                return await replayer.run(consumer, bounds, progress)
    finally:
        if producer is not None:
            await producer.stop()
        await cache.close()


def render_result(
    result: ReplayResult, request: ReplayRequest, console: Console | None = None
) -> None:
    """The replay's summary: what ran, what it cost, and where a budget stop left off."""
    console = console or Console()
    title = (
        "Dry run (estimate, no model call)" if request.dry_run else f"Replay -> {request.to_topic}"
    )
    table = Table(title=title)
    table.add_column("")
    table.add_column("", justify="right")
    rows = {
        "messages": f"{result.messages:,}",
        "verdicts": f"{result.verdicts:,}",
        "cache hits (free)": f"{result.cache_hits:,}",
        "model calls": f"{result.model_calls:,}",
        "prompt tokens": f"{result.prompt_tokens:,}",
        "completion tokens": f"{result.completion_tokens:,}",
        "cost (USD)": f"{result.cost_usd:.5f}",
        "dead letters": ", ".join(f"{k}: {n}" for k, n in result.dead_letters.items()) or "0",
    }
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)
    if result.stopped_at is not None:
        where = ", ".join(f"partition {p} at offset {o}" for p, o in result.stopped_at.items())
        console.print(
            f"[yellow]stopped by --max-cost {request.max_cost} after ${result.cost_usd:.5f}: "
            f"not replayed from {where}"
        )
