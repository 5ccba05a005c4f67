"""The pipeline: wires the stages and owns the work window, commits and rebalances.

    source -> decode -> admit -> limit+classify -> publish -> offsets

One task fetches; one task per message runs it through the stages; one task commits the
contiguous done watermark every ``commit_interval_s``. At most ``max_in_flight`` messages sit
between fetch and commit. A message is marked done only after the broker acknowledged all its
outputs, so a commit can never pass an output that might be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_random_exponential

from consumer.admit import Admitter
from consumer.batch import Batcher
from consumer.classify import Classifier
from consumer.decode import decode
from consumer.errors import BrokerUnavailable, PermanentError
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.publish import Outbox, Publisher, Stage, dead_letter
from consumer.settings import Ordering, Settings
from consumer.source import Envelope, KafkaSource
from schemas import DeadLetter, UsageEvent, Verdict, make_event_id

log = structlog.get_logger(__name__)

#: Texts longer than this are tokenized in a worker thread (~1 ms of tiktoken on the loop).
_ADMIT_INLINE_CHARS = 20_000


@dataclass
class Stats:
    """Counters for the run's summary (metrics proper are exported by the operations layer)."""

    fetched: int = 0
    verdicts: int = 0
    dead_letters: int = 0
    usage_events: int = 0
    commits: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Pipeline:
    """Runs messages through the stages with bounded concurrency and in-order commits."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: AIOKafkaConsumer,
        publisher: Publisher,
        admitter: Admitter,
        classifier: Classifier,
        metrics: Metrics,
        outbox: Outbox | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox  # exactly-once: outputs commit with their offsets
        self.consumer = consumer
        self.source = KafkaSource(consumer)
        self.publisher = publisher
        self.admitter = admitter
        self.classifier = classifier
        self.batcher = batcher  # micro-batching: short messages share a chat call
        self.policy_version = classifier.policy.version
        self.tracker = OffsetTracker()
        self.stats = Stats()
        self.metrics = metrics
        metrics.watch_in_flight(self.tracker.in_flight)
        metrics.watch_assignment(lambda: len(consumer.assignment()))
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        self._group: asyncio.TaskGroup | None = None
        self._last_activity = time.monotonic()
        self._paused_for_provider = False
        self._assigned_once = False  # --exit-when-idle counts only once the group assigned us
        self._room = asyncio.Event()  # set whenever a message leaves the window
        self._tails: dict[tuple[object, ...], asyncio.Task[None]] = {}  # last task per chain

    async def run(self, stop: asyncio.Event, *, exit_when_idle: float | None = None) -> None:
        """Process until ``stop`` is set (or idle), then drain within the grace period."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                committer = group.create_task(self._commit_loop(), name="commit-loop")
                await self._fetch_loop(stop, exit_when_idle)
                await self._drain()
                committer.cancel()
        finally:
            self._group = None
            await self.commit()
            # What is still tracked was cancelled and will be redelivered. Let go of it, so the
            # revoke that closing the consumer triggers does not wait out the grace period for
            # work that can no longer finish.
            everything = self.tracker.partitions()
            self.tracker.forget(everything)
            if self.outbox is not None:
                self.outbox.drop(everything)

    async def _fetch_loop(self, stop: asyncio.Event, exit_when_idle: float | None) -> None:
        while not stop.is_set():
            self._room.clear()  # before reading the window: a completion after this wakes us
            room = self.settings.max_in_flight - self.tracker.in_flight() - len(self.outbox or ())
            if self._intake_paused(not self.classifier.breaker.is_closed):
                room = 0  # provider down: stop intake, let lag grow, dead-letter nothing
            envelopes = await self.source.fetch(room)
            if room <= 0:
                # Full: the poll above only kept us in the group. Wake on the first completion
                # (or after a second, to poll again) instead of sleeping a fetch timeout.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._room.wait()
            now = time.monotonic()
            if envelopes:
                self._last_activity = now
            elif (
                exit_when_idle is not None
                and self._assigned_once  # joining a group can take a session timeout
                and self.tracker.in_flight() == 0
                and now - self._last_activity >= exit_when_idle
            ):
                log.info("idle, stopping", idle_s=exit_when_idle)
                return
            for envelope in envelopes:
                self._start(envelope)
        log.info("stop requested: intake stopped, draining", in_flight=self.tracker.in_flight())

    def _intake_paused(self, paused: bool) -> bool:
        """Log each change of the provider-driven intake pause; return ``paused``."""
        if paused != self._paused_for_provider:
            self._paused_for_provider = paused
            if paused:
                log.warning("intake paused: the model provider is down (circuit open)")
            else:
                log.warning("intake resumed: the model provider answers again")
        return paused

    def _start(self, envelope: Envelope) -> None:
        assert self._group is not None
        tp = TopicPartition(envelope.topic, envelope.partition)
        self.tracker.track(tp, envelope.offset)
        self.stats.fetched += 1
        self.metrics.fetched()
        chain = self._chain(tp, envelope)
        after = self._tails.get(chain) if chain is not None else None
        task = self._group.create_task(self._process(tp, envelope, after))
        tasks = self._tasks[tp]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if chain is not None:
            self._tails[chain] = task
            task.add_done_callback(lambda done: self._release_chain(chain, done))

    def _release_chain(self, chain: tuple[object, ...], done: asyncio.Task[None]) -> None:
        """Forget a chain whose last task finished (keeps ``_tails`` bounded by the window)."""
        if self._tails.get(chain) is done:
            del self._tails[chain]

    def _chain(self, tp: TopicPartition, envelope: Envelope) -> tuple[object, ...] | None:
        """Messages in one chain run in offset order; ``None``: no ordering constraint."""
        ordering = self.settings.ordering
        if ordering is Ordering.PARTITION:
            return (tp,)
        if ordering is Ordering.KEY and envelope.key is not None:
            return (tp, envelope.key)
        return None

    async def _process(
        self, tp: TopicPartition, envelope: Envelope, after: asyncio.Task[None] | None = None
    ) -> None:
        """One message through every stage; done only when its outputs are acknowledged.

        ``after`` is the previous message of the same ordering chain: this one starts only once
        that one's outputs are acknowledged, so a chain's verdicts are published in offset order.
        """
        if after is not None:
            await asyncio.wait([after])
        event_id = make_event_id(envelope.source, self.policy_version, "verdict")
        with structlog.contextvars.bound_contextvars(
            partition=envelope.partition, offset=envelope.offset, event_id=event_id
        ):
            await self._stages(envelope)
        self.tracker.done(tp, envelope.offset)
        self._room.set()
        self._last_activity = time.monotonic()

    async def _stages(self, envelope: Envelope) -> None:
        settings = self.settings
        stage: Stage = "decode"
        try:
            request = decode(
                envelope,
                input_format=settings.input_format,
                max_message_bytes=settings.max_message_bytes,
            )
            stage = "admit"
            if len(request.text) + len(request.context or "") > _ADMIT_INLINE_CHARS:
                # tiktoken releases the GIL: a megabyte of text is counted off the event loop.
                admitted = await asyncio.to_thread(self.admitter.admit, request)
            else:
                admitted = self.admitter.admit(request)
            log.debug("classifying", content=admitted.text, tokens=admitted.content_tokens)
        except PermanentError as exc:
            await self._dead_letter(envelope, exc, stage, attempts=0)
        else:
            # A batcher hands each message its own result, published and marked done alone.
            classify = self.batcher.classify if self.batcher else self.classifier.classify
            result = await classify(admitted, envelope.source)
            if result.failure is not None:
                await self._dead_letter(
                    envelope, result.failure, "classify", len(result.usage), result.usage
                )
            else:
                await self._publish(envelope, verdict=result.verdict, usage=result.usage)
                self.stats.verdicts += 1
                self.metrics.verdict()

    async def _dead_letter(
        self,
        envelope: Envelope,
        error: PermanentError,
        stage: Stage,
        attempts: int,
        usage: list[UsageEvent] | None = None,
    ) -> None:
        dead = dead_letter(
            envelope,
            error,
            stage=stage,
            policy_version=self.policy_version,
            attempts=attempts,
            redact=self.settings.redact_dead_letters,
        )
        log.info(
            "dead letter",
            stage=stage,
            reason=error.kind,
            detail=error.message[:200],
        )
        await self._publish(envelope, dead=dead, usage=usage or [])
        self.stats.dead_letters += 1
        self.stats.dead_letter_reasons[error.kind] += 1
        self.metrics.dead_letter(stage, error.kind)

    async def _publish(
        self,
        envelope: Envelope,
        *,
        verdict: Verdict | None = None,
        usage: list[UsageEvent] | None = None,
        dead: DeadLetter | None = None,
    ) -> None:
        """Publish, retrying while the broker is unavailable (outputs are idempotent by id)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(BrokerUnavailable),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            stop=stop_never,
            reraise=True,
        )
        records = self.publisher.records(envelope, verdict=verdict, usage=usage or (), dead=dead)
        if self.outbox is not None:
            tp = TopicPartition(envelope.topic, envelope.partition)
            self.outbox.stage(tp, envelope.offset, records)  # sent with its offset, in one txn
        else:
            async for attempt in retrying:
                with attempt:
                    await self.publisher.publish(records)
        self.stats.usage_events += len(usage or ())

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_s)
            await self.commit()
            await self._observe_lag()

    async def _observe_lag(self) -> None:
        """Lag per assigned partition: its high watermark minus its commit point.

        The high watermark comes with each fetch response, so a partition is reported from its
        first fetch on. The commit point is the tracker's, or, for a partition with nothing
        tracked since assignment, the consumer's position (its committed start).
        """
        for tp in self.consumer.assignment():
            try:
                end = self.consumer.highwater(tp)
                point = self.tracker.commit_point(tp)
                if end is not None and point is None:
                    point = await self.consumer.position(tp)
            except (AssertionError, IllegalStateError):
                continue  # revoked meanwhile (aiokafka asserts the assignment)
            if end is not None and point is not None:
                self.metrics.lag(tp, max(0, end - point))

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit each partition's contiguous done watermark (all, or ``only`` these)."""
        offsets = self.tracker.committable()
        if only is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in only}
        if not offsets:
            return
        started = time.perf_counter()
        try:
            if self.outbox is not None:
                await self.outbox.commit(offsets)
            else:
                await self.consumer.commit(offsets)
        except (KafkaError, BrokerUnavailable) as exc:
            # Typically a rebalance in progress: the work is redone by the next owner.
            log.warning("commit failed; uncommitted work will be redelivered", error=str(exc))
            self.metrics.commit_failed()
            return
        self.metrics.commit(time.perf_counter() - started)
        self.tracker.mark_committed(offsets)
        self.stats.commits += 1

    async def _drain(self) -> None:
        """Let in-flight work finish within the grace period; cancel what is left."""
        everything = self.tracker.partitions()
        grace = self.settings.shutdown_grace_s
        if not await self.tracker.drained(everything, timeout=grace):
            log.warning("grace period over; unfinished work will be redelivered", grace_s=grace)
        await self._cancel(everything)

    async def _cancel(self, partitions: set[TopicPartition]) -> None:
        tasks = [t for tp in partitions for t in self._tasks.pop(tp, set())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes ``revoked`` away: drain them, commit them, forget them."""
        self.metrics.forget(revoked)
        mine = revoked & self.tracker.partitions()
        if not mine:
            return
        grace = self.settings.shutdown_grace_s
        drained = await self.tracker.drained(mine, timeout=grace)
        await self.commit(only=mine)
        await self._cancel(mine)
        self.tracker.forget(mine)
        if self.outbox is not None:
            self.outbox.drop(mine)
        log.info("partitions revoked", partitions=len(mine), drained=drained)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """New partitions (maybe none): tracking starts at each first record; idle restarts."""
        self._assigned_once = True
        self._last_activity = time.monotonic()
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))
