"""Delivery: how one input's outputs reach Kafka, and how its offset is committed.

The stages hand every finished input's outputs (serialized by
:class:`~consumer.pipeline.publish.Publisher`) to one :class:`Delivery`; the committer commits
the done watermark through it. :mod:`consumer.app` picks the implementation from
``MODSTREAM_DELIVERY``, so the pipeline never asks which:

- :class:`AtLeastOnce` (the default): every output is sent and acknowledged before the input
  counts as done, and offsets are committed through the consumer group. A crash between the
  two redoes the input; its outputs are idempotent by ``event_id``.
- :class:`ExactlyOnce`: usage events are sent at once, outside any transaction, so every
  answered model call is recorded even when a crash aborts one; verdicts and dead letters wait
  in the :class:`~consumer.pipeline.outbox.Outbox` and go out in one transaction with their
  input offsets.

Both retry what Kafka refuses for now (``BrokerUnavailable``) with a WARNING each, without end:
the outputs are idempotent, and giving up would lose the input. ``PublishRejected`` (an output
Kafka can never take) is raised to the caller, which dead-letters the input.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_random_exponential,
)

from consumer.errors import ModstreamError
from consumer.kafka.translate import translate
from consumer.ops.metrics import Metrics
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.outbox import Outbox
from consumer.pipeline.publish import OutRecord, Publisher
from consumer.pipeline.source import Envelope
from consumer.retry import retried

__all__ = ["AtLeastOnce", "Delivery", "ExactlyOnce"]

log = structlog.get_logger(__name__)


class Delivery(Protocol):
    """Where one input's outputs go once it is finished, and how offsets commit after them."""

    async def deliver(self, envelope: Envelope, records: Sequence[OutRecord]) -> None:
        """Send (or stage) one input's outputs; once this returns, the input counts as done.

        Raises ``PublishRejected`` when one of them can never be written.
        """
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``, and whatever waits for them.

        The committer calls it one at a time, with assigned partitions only; raises our error
        (:mod:`consumer.kafka.translate`).
        """
        ...

    def held(self, tracker: OffsetTracker) -> int:
        """Records the work window holds: what memory use is bounded by."""
        ...

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Revoked partitions: forget what waits for their commit (the next owner redoes it)."""
        ...


class AtLeastOnce:
    """Outputs acknowledged before the input is done; offsets committed through the group."""

    def __init__(self, publisher: Publisher, consumer: AIOKafkaConsumer, metrics: Metrics) -> None:
        self.consumer = consumer
        self._sender = _Sender(publisher, metrics)

    async def deliver(self, envelope: Envelope, records: Sequence[OutRecord]) -> None:
        """Send one input's outputs and wait until the broker acknowledged every one."""
        await self._sender.send(records)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` through the consumer group."""
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            raise translate(exc, "an offset commit") from exc

    def held(self, tracker: OffsetTracker) -> int:
        """In flight, or done and queued behind an unfinished record of its partition."""
        return tracker.held()

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing waits here: every output was acknowledged when its input finished."""


class ExactlyOnce:
    """Usage at once; verdicts and dead letters in one transaction with their offsets."""

    def __init__(self, publisher: Publisher, outbox: Outbox, metrics: Metrics) -> None:
        self.publisher = publisher
        self.outbox = outbox
        self._sender = _Sender(publisher, metrics)

    async def deliver(self, envelope: Envelope, records: Sequence[OutRecord]) -> None:
        """Send the usage events (acknowledged), stage the rest for the next transaction."""
        usage_topic = self.publisher.topics.usage
        await self._sender.send([r for r in records if r.topic == usage_topic])
        tp = TopicPartition(envelope.topic, envelope.partition)
        staged = [r for r in records if r.topic != usage_topic]
        self.outbox.stage(tp, envelope.offset, staged)  # sent with its offset, in one txn

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """One transaction: the staged outputs below ``offsets``, and the offsets."""
        await self.outbox.commit(offsets)

    def held(self, tracker: OffsetTracker) -> int:
        """In flight, or done with its outputs in the outbox until their transaction (those
        queued behind an unfinished record included)."""
        return tracker.in_flight() + len(self.outbox)

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the revoked partitions' staged outputs: never sent, redone by the next owner."""
        self.outbox.drop(partitions)


class _Sender:
    """Sends records until acknowledged, retrying what is retriable with a WARNING each time."""

    def __init__(self, publisher: Publisher, metrics: Metrics) -> None:
        self.publisher = publisher
        self.metrics = metrics

    async def send(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        await retried(
            functools.partial(self.publisher.publish, records),
            lambda: AsyncRetrying(
                retry=retry_if_exception(_retriable),
                wait=wait_random_exponential(multiplier=0.2, max=5),
                stop=stop_never,
                reraise=True,
                before_sleep=self._before_retry,
            ),
            _retriable,
        )

    def _before_retry(self, state: RetryCallState) -> None:
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


def _retriable(error: BaseException) -> bool:
    return isinstance(error, ModstreamError) and error.retriable
