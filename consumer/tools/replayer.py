"""One replay's run: each record of a range from the cache, an estimate or the model, in budget.

The work of ``modstream replay`` once its clients are up (:mod:`consumer.tools.replay` builds
them and resolves the range): records come from the range reader (:mod:`consumer.kafka.ranges`),
at most ``MODSTREAM_MAX_IN_FLIGHT`` in flight; each is decoded and admitted as the service does,
then answered from the verdict cache (the verdict factory and usage ledger rebuild the hit),
estimated (``--dry-run``), or classified by the Classifier once its worst case fits the budget
(:mod:`consumer.tools.budget`); the verdicts and usage go out through the pipeline's
``Publisher``. A message that does not fit a spent budget stops the replay, and the result says,
per partition, where a later replay resumes. Progress is told to a :class:`ReplayProgress`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol, cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.errors import PermanentError
from consumer.kafka.ranges import Record, records_in_range
from consumer.model.classify import Classifier
from consumer.model.ledger import Tokens
from consumer.model.tokens import chat_prompt_tokens, count_tokens
from consumer.model.verdicts import Decision
from consumer.pipeline.admit import Admitted, Admitter
from consumer.pipeline.decode import decode
from consumer.pipeline.publish import Publisher
from consumer.pipeline.source import Envelope
from consumer.settings import Settings
from consumer.tools.budget import CostBudget, Grant
from consumer.tools.cache import VerdictCache, cache_key
from schemas import UsageEvent, Verdict

__all__ = ["Quiet", "Range", "ReplayProgress", "ReplayResult", "Replayer"]

#: A typical reply's rationale, for the dry-run's completion estimate.
_TYPICAL_RATIONALE = (
    "The content is an ordinary question with no policy concern; no category applies."
)

#: Records asked of the broker at once, and how long a fetch may wait for them.
_FETCH_RECORDS = 256
_FETCH_TIMEOUT_MS = 500


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


class ReplayProgress(Protocol):
    """What a replay tells whoever shows its progress (the CLI's bar)."""

    def started(self, total: int) -> None:
        """The range holds about ``total`` records (fewer if some were compacted away)."""

    def advanced(self, result: ReplayResult) -> None:
        """One more record done; ``result`` so far."""

    def stopped(self) -> None:
        """The replay ended (done, stopped by the budget, or failed)."""


class Quiet:
    """No progress shown: tests and scripts."""

    def started(self, total: int) -> None:
        """Nothing to show."""

    def advanced(self, result: ReplayResult) -> None:
        """Nothing to show."""

    def stopped(self) -> None:
        """Nothing to show."""


@dataclass(frozen=True)
class Range:
    """Per partition, the first offset to read and the end (exclusive)."""

    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        """Offsets in the range (records, less any compacted away)."""
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.start)


class Replayer:
    """Runs one replay over a range; built by :func:`consumer.tools.replay.run_replay`."""

    def __init__(
        self,
        settings: Settings,
        *,
        classifier: Classifier,
        admitter: Admitter,
        cache: VerdictCache,
        publisher: Publisher | None,
        budget: CostBudget,
        progress: ReplayProgress,
        dry_run: bool = False,
    ) -> None:
        """``publisher``: where verdicts and usage go (None: write nothing); ``dry_run``:
        estimate each message's tokens and cost instead of asking the model."""
        self.settings = settings
        self.classifier = classifier
        self.admitter = admitter
        self.cache = cache
        self.publisher = publisher
        self.budget = budget
        self.progress = progress
        self.dry_run = dry_run
        self.result = ReplayResult(estimated=dry_run)
        self._settled = asyncio.Condition()  # notified whenever the budget may have room
        self._window = asyncio.Semaphore(settings.max_in_flight)
        self._stop = False
        #: Per partition: the first offset the budget stop left out, and the next one to read.
        self._unfinished: dict[int, int] = {}
        self._read_to: dict[int, int] = {}

    def worst_case_cost(self, admitted: Admitted) -> float:
        """The most one message may cost: a full completion budget (the reply and any room
        for reasoning), twice (repair/retry)."""
        prompt = self.classifier.overhead_tokens + admitted.content_tokens
        one = self.classifier.ledger.cost(Tokens(prompt, self.classifier.max_tokens))
        return 2 * (one or 0.0)

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
            self.result.cache_hits += 1
            self.result.verdicts += 1
            source = envelope.source
            verdict = self.classifier.verdicts.cached(admitted, source, hit)
            await self._publish(
                envelope, verdict, [self.classifier.ledger.cache_hit(admitted, source)]
            )
            return
        if self.dry_run:
            self._estimate(admitted)
            return
        worst = self.worst_case_cost(admitted)
        if not await self._reserve(worst):
            self._stop = True
            self.result.messages -= 1
            self._not_replayed(envelope)
            return
        cost = 0.0
        try:
            classified = await self.classifier.classify(admitted, envelope.source)
            cost = self._count(classified.usage)
        finally:
            await self._settle(worst, cost)
        if classified.verdict is None:
            kind = classified.failure.kind if classified.failure else "unknown"
            self.result.dead_letters[kind] += 1
            await self._publish(envelope, None, classified.usage)
            return
        self.result.verdicts += 1
        await self.cache.put(key, Decision.of(classified.verdict))
        await self._publish(envelope, classified.verdict, classified.usage)

    async def _reserve(self, amount: float) -> bool:
        """Hold ``amount`` of the budget; wait while settlements in flight may make room."""
        async with self._settled:
            while (grant := self.budget.reserve(amount)) is Grant.WAIT:
                await self._settled.wait()
        return grant is Grant.GRANTED

    async def _settle(self, amount: float, cost: float) -> None:
        async with self._settled:
            self.budget.settle(amount, cost)
            self._settled.notify_all()

    def _count(self, usage: list[UsageEvent]) -> float:
        """Add the calls of ``usage`` to the result; what they cost."""
        cost = 0.0
        for event in usage:
            self.result.model_calls += 1
            self.result.prompt_tokens += event.prompt_tokens
            self.result.completion_tokens += event.completion_tokens
            cost += event.cost_usd or 0.0
        self.result.cost_usd += cost
        return cost

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
        self.result.cost_usd += self.classifier.ledger.cost(Tokens(prompt, completion)) or 0.0

    async def _publish(
        self, envelope: Envelope, verdict: Verdict | None, usage: list[UsageEvent]
    ) -> None:
        if self.publisher is None:
            return
        records = self.publisher.records(envelope, verdict=verdict, usage=usage)
        await self.publisher.publish(records)

    async def run(self, consumer: AIOKafkaConsumer, bounds: Range) -> ReplayResult:
        """Read the range, at most ``max_in_flight`` messages in flight."""

        async def one(envelope: Envelope) -> None:
            try:
                await self.handle(envelope)
            finally:
                self._window.release()
                self.progress.advanced(self.result)

        self.progress.started(bounds.total)
        try:
            # An async generator (typed as an iterator): closed here, a budget stop leaves early.
            batches = cast(
                "AsyncGenerator[list[Record], None]",
                records_in_range(
                    consumer,
                    bounds.end,
                    start=bounds.start,
                    max_records=_FETCH_RECORDS,
                    timeout_ms=_FETCH_TIMEOUT_MS,
                ),
            )
            async with asyncio.TaskGroup() as group, aclosing(batches):
                async for batch in batches:
                    for record in batch:
                        await self._window.acquire()
                        self._read_to[record.partition] = record.offset + 1
                        group.create_task(one(_envelope(record)))
                    if self._stop:
                        break
        finally:
            self.progress.stopped()
        if self._stop:
            self.result.stopped_at = self._stopped_at(bounds)
        return self.result

    def _stopped_at(self, bounds: Range) -> dict[int, int]:
        """Per partition with records left, the first offset the budget stop left out: where
        a later replay resumes."""
        where = {}
        for tp, start in bounds.start.items():
            left = self._unfinished.get(tp.partition, math.inf)
            first = min(left, self._read_to.get(tp.partition, start))
            if first < bounds.end[tp]:
                where[tp.partition] = int(first)
        return dict(sorted(where.items()))


def _envelope(record: Record) -> Envelope:
    return Envelope(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        tuple(record.headers),
        record.timestamp,
    )
