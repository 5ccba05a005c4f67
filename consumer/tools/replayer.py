"""One replay's run: each record of a range from the cache, an estimate or the model, in budget.

The work of ``modstream replay`` once its clients are up (:mod:`consumer.tools.replay` builds
them and resolves the range): records come from the partitions in turn
(:mod:`consumer.tools.round_robin`, so a budget stop leaves a fair sample), at most
``MODSTREAM_MAX_IN_FLIGHT`` in flight; each is decoded and admitted as the service does,
then answered from the verdict cache (the verdict factory and usage ledger rebuild the hit),
estimated (``--dry-run``), or classified by the Classifier once its worst case fits the budget
(:mod:`consumer.tools.budget`); the verdicts and usage go out through the pipeline's
``Publisher``. What happens to each record is decided in the order read (a message waiting
for budget holds back the ones after it), so a budget stop leaves a prefix of that order. A
message that does not fit a spent budget stops the replay, and so does a model unreachable
for ``max_outage_s`` (:mod:`consumer.tools.outage`; the records in flight are cancelled);
the result says why, and per partition where a later replay resumes. Progress is told to a
:class:`ReplayProgress`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Coroutine
from contextlib import aclosing
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer

from consumer.errors import ModstreamError, PermanentError
from consumer.kafka.registry import SchemaRegistry
from consumer.model.classify import Classifier
from consumer.model.ledger import Tokens
from consumer.model.tokens import chat_prompt_tokens, count_tokens
from consumer.model.verdicts import Decision
from consumer.pipeline.admit import Admitted, Admitter
from consumer.pipeline.publish import Publisher
from consumer.pipeline.source import Envelope
from consumer.settings import Settings
from consumer.tools.budget import CostBudget, Grant
from consumer.tools.cache import VerdictCache
from consumer.tools.outage import OutageWatch
from consumer.tools.replay_outcome import (
    MAX_OUTAGE_S,
    Range,
    ReplayProgress,
    ReplayResult,
    StopReason,
)
from consumer.tools.replay_records import admit_record, envelope_of, verdict_key
from consumer.tools.round_robin import round_robin
from schemas import UsageEvent, Verdict

__all__ = ["Replayer"]

#: A typical reply's rationale, for the dry-run's completion estimate.
_TYPICAL_RATIONALE = (
    "The content is an ordinary question with no policy concern; no category applies."
)


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
        max_outage_s: float = MAX_OUTAGE_S,
        registry: SchemaRegistry | None = None,
    ) -> None:
        """``publisher``: where verdicts and usage go (None: write nothing); ``dry_run``:
        estimate each message's tokens and cost instead of asking the model; ``max_outage_s``:
        how long the model may be unreachable (nothing answered) before the replay stops;
        ``registry``: decodes schema-registry input (``MODSTREAM_INPUT_FORMAT`` avro, ...)."""
        self.settings = settings
        self.registry = registry
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
        self._changed = asyncio.Condition()  # notified when a decision is made
        self._order = itertools.count()  # each record's place in the order read
        self._turn = 0  # whose decision it is
        self.outage = OutageWatch(max_outage_s)
        self._watch_retries()
        #: Per partition: the first offset the budget stop left out, and the next one to read.
        self._unfinished: dict[int, int] = {}
        self._read_to: dict[int, int] = {}

    def worst_case_cost(self, admitted: Admitted) -> float:
        """The most one message may cost: a full completion budget (the reply and any room
        for reasoning), twice (repair/retry)."""
        prompt = self.classifier.overhead_tokens + admitted.content_tokens
        one = self.classifier.ledger.cost(Tokens(prompt, self.classifier.max_tokens))
        return 2 * (one or 0.0)

    async def handle(self, envelope: Envelope) -> bool:
        """Decode, admit, then answer from the cache, estimate, or ask the model; False when
        the record was not replayed (the replay had stopped).

        Decided in the order handled (each waits for the one before it to be decided), so a
        budget stop leaves a prefix of the order read, whatever was cached or dead-lettered.
        """
        place = next(self._order)
        async with self._changed:
            await self._changed.wait_for(lambda: self._turn == place)
        plan = None
        try:
            plan = await self._decide(envelope)
        finally:
            try:
                async with self._changed:
                    self._turn += 1
                    self._changed.notify_all()
            except BaseException:  # cancelled here: the plan never runs
                if plan is not None:
                    plan.close()
                raise
        if plan is None:
            return False
        await plan
        self.result.messages += 1  # done: a record cancelled in flight was not replayed
        return True

    async def _decide(self, envelope: Envelope) -> _Plan | None:
        """What to do with ``envelope`` (None: not replayed; the budget is spent)."""
        if self._stop:
            self._not_replayed(envelope)
            return None
        try:
            admitted = await admit_record(self.settings, self.admitter, envelope, self.registry)
        except PermanentError as exc:
            return self._dead_letter(exc.kind)
        key = verdict_key(self.classifier, admitted)
        if (hit := self.cache.get(key)) is not None:
            return self._cached(envelope, admitted, hit)
        if self.dry_run:
            return self._estimated(admitted)
        worst = self.worst_case_cost(admitted)
        if not await self._reserve(worst):
            self._stop = True
            self.result.stopped = self.result.stopped or StopReason.BUDGET
            self._not_replayed(envelope)
            return None
        return self._classified(envelope, admitted, key, worst)

    async def _dead_letter(self, kind: str) -> None:
        self.result.dead_letters[kind] += 1

    async def _cached(self, envelope: Envelope, admitted: Admitted, hit: Decision) -> None:
        self.result.cache_hits += 1
        self.result.verdicts += 1
        source = envelope.source
        verdict = self.classifier.verdicts.cached(admitted, source, hit)
        await self._publish(envelope, verdict, [self.classifier.ledger.cache_hit(admitted, source)])

    async def _estimated(self, admitted: Admitted) -> None:
        self._estimate(admitted)

    async def _classified(
        self, envelope: Envelope, admitted: Admitted, key: str, worst: float
    ) -> None:
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
        return grant is Grant.GRANTED and not self._stop

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
        # The messages' text, plus the images by the tile rule (as admit counted them).
        prompt = chat_prompt_tokens(messages, model) + sum(
            self.admitter.image_tokens(image) for image in admitted.images
        )
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
        records, rejected = self.publisher.replay_records(envelope, verdict=verdict, usage=usage)
        if rejected is not None:
            self.result.verdicts -= 1  # counted when classified: a dead letter after all
            self.result.dead_letters[rejected.kind] += 1
        await self.publisher.publish(records)

    async def run(self, consumer: AIOKafkaConsumer, bounds: Range) -> ReplayResult:
        """Read the range, partitions in turn, at most ``max_in_flight`` messages in flight."""
        tasks: set[asyncio.Task[bool]] = set()

        def done(envelope: Envelope, task: asyncio.Task[bool]) -> None:
            # A callback, not a finally: a task cancelled before it ran has none to run.
            tasks.discard(task)
            self._window.release()
            if task.cancelled():
                self._not_replayed(envelope)
            elif task.exception() is None and task.result():
                self.progress.advanced(self.result)

        self.progress.started(bounds.total)
        watchdog = asyncio.create_task(self._watch_outage(tasks))
        try:
            # Closed here (aclosing): a stop leaves early.
            records = round_robin(consumer, bounds.start, bounds.end)
            async with asyncio.TaskGroup() as group, aclosing(records):
                async for record in records:
                    await self._window.acquire()
                    if self._stop:
                        self._window.release()
                        break
                    self._read_to[record.partition] = record.offset + 1
                    envelope = envelope_of(record)
                    task = group.create_task(self.handle(envelope))
                    tasks.add(task)
                    task.add_done_callback(lambda t, e=envelope: done(e, t))  # type: ignore[misc]
        finally:
            watchdog.cancel()
            self.progress.stopped(self.result.stopped)
        if self._stop:
            self.result.stopped_at = self._stopped_at(bounds)
            self.result.left = sum(
                bounds.end[tp] - self.result.stopped_at[tp.partition]
                for tp in bounds.end
                if tp.partition in self.result.stopped_at
            )
        return self.result

    def _watch_retries(self) -> None:
        """Have the model calls tell :attr:`outage` of every failure they will retry."""
        calls = self.classifier.calls
        before = calls.on_retry

        def failed(error: ModstreamError) -> None:
            if before is not None:
                before(error)
            self.outage.failed(error, self.classifier.breaker.successes)

        calls.on_retry = failed

    async def _watch_outage(self, tasks: set[asyncio.Task[bool]]) -> None:
        """Stop the replay once the model has been unreachable for ``max_outage_s``: no more
        records, and the ones in flight (waiting on the circuit or a retry) cancelled."""
        tick = min(1.0, self.outage.limit_s / 10)
        while True:
            if self.outage.expired(self.classifier.breaker.successes):
                break
            await asyncio.sleep(tick)  # a watchdog's tick: the clock is what it watches
        self._stop = True
        self.result.stopped = StopReason.MODEL_UNREACHABLE
        last = self.outage.last_error
        self.result.outage = (
            f"the {self.classifier.where} was unreachable for {self.outage.limit_s:g} s with "
            f"no call answered (--max-outage); last error: "
            f"{last.kind if last else 'none'}: {last.message if last else '-'}"
        )
        for task in list(tasks):
            task.cancel()
        async with self._settled:  # a reservation waiting for room must not wait for ever
            self._settled.notify_all()

    def _stopped_at(self, bounds: Range) -> dict[int, int]:
        """Per partition with records left, the first offset the stop left out: where a later
        replay resumes."""
        where = {}
        for tp, start in bounds.start.items():
            left = self._unfinished.get(tp.partition, math.inf)
            first = min(left, self._read_to.get(tp.partition, start))
            if first < bounds.end[tp]:
                where[tp.partition] = int(first)
        return dict(sorted(where.items()))


#: What a decision leaves to do: the publishing or the model call, to await.
_Plan: TypeAlias = Coroutine[Any, Any, None]
