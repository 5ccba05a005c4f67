"""The pipeline: owns the work window, the per-key ordering and the rebalances.

    source -> stages (decode -> admit -> classify -> deliver) -> offsets -> commits

One task fetches; one task per message runs it through the stages (:mod:`.stages`); one task
commits the contiguous done watermark every ``commit_interval_s`` (:mod:`.commits`). A message
is marked done only once its delivery (:mod:`.delivery`, chosen by :mod:`consumer.app`) has
taken all its outputs, so a commit can never pass an output that might be lost.

What keeps it from wedging or crashing:

- **Bounded window.** At most ``max_in_flight`` records are held between fetch and release:
  in flight, or done but queued behind an unfinished one (exactly-once: done and waiting for
  their transaction), so one stuck record cannot let the finished ones behind it pile up.
- **Revokes always let go.** ``on_revoked`` forgets and drops what it revoked whatever
  happens; an unexpected error there stops the service (``RebalanceFailed``) instead of being
  swallowed by aiokafka, which only logs what a rebalance listener raises.
- **Offsets that go backwards** (a seek, an offset reset, a re-assignment) restart that
  partition's tracking with a WARNING; late completions of the old work are ignored (epochs).
- **Fatal errors stop it**: a fatal commit or a failed revoke ends ``run`` with that error, and
  no final commit is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.errors import FatalError, RebalanceFailed
from consumer.model.circuit import CircuitBreaker
from consumer.ops.metrics import Metrics, kafka_connected
from consumer.pipeline.commits import Committer
from consumer.pipeline.delivery import Delivery
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.source import Envelope, KafkaSource
from consumer.pipeline.stages import Stages
from consumer.settings import Ordering, Settings

__all__ = ["Pipeline"]

log = structlog.get_logger(__name__)


class Pipeline:
    """Runs messages through the stages with bounded concurrency and in-order commits.

    ``stages`` (with its classify) and ``delivery`` (the same one the stages deliver to) are
    built by the caller (:mod:`consumer.app`): the pipeline runs the same way with or without
    micro-batching, at least once or exactly once. ``breaker`` is the model provider's circuit
    breaker: while it is open, intake stops.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: AIOKafkaConsumer,
        stages: Stages,
        delivery: Delivery,
        breaker: CircuitBreaker,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.source = KafkaSource(consumer)
        self.stages = stages
        self.delivery = delivery
        self.breaker = breaker
        self.metrics = metrics
        self.tracker = OffsetTracker()
        self._room = asyncio.Event()  # set whenever a message leaves the window (or on fatal)
        self.committer = Committer(
            settings,
            consumer=consumer,
            tracker=self.tracker,
            delivery=delivery,
            metrics=metrics,
            on_fatal=self._room.set,  # wake a fetch loop waiting for room: it raises the error
        )
        metrics.watch_in_flight(self.tracker.in_flight)
        metrics.watch_oldest_in_flight(self._oldest_age)
        metrics.watch_assignment(lambda: len(consumer.assignment()))
        metrics.watch_broker(lambda: kafka_connected(consumer))
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        # Bumped whenever a partition's tracking restarts: completions of older work are stale.
        self._epochs: dict[TopicPartition, int] = defaultdict(int)
        self._group: asyncio.TaskGroup | None = None
        self._last_activity = time.monotonic()
        self._paused_for_provider = False
        self._assigned_once = False  # --exit-when-idle counts only once the group assigned us
        self._tails: dict[tuple[object, ...], asyncio.Task[None]] = {}  # last task per chain

    async def run(self, stop: asyncio.Event, *, exit_when_idle: float | None = None) -> None:
        """Process until ``stop`` is set (or idle), then drain within the grace period."""
        stopping = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                committer = group.create_task(self.committer.loop(stopping), name="commit-loop")
                await self._fetch_loop(stop, exit_when_idle)
                await self._drain()
                stopping.set()  # cooperatively: never cancelled in the middle of a transaction
                await committer
        finally:
            self._group = None
            if self.committer.fatal is None:
                await self.committer.commit()
            # What is still tracked was cancelled and will be redelivered. Let go of it, so the
            # revoke that closing the consumer triggers does not wait out the grace period for
            # work that can no longer finish.
            self._let_go(self.tracker.partitions())

    async def _fetch_loop(self, stop: asyncio.Event, exit_when_idle: float | None) -> None:
        while not stop.is_set():
            self._room.clear()  # before reading the window: a completion after this wakes us
            if self.committer.fatal is not None:
                raise self.committer.fatal  # from a rebalance callback, which aiokafka swallows
            room = self.settings.max_in_flight - self.delivery.held(self.tracker)
            # Open circuit: no intake, except once a probe is due (even with nothing in flight,
            # one fetched message becomes the probe).
            if self._intake_paused(not self.breaker.admits_intake()):
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

    def _oldest_age(self) -> float:
        oldest = self.tracker.oldest()
        return 0.0 if oldest is None else oldest[2]

    def _intake_paused(self, paused: bool) -> bool:
        """Log each change of the provider-driven intake pause; return ``paused``."""
        if paused != self._paused_for_provider:
            self._paused_for_provider = paused
            if paused:
                log.warning("intake paused: the model provider is down (circuit open)")
            elif self.breaker.is_closed:
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
        """One message through every stage; done only when its outputs are delivered.

        ``after`` is the previous message of the same ordering chain: this one starts only once
        that one's outputs are delivered, so a chain's verdicts are published in offset order.
        ``epoch`` is the partition's tracking epoch when the message was fetched: if the
        partition was reset meanwhile, the same offset may be tracked anew, and this completion
        must not mark it done.
        """
        if after is not None:
            await asyncio.wait([after])
        await self.stages.run(envelope)
        if self._epochs[tp] != epoch:
            return
        self.tracker.done(tp, envelope.offset)
        self._room.set()
        self._last_activity = time.monotonic()

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
        """Forget ``partitions`` now: cancel their work, drop their tracking and what waits.

        Their unfinished records are redelivered to whoever reads them next; a completion of
        the cancelled work that still arrives is stale (the epoch moved) and ignored.
        """
        for tp in partitions:
            for task in self._tasks.pop(tp, set()):
                task.cancel()
            self._epochs[tp] += 1
        self.tracker.forget(partitions)
        self.delivery.drop(partitions)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes ``revoked`` away: drain them, commit them, forget them.

        Whatever happens, they are forgotten at the end (else the next assignment of the same
        partition would meet stale tracking). An unexpected error stops the service: aiokafka
        only logs what a listener raises.
        """
        self.committer.revoked(revoked)
        mine = revoked & self.tracker.partitions()
        if not mine:
            return
        drained = False
        try:
            drained = await self.tracker.drained(mine, timeout=self.settings.shutdown_grace_s)
            await self.committer.commit(only=mine)
            await self._cancel(mine)
        except FatalError as exc:
            self.committer.fail(exc)
        except Exception as exc:
            log.exception("rebalance callback failed")
            self.committer.fail(RebalanceFailed(f"handling revoked partitions failed: {exc!r}"))
        finally:
            self._let_go(mine)
            self.metrics.forget(revoked)  # a lag read while they drained
        log.info("partitions revoked", partitions=len(mine), drained=drained)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """New partitions (maybe none): tracking starts at each first record; idle restarts."""
        self.committer.assigned(assigned)
        stale = assigned & self.tracker.partitions()
        if stale:  # only if a revoke could not let go of them; start them afresh
            self._let_go(stale)
        self._assigned_once = True
        self._last_activity = time.monotonic()
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))
