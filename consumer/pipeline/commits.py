"""Commits: each partition's done watermark, one commit at a time, and how far behind it is.

:class:`Committer` commits what the offset tracker says is safe, through the delivery (the
consumer group, or a transaction with the staged outputs), every ``commit_interval_s`` and
whenever a revoke or a stop asks. What keeps it safe:

- **One commit at a time.** Commits hold one lock and are shielded from cancellation, so a
  rebalance or a stop never starts a second transaction over a running one (aiokafka raises
  ``AssertionError`` on a second ``transaction()`` while one is open), and a commit a cancelled
  caller started still ends. The loop stops cooperatively, never in the middle of one.
- **Only assigned partitions.** ``consumer.commit()`` rejects the whole call if one partition is
  not assigned (mid-rebalance, the assignment shrinks before any callback runs).
- **Fatal is final.** A fatal error (fenced, not authorized) is kept as :attr:`Committer.fatal`:
  nothing more is committed, and the pipeline stops with it. An expected refusal (a rebalance
  in progress, the broker away) is a WARNING: the next commit, or the next owner, does the work.

Each round of the loop also reports the lag per partition and a message stuck in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from consumer.errors import FatalError, ModstreamError
from consumer.ops.metrics import Metrics
from consumer.pipeline.delivery import Delivery
from consumer.pipeline.offsets import OffsetTracker
from consumer.settings import Settings

__all__ = ["Committer"]

log = structlog.get_logger(__name__)


class Committer:
    """Commits the done watermark through the delivery; reports lag and stuck messages."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: AIOKafkaConsumer,
        tracker: OffsetTracker,
        delivery: Delivery,
        metrics: Metrics,
        on_fatal: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.tracker = tracker
        self.delivery = delivery
        self.metrics = metrics
        #: The first fatal error (the service must stop); ``None`` while it may go on.
        self.fatal: FatalError | None = None
        self._on_fatal = on_fatal  # wakes the pipeline's fetch loop, which raises it
        self._lock = asyncio.Lock()
        self._running: set[asyncio.Task[None]] = set()  # running (shielded) commits
        self._stuck_reported: tuple[TopicPartition, int] | None = None
        # Revoked, but still in aiokafka's assignment until the group hands out the next one:
        # their lag is another member's to report.
        self._revoked: set[TopicPartition] = set()

    def fail(self, error: FatalError) -> None:
        """Stop the service with ``error`` (the first one wins): nothing more is committed."""
        if self.fatal is None:
            self.fatal = error
            self._on_fatal()

    def revoked(self, partitions: set[TopicPartition]) -> None:
        """``partitions`` were revoked: their lag is no longer ours to report."""
        self._revoked |= partitions
        self.metrics.forget(partitions)

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """``partitions`` are ours (again): report their lag."""
        self._revoked -= partitions

    async def loop(self, stopping: asyncio.Event) -> None:
        """Commit, read the lag and look for a stuck message each interval, until ``stopping``."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.commit_interval_s):
                    await stopping.wait()
            await self.commit()
            await self.observe_lag()
            self._report_stuck()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit each partition's contiguous done watermark (all, or ``only`` these).

        One commit at a time (a lock), and shielded: if the caller is cancelled (a task group
        aborting, a stop), the commit or transaction still runs to its end, and the next one
        waits for it. A fatal error (fenced, not authorized) is raised and stops the service.
        """
        task = asyncio.ensure_future(self._commit(only))
        self._running.add(task)
        task.add_done_callback(_retrieved)
        task.add_done_callback(self._running.discard)
        await asyncio.shield(task)

    async def _commit(self, only: set[TopicPartition] | None) -> None:
        async with self._lock:
            if self.fatal is not None:
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
                await self.delivery.commit(offsets)
            except FatalError as exc:
                self.fail(exc)
                raise
            except ModstreamError as exc:
                # Typically a rebalance in progress or the broker away: the work is redone by
                # the next owner, or committed by the next commit.
                log.warning("commit failed; uncommitted work will be redelivered", error=str(exc))
                self.metrics.commit_failed()
                return
            self.metrics.commit(time.perf_counter() - started)
            self.tracker.mark_committed(offsets)

    async def observe_lag(self) -> None:
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


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a shielded commit's outcome as seen: its caller may have been cancelled."""
    if not task.cancelled():
        task.exception()
