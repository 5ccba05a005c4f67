"""The exactly-once outbox: a range's outputs and its input offsets in one Kafka transaction.

Used by :class:`consumer.pipeline.delivery.ExactlyOnce`. aiokafka allows one open transaction per
producer (a second ``transaction()`` while one is open raises ``AssertionError``), so every call
of :meth:`Outbox.commit` must come from one place that serializes them: the pipeline's
committer (:mod:`consumer.pipeline.commits`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.errors import BrokerRejected, ProducerFencedError
from consumer.kafka.translate import fatal_transaction_state, translate
from consumer.pipeline.publish import OutRecord

__all__ = ["Outbox"]


class Outbox:
    """Exactly-once delivery: outputs wait here until their input offsets commit with them.

    A completed contiguous range's outputs and that range's offsets go to Kafka in one
    transaction (``send_offsets_to_transaction``), so a ``read_committed`` reader sees each
    input's outputs exactly once, whatever crashes in between. Outputs of messages that finished
    ahead of an unfinished one stay here until the gap closes; the pipeline counts them in its
    window, so memory stays bounded.
    """

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self.producer = producer
        self.group_id = group_id
        self._staged: dict[TopicPartition, dict[int, list[OutRecord]]] = {}

    def __len__(self) -> int:
        return sum(len(offsets) for offsets in self._staged.values())

    def stage(self, tp: TopicPartition, offset: int, records: list[OutRecord]) -> None:
        """Hold one input's outputs until its offset is committed."""
        self._staged.setdefault(tp, {})[offset] = records

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """One transaction: the outputs of every input below ``offsets``, and the offsets."""
        ready = [
            (tp, offset)
            for tp, commit_point in offsets.items()
            for offset in self._staged.get(tp, {})
            if offset < commit_point
        ]
        try:
            async with self.producer.transaction():
                for tp, offset in ready:
                    for r in self._staged[tp][offset]:
                        sent = await self.producer.send(
                            r.topic, r.value, key=r.key, headers=r.headers
                        )
                        # The commit below waits for every send; a failed one fails it, so the
                        # send's own error is seen there (and must not be logged as unseen).
                        sent.add_done_callback(_seen)
                await self.producer.send_offsets_to_transaction(dict(offsets), self.group_id)
        except KafkaError as exc:
            error = translate(exc, "a transaction")
            fenced = isinstance(error, ProducerFencedError)
            if not fenced and self.producer._txn_manager.is_fatal_error():  # no public test
                raise fatal_transaction_state("committing a transaction") from exc
            if error.retriable or error.fatal:
                raise error from exc
            # A transaction cannot leave one record out: aborting it again and again would stop
            # every partition from committing, so stop with the reason instead.
            raise BrokerRejected(
                f"{error.message}; exactly-once cannot skip one record of a transaction, so "
                "modstream stops rather than abort every transaction"
            ) from exc
        except AssertionError as exc:
            # aiokafka asserts its transaction state machine: after a fatal error (or a
            # transaction overlap, which the pipeline's commit lock rules out) it cannot go on.
            raise fatal_transaction_state(f"committing a transaction ({exc})") from exc
        for tp, offset in ready:  # only once the transaction committed
            del self._staged[tp][offset]

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Revoked partitions: their uncommitted outputs are redone by the next owner."""
        for tp in partitions:
            self._staged.pop(tp, None)


def _seen(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
