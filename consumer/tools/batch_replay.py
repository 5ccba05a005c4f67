"""``modstream replay --batch-api``: a range replayed through OpenAI's Batch API, at its price.

The run, once :mod:`consumer.tools.replay` has built the clients and resolved the range:

1. **Collect.** The range is read as a synchronous replay reads it (the partitions in turn,
   :mod:`consumer.tools.round_robin`), each record decoded and admitted the same way
   (:func:`~consumer.tools.replay_records.admit_record`); a record the service would dead-letter is
   counted, a verdict cache hit is answered from the cache, and every other input becomes
   one line of the batch (:mod:`consumer.tools.batch_requests`: the synchronous request's
   body). With ``--max-cost`` each line first reserves its worst case at the batch price
   (:mod:`consumer.tools.budget`; one call, no repair: a batch makes none); the first that
   does not fit ends the range there, so what is submitted is a fair sample.
2. **Submit, or find** (:class:`~consumer.tools.batch_job.BatchJob`, the provider's side). The
   batch's key (a hash of the topic and the file) is in its ``metadata``. Before uploading,
   the provider's batches are listed for one with that key that is not failed, cancelled or
   expired: a replay killed while its batch ran, run again, waits for that batch instead of
   paying for a second. No local state file.
3. **Wait.** The batch is polled every ``--batch-poll-s`` seconds, its status and request
   counts shown (:class:`~consumer.tools.batch_job.BatchProgress`). A batch that fails
   validation, expires or is cancelled is :class:`~consumer.errors.BatchFailed`, with its
   first errors.
4. **Read and publish.** The output and error files are matched to the inputs by custom id
   (:mod:`consumer.tools.batch_results`); each reply is read as the synchronous path reads one
   (:meth:`~consumer.model.classify.Classifier.read_reply`: local salvage, no repair call), an
   unusable reply or an error line is that input's failure (counted as a dead letter, as a
   synchronous replay counts them). Verdicts and usage go out through the same Publisher, the
   usage priced at the Batch API's discount (the classifier's price table is
   :meth:`~consumer.model.cost.PriceTable.batch_api`) and carrying ``provider_batch_id``.
   Nothing is published before the batch is done, so a killed run leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer
from openai.types import Batch

from consumer.errors import ConfigError, PermanentError
from consumer.kafka.registry import SchemaRegistry
from consumer.model.classify import Classifier
from consumer.model.conversation import Call
from consumer.model.ledger import Tokens
from consumer.model.verdicts import Decision
from consumer.pipeline.admit import Admitted, Admitter
from consumer.pipeline.publish import OutRecord, Publisher
from consumer.pipeline.source import Envelope
from consumer.settings import Settings
from consumer.tools.batch_job import BATCH_POLL_S, BatchJob, BatchProgress
from consumer.tools.batch_requests import (
    MAX_LINES,
    batch_key,
    batch_metadata,
    custom_id,
    jsonl,
    request_line,
)
from consumer.tools.batch_results import Answer, match
from consumer.tools.budget import CostBudget, Grant
from consumer.tools.cache import VerdictCache
from consumer.tools.replay_outcome import MAX_OUTAGE_S, Range, ReplayResult, StopReason
from consumer.tools.replay_records import admit_record, envelope_of, verdict_key
from consumer.tools.round_robin import round_robin
from schemas import UsageEvent, Verdict

log = structlog.get_logger(__name__)

__all__ = ["BatchReplayer"]

#: Inputs whose outputs are sent to the broker together (each group awaited as one).
_PUBLISH_GROUP = 256


@dataclass(slots=True)
class _Item:
    """One record of the range that the replay answers: from the cache, or a batch line."""

    envelope: Envelope
    admitted: Admitted
    key: str
    #: A cache hit's decision; None: a line of the batch.
    hit: Decision | None = None
    call: Call | None = None
    messages: list[dict[str, str]] | None = None
    worst: float = 0.0

    @property
    def custom_id(self) -> str:
        return custom_id(self.envelope.partition, self.envelope.offset)


class BatchReplayer:
    """Runs one Batch API replay over a range; built by :func:`consumer.tools.replay.run_replay`.

    ``classifier`` must price at the Batch API's discount (``model_stages(...,
    batch_api=True)``); its client is the one the batch goes through."""

    def __init__(
        self,
        settings: Settings,
        *,
        classifier: Classifier,
        admitter: Admitter,
        cache: VerdictCache,
        publisher: Publisher,
        budget: CostBudget,
        progress: BatchProgress,
        topic: str,
        poll_s: float = BATCH_POLL_S,
        max_outage_s: float = MAX_OUTAGE_S,
        registry: SchemaRegistry | None = None,
    ) -> None:
        """``poll_s``: seconds between two looks at the batch; ``max_outage_s``: how long the
        provider may answer no poll (5xx, timeouts) before the replay gives up on it;
        ``registry``: decodes schema-registry input (``MODSTREAM_INPUT_FORMAT`` avro, ...)."""
        self.settings = settings
        self.registry = registry
        self.classifier = classifier
        self.admitter = admitter
        self.cache = cache
        self.publisher = publisher
        self.budget = budget
        self.progress = progress
        self.topic = topic
        self.job = BatchJob(classifier.client, progress, poll_s=poll_s, max_outage_s=max_outage_s)
        self.result = ReplayResult()
        if classifier.policy.first_tier is not None:
            # The first tier is a call of its own before the chat model's, per message: not a
            # line a chat completions batch can hold.
            raise ConfigError("--batch-api replays a policy without a first_tier only")

    async def run(self, consumer: AIOKafkaConsumer, bounds: Range) -> ReplayResult:
        """Collect the range, run its batch (or find it), publish what it answered."""
        items = await self.collect(consumer, bounds)
        lines = [item for item in items if item.hit is None]
        answers: dict[str, Answer] = {}
        batch_id = None
        if lines:
            batch = await self.submit_or_find(lines, bounds)
            batch_id = batch.id
            batch = await self.job.wait(batch)
            self.result.batch_id = batch.id
            matched = match([item.custom_id for item in lines], await self.job.result_lines(batch))
            if matched.unknown or matched.duplicates or matched.missing:
                log.warning(
                    "batch results that match no input, or inputs with no result",
                    batch_id=batch.id,
                    unknown=matched.unknown,
                    duplicates=matched.duplicates,
                    missing=len(matched.missing),
                )
            answers = matched.answers
        group: list[OutRecord] = []
        for item in items:
            verdict, usage = self._answer(item, answers, batch_id)
            if verdict is not None and item.hit is None:
                await self.cache.put(item.key, Decision.of(verdict))
            records, rejected = self.publisher.replay_records(
                item.envelope, verdict=verdict, usage=usage
            )
            if rejected is not None:
                self.result.verdicts -= 1
                self.result.dead_letters[rejected.kind] += 1
            group.extend(records)
            self.result.messages += 1
            if len(group) >= _PUBLISH_GROUP:
                await self.publisher.publish(group)
                group = []
        if group:
            await self.publisher.publish(group)
        return self.result

    async def collect(self, consumer: AIOKafkaConsumer, bounds: Range) -> list[_Item]:
        """The range's records answered from the cache or to be asked in the batch, in the
        order read; dead letters counted; a ``--max-cost`` stop noted in :attr:`result`."""
        items: list[_Item] = []
        asked = 0  # items that are lines of the batch
        next_offset = {tp.partition: offset for tp, offset in bounds.start.items()}
        # Closed here (aclosing): a stop leaves early.
        records = round_robin(consumer, bounds.start, bounds.end)
        async with aclosing(records):
            async for record in records:
                envelope = envelope_of(record)
                item = await self._item(envelope)
                # Nothing is settled before the batch is done: WAIT means spent, too.
                fits = item is None or item.hit is not None or self._reserve(item.worst)
                if not fits:
                    self.result.stopped = StopReason.BUDGET
                    break
                if item is not None:
                    items.append(item)
                    asked += item.hit is None
                    if asked > MAX_LINES:  # refused as soon as known: never read on into memory
                        raise ConfigError(
                            f"the range holds more than {MAX_LINES:,} requests, the most one "
                            "batch takes: replay it in parts (--from-offset/--to-offset)"
                        )
                next_offset[envelope.partition] = envelope.offset + 1
        if self.result.stopped is not None:
            ends = {tp.partition: end for tp, end in bounds.end.items()}
            self.result.stopped_at = {p: o for p, o in sorted(next_offset.items()) if o < ends[p]}
            self.result.left = sum(ends[p] - o for p, o in self.result.stopped_at.items())
        return items

    def _reserve(self, worst: float) -> bool:
        return self.budget.reserve(worst) is Grant.GRANTED

    async def _item(self, envelope: Envelope) -> _Item | None:
        """The record as an item of the replay; None for one dead-lettered (counted here)."""
        try:
            admitted = await admit_record(self.settings, self.admitter, envelope, self.registry)
        except PermanentError as exc:
            self.result.dead_letters[exc.kind] += 1
            self.result.messages += 1
            return None
        key = verdict_key(self.classifier, admitted)
        if (hit := self.cache.get(key)) is not None:
            return _Item(envelope, admitted, key, hit=hit)
        call = self.classifier.new_call(admitted, envelope.source)
        prompt = self.classifier.overhead_tokens + admitted.content_tokens
        # One call at the batch price: a batch line gets no retry and no repair.
        worst = self.classifier.ledger.cost(Tokens(prompt, call.max_tokens)) or 0.0
        return _Item(envelope, admitted, key, call=call, worst=worst)

    async def submit_or_find(self, lines: Sequence[_Item], bounds: Range) -> Batch:
        """The batch of ``lines``: the provider's live one with the same key, else a new one."""
        bodies = []
        for item in lines:
            assert item.call is not None
            body = self.classifier.request_body(item.call)
            item.messages = body["messages"]
            bodies.append(request_line(item.custom_id, body))
        content = jsonl(bodies)
        key = batch_key(self.topic, content)
        found = await self.job.find(key)
        if found is not None:
            log.info("resuming the replay's batch", batch_id=found.id, status=found.status)
            self.result.batch_resumed = True
            self.progress.submitted(found.id, len(lines), resumed=True)
            return found
        builder = self.classifier.builder
        spans = ",".join(
            f"{tp.partition}:{bounds.start[tp]}-{bounds.end[tp]}" for tp in sorted(bounds.start)
        )
        metadata = batch_metadata(
            key,
            tool="modstream replay",
            topic=self.topic,
            range=spans,
            model=self.classifier.model,
            prompt_version=builder.prompt.version,
            policy_version=builder.policy.version,
        )
        batch = await self.job.submit(key, content, len(lines), metadata)
        self.progress.submitted(batch.id, len(lines), resumed=False)
        return batch

    def _answer(
        self, item: _Item, answers: dict[str, Answer], batch_id: str | None
    ) -> tuple[Verdict | None, list[UsageEvent]]:
        """The verdict (None: the input failed) and usage of one item, counted in the result."""
        if item.hit is not None:
            self.result.cache_hits += 1
            self.result.verdicts += 1
            source = item.envelope.source
            verdict = self.classifier.verdicts.cached(item.admitted, source, item.hit)
            return verdict, [self.classifier.ledger.cache_hit(item.admitted, source)]
        assert item.call is not None and item.messages is not None
        answer = answers[item.custom_id]
        completion, error = answer.completion, answer.error
        tokens = (
            self.classifier.calls.chat_call.tokens(completion, item.messages)
            if completion is not None
            else Tokens(0, 0)
        )
        classified = self.classifier.read_reply(item.call, completion, tokens, error)
        usage = [u.model_copy(update={"provider_batch_id": batch_id}) for u in classified.usage]
        cost = 0.0
        for event in usage:
            self.result.model_calls += 1
            self.result.prompt_tokens += event.prompt_tokens
            self.result.completion_tokens += event.completion_tokens
            cost += event.cost_usd or 0.0
        self.result.cost_usd += cost
        self.budget.settle(item.worst, cost)
        if classified.verdict is None:
            kind = classified.failure.kind if classified.failure else "unknown"
            self.result.dead_letters[kind] += 1
            return None, usage
        self.result.verdicts += 1
        return classified.verdict, usage
