"""The pipeline: wires the stages and owns the work window, commits and rebalances.

    source -> decode -> admit -> limit+classify -> publish -> offsets

One task fetches; one task per message runs it through the stages; one task commits the
contiguous done watermark every ``commit_interval_s``. A message is marked done only after the
broker acknowledged all its outputs, so a commit can never pass an output that might be lost.

What keeps it from wedging or crashing:

- **Bounded window.** At most ``max_in_flight`` records are held between fetch and release:
  in flight, or done but queued behind an unfinished one (exactly-once: done and waiting for
  their transaction), so one stuck record cannot let the finished ones behind it pile up.
- **One commit at a time.** Commits (and exactly-once transactions) hold one lock and are
  shielded from cancellation, so a rebalance or a stop never starts a second transaction over
  a running one; the commit loop stops cooperatively. Only assigned partitions are committed.
- **Revokes always let go.** ``on_revoked`` forgets and drops what it revoked whatever
  happens; an unexpected error there stops the service (``RebalanceFailed``) instead of being
  swallowed by aiokafka.
- **Offsets that go backwards** (a seek, an offset reset, a re-assignment) restart that
  partition's tracking with a WARNING; late completions of the old work are ignored (epochs).
- **Outputs Kafka can never take** (``PublishRejected``: too large, invalid) turn the input
  into a dead letter, cut to fit the dead-letter topic; retriable errors are retried with a
  WARNING each; fatal ones (fenced, not authorized) stop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_random_exponential,
)

from consumer.errors import (
    BrokerRejected,
    FatalError,
    ModstreamError,
    PermanentError,
    PublishRejected,
    RebalanceFailed,
)
from consumer.kafka.translate import translate
from consumer.model.batch import Batcher
from consumer.model.classify import Classifier
from consumer.ops.metrics import Metrics, kafka_connected
from consumer.pipeline.admit import Admitter
from consumer.pipeline.decode import decode
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.publish import Outbox, OutRecord, Publisher, Stage, dead_letter
from consumer.pipeline.source import Envelope, KafkaSource
from consumer.retry import retried
from consumer.settings import Ordering, Settings
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
        dead_letter_max_bytes: int | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox  # exactly-once: outputs commit with their offsets
        self.consumer = consumer
        self.source = KafkaSource(consumer)
        self.publisher = publisher
        self.admitter = admitter
        self.classifier = classifier
        self.batcher = batcher  # micro-batching: short messages share a chat call
        self.dead_letter_max_bytes = dead_letter_max_bytes  # the dead-letter topic's limit
        self.policy_version = classifier.policy.version
        self.tracker = OffsetTracker()
        self.stats = Stats()
        self.metrics = metrics
        metrics.watch_in_flight(self.tracker.in_flight)
        metrics.watch_oldest_in_flight(self._oldest_age)
        metrics.watch_assignment(lambda: len(consumer.assignment()))
        metrics.watch_broker(lambda: kafka_connected(consumer))
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        # Bumped whenever a partition's tracking restarts: completions of older work are stale.
        self._epochs: dict[TopicPartition, int] = defaultdict(int)
        self._commit_lock = asyncio.Lock()
        self._commits: set[asyncio.Task[None]] = set()  # running (shielded) commits
        self._fatal: FatalError | None = None  # set once the service must stop
        self._stuck_reported: tuple[TopicPartition, int] | None = None
        # Revoked, but still in aiokafka's assignment until the group hands out the next one:
        # their lag is another member's to report.
        self._revoked: set[TopicPartition] = set()
        self._group: asyncio.TaskGroup | None = None
        self._last_activity = time.monotonic()
        self._paused_for_provider = False
        self._assigned_once = False  # --exit-when-idle counts only once the group assigned us
        self._room = asyncio.Event()  # set whenever a message leaves the window
        self._tails: dict[tuple[object, ...], asyncio.Task[None]] = {}  # last task per chain

    async def run(self, stop: asyncio.Event, *, exit_when_idle: float | None = None) -> None:
        """Process until ``stop`` is set (or idle), then drain within the grace period."""
        stopping = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                committer = group.create_task(self._commit_loop(stopping), name="commit-loop")
                await self._fetch_loop(stop, exit_when_idle)
                await self._drain()
                stopping.set()  # cooperatively: never cancelled in the middle of a transaction
                await committer
        finally:
            self._group = None
            if self._fatal is None:
                await self.commit()
            # What is still tracked was cancelled and will be redelivered. Let go of it, so the
            # revoke that closing the consumer triggers does not wait out the grace period for
            # work that can no longer finish.
            self._let_go(self.tracker.partitions())

    async def _fetch_loop(self, stop: asyncio.Event, exit_when_idle: float | None) -> None:
        while not stop.is_set():
            self._room.clear()  # before reading the window: a completion after this wakes us
            if self._fatal is not None:
                raise self._fatal  # from a rebalance callback, which aiokafka would swallow
            room = self.settings.max_in_flight - self._occupied()
            # Open circuit: no intake, except once a probe is due (even with nothing in flight,
            # one fetched message becomes the probe).
            if self._intake_paused(not self.classifier.breaker.admits_intake()):
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
                and self.tracker.held() == 0
                and now - self._last_activity >= exit_when_idle
            ):
                log.info("idle, stopping", idle_s=exit_when_idle)
                return
            for envelope in envelopes:
                self._start(envelope)
        log.info("stop requested: intake stopped, draining", in_flight=self.tracker.in_flight())

    def _occupied(self) -> int:
        """Records the window holds: what memory use is bounded by."""
        if self.outbox is not None:
            # The outbox holds the outputs of every done record until its transaction, those
            # queued behind an unfinished one included.
            return self.tracker.in_flight() + len(self.outbox)
        return self.tracker.held()

    def _oldest_age(self) -> float:
        oldest = self.tracker.oldest()
        return 0.0 if oldest is None else oldest[2]

    def _fail(self, error: FatalError) -> None:
        """Stop the service with ``error`` (the first one wins)."""
        if self._fatal is None:
            self._fatal = error
            self._room.set()  # wake a fetch loop waiting for room: it raises the error

    def _intake_paused(self, paused: bool) -> bool:
        """Log each change of the provider-driven intake pause; return ``paused``."""
        if paused != self._paused_for_provider:
            self._paused_for_provider = paused
            if paused:
                log.warning("intake paused: the model provider is down (circuit open)")
            elif self.classifier.breaker.is_closed:
                log.warning("intake resumed: the model provider answers again")
            else:
                log.info("intake resumed for a probe: the next message tests the provider")
        return paused

    def _start(self, envelope: Envelope) -> None:
        assert self._group is not None
        tp = TopicPartition(envelope.topic, envelope.partition)
        if self.tracker.goes_back(tp, envelope.offset):
            log.warning(
                "offsets went backwards (seek, offset reset or re-assignment): restarting the "
                "partition's tracking; its unfinished work is redone",
                topic=tp.topic,
                partition=tp.partition,
                offset=envelope.offset,
                tracked_up_to=self.tracker.commit_point(tp),
            )
            self.metrics.partition_reset()
            self._let_go({tp})
        self.tracker.track(tp, envelope.offset)
        self.stats.fetched += 1
        self.metrics.fetched()
        chain = self._chain(tp, envelope)
        after = self._tails.get(chain) if chain is not None else None
        task = self._group.create_task(self._process(tp, envelope, self._epochs[tp], after))
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
        self,
        tp: TopicPartition,
        envelope: Envelope,
        epoch: int,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        """One message through every stage; done only when its outputs are acknowledged.

        ``after`` is the previous message of the same ordering chain: this one starts only once
        that one's outputs are acknowledged, so a chain's verdicts are published in offset order.
        ``epoch`` is the partition's tracking epoch when the message was fetched: if the
        partition was reset meanwhile, the same offset may be tracked anew, and this completion
        must not mark it done.
        """
        if after is not None:
            await asyncio.wait([after])
        event_id = make_event_id(envelope.source, self.policy_version, "verdict")
        with structlog.contextvars.bound_contextvars(
            partition=envelope.partition, offset=envelope.offset, event_id=event_id
        ):
            await self._stages(envelope)
        if self._epochs[tp] != epoch:
            return
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
                    envelope, result.failure, "classify", result.attempts, result.usage
                )
                return
            try:
                await self._publish(envelope, verdict=result.verdict, usage=result.usage)
            except PublishRejected as exc:
                await self._dead_letter(envelope, exc, "publish", result.attempts, result.usage)
                return
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
            max_bytes=None
            if self.dead_letter_max_bytes is None
            else self.dead_letter_max_bytes - len(envelope.key or b""),
        )
        log.info(
            "dead letter",
            stage=stage,
            reason=error.kind,
            detail=error.message[:200],
            payload_truncated=dead.payload_truncated or None,
        )
        try:
            await self._publish(envelope, dead=dead, usage=usage or [])
        except PublishRejected as exc:
            # Cut to fit, a dead letter is refused only when something is badly wrong with the
            # dead-letter topic; going on would lose the input.
            raise BrokerRejected(
                f"the dead-letter topic {self.settings.dlq_topic!r} refused a dead letter: "
                f"{exc.message}"
            ) from exc
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
        """Publish one input's outputs (exactly-once: stage them for the next transaction).

        Retriable errors are retried (outputs are idempotent by ``event_id``);
        ``PublishRejected`` (an output Kafka can never take) is raised to the caller.
        Exactly-once: usage events go out at once, outside the transaction, so the calls of a
        range whose transaction a crash aborts are still recorded (at least once, by id).
        """
        records = self.publisher.records(envelope, verdict=verdict, usage=usage or (), dead=dead)
        if self.outbox is not None:
            usage_topic = self.publisher.topics.usage
            await self._send([r for r in records if r.topic == usage_topic])
            tp = TopicPartition(envelope.topic, envelope.partition)
            staged = [r for r in records if r.topic != usage_topic]
            self.outbox.stage(tp, envelope.offset, staged)  # sent with its offset, in one txn
        else:
            await self._send(records)
        self.stats.usage_events += len(usage or ())

    async def _send(self, records: list[OutRecord]) -> None:
        """Send until acknowledged, retrying what is retriable with a WARNING each time."""
        if not records:
            return
        await retried(
            functools.partial(self.publisher.publish, records),
            lambda: AsyncRetrying(
                retry=retry_if_exception(_retriable),
                wait=wait_random_exponential(multiplier=0.2, max=5),
                stop=stop_never,
                reraise=True,
                before_sleep=self._publish_retry,
            ),
            _retriable,
        )

    def _publish_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.__cause__ if exc is not None else None
        reason = type(cause or exc).__name__
        self.metrics.publish_retry(reason)
        log.warning(
            "publishing outputs failed; retrying",
            error=str(exc),
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 2),
        )

    async def _commit_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.commit_interval_s):
                    await stopping.wait()
            await self.commit()
            await self._observe_lag()
            self._report_stuck()

    def _report_stuck(self) -> None:
        """Log the oldest in-flight message once it has been in flight too long."""
        oldest = self.tracker.oldest()
        if oldest is None or oldest[2] < self.settings.stuck_after_s:
            return
        tp, offset, age = oldest
        if self._stuck_reported != (tp, offset):
            self._stuck_reported = (tp, offset)
            log.warning(
                "message stuck in flight",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                in_flight_s=round(age, 1),
                stuck_after_s=self.settings.stuck_after_s,
            )

    async def _observe_lag(self) -> None:
        """Lag per assigned partition: its high watermark minus its acknowledged commit.

        The high watermark comes with each fetch response, so a partition is reported from its
        first fetch on. The commit is the last one Kafka acknowledged (what the group's
        committed offset says, so the metric and ``kafka-consumer-groups`` agree: a lag of 0
        means committed, not merely done), or, for a partition with nothing tracked since
        assignment, the consumer's position (its committed start). A partition whose first
        commit is still to come is not reported until it is (within a commit interval).
        """
        for tp in self.consumer.assignment() - self._revoked:
            try:
                end = self.consumer.highwater(tp)
                point = self.tracker.committed(tp)
                if end is not None and point is None and self.tracker.commit_point(tp) is None:
                    point = await self.consumer.position(tp)
            except (AssertionError, IllegalStateError):
                continue  # revoked meanwhile (aiokafka asserts the assignment)
            except KafkaError:
                continue  # the broker is away: no lag figure this time, the next one will do
            if end is not None and point is not None:
                self.metrics.lag(tp, max(0, end - point))

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit each partition's contiguous done watermark (all, or ``only`` these).

        One commit at a time (a lock), and shielded: if the caller is cancelled (a task group
        aborting, a stop), the commit or transaction still runs to its end, and the next one
        waits for it. A fatal error (fenced, not authorized) is raised and stops the service.
        """
        task = asyncio.ensure_future(self._commit(only))
        self._commits.add(task)
        task.add_done_callback(_retrieved)
        task.add_done_callback(self._commits.discard)
        await asyncio.shield(task)

    async def _commit(self, only: set[TopicPartition] | None) -> None:
        async with self._commit_lock:
            if self._fatal is not None:
                return  # the producer or the group is unusable; stopping
            assigned = self.consumer.assignment()  # aiokafka rejects a commit of any other
            offsets = {
                tp: o
                for tp, o in self.tracker.committable().items()
                if tp in assigned and (only is None or tp in only)
            }
            if not offsets:
                return
            started = time.perf_counter()
            try:
                if self.outbox is not None:
                    await self.outbox.commit(offsets)
                else:
                    try:
                        await self.consumer.commit(offsets)
                    except KafkaError as exc:
                        raise translate(exc, "an offset commit") from exc
            except FatalError as exc:
                self._fail(exc)
                raise
            except ModstreamError as exc:
                # Typically a rebalance in progress or the broker away: the work is redone by
                # the next owner, or committed by the next commit.
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

    def _let_go(self, partitions: set[TopicPartition]) -> None:
        """Forget ``partitions`` now: cancel their work, drop their tracking and staged outputs.

        Their unfinished records are redelivered to whoever reads them next; a completion of
        the cancelled work that still arrives is stale (the epoch moved) and ignored.
        """
        for tp in partitions:
            for task in self._tasks.pop(tp, set()):
                task.cancel()
            self._epochs[tp] += 1
        self.tracker.forget(partitions)
        if self.outbox is not None:
            self.outbox.drop(partitions)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes ``revoked`` away: drain them, commit them, forget them.

        Whatever happens, they are forgotten at the end (else the next assignment of the same
        partition would meet stale tracking). An unexpected error stops the service: aiokafka
        only logs what a listener raises.
        """
        self._revoked |= revoked
        self.metrics.forget(revoked)
        mine = revoked & self.tracker.partitions()
        if not mine:
            return
        drained = False
        try:
            drained = await self.tracker.drained(mine, timeout=self.settings.shutdown_grace_s)
            await self.commit(only=mine)
            await self._cancel(mine)
        except FatalError as exc:
            self._fail(exc)
        except Exception as exc:
            log.exception("rebalance callback failed")
            self._fail(RebalanceFailed(f"handling revoked partitions failed: {exc!r}"))
        finally:
            self._let_go(mine)
            self.metrics.forget(revoked)  # a lag read while they drained
        log.info("partitions revoked", partitions=len(mine), drained=drained)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """New partitions (maybe none): tracking starts at each first record; idle restarts."""
        self._revoked -= assigned
        stale = assigned & self.tracker.partitions()
        if stale:  # only if a revoke could not let go of them; start them afresh
            self._let_go(stale)
        self._assigned_once = True
        self._last_activity = time.monotonic()
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))


def _retriable(error: BaseException) -> bool:
    return isinstance(error, ModstreamError) and error.retriable


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a shielded commit's outcome as seen: its caller may have been cancelled."""
    if not task.cancelled():
        task.exception()
