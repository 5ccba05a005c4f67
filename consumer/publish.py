"""Publish stage: verdicts, usage events and dead letters to their topics, acknowledged.

At least once (the default): the producer is idempotent with ``acks=all`` and
``Publisher.publish`` returns only once the broker has acknowledged every record of one input,
which is what lets the offsets stage count that input as done: an offset is never committed
ahead of its outputs. Exactly once: the ``Outbox`` holds the outputs and sends them in the same
transaction as their input offsets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from consumer.errors import BrokerUnavailable, InvalidReply, ModstreamError, ProducerFencedError
from consumer.source import Envelope
from schemas import DeadLetter, Header, UsageEvent, Verdict, make_event_id

Stage = Literal["decode", "admit", "classify"]


@dataclass(frozen=True, slots=True)
class Topics:
    """Where each kind of output goes."""

    verdicts: str
    usage: str
    dead_letters: str


def dead_letter(
    envelope: Envelope,
    error: ModstreamError,
    *,
    stage: Stage,
    policy_version: str,
    attempts: int = 0,
    redact: bool = False,
) -> DeadLetter:
    """The dead letter for an input that can never succeed, carrying its bytes and reason."""
    value = envelope.value or b""
    return DeadLetter(
        event_id=make_event_id(envelope.source, policy_version, "dead_letter"),
        source=envelope.source,
        stage=stage,
        error_class=type(error).__name__,
        error_message=error.message,
        attempts=attempts,
        payload_b64=None if redact else base64.b64encode(value).decode(),
        payload_sha256=hashlib.sha256(value).hexdigest(),
        payload_redacted=redact,
        headers=[
            Header(key=k, value_b64=None if v is None else base64.b64encode(v).decode())
            for k, v in envelope.headers
        ],
        reply=error.reply if isinstance(error, InvalidReply) and not redact else None,
        created_at=datetime.now(UTC),
    )


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One serialized output, ready to send."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class Publisher:
    """Sends one input's outputs and waits for the broker to acknowledge all of them."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics

    def records(
        self,
        envelope: Envelope,
        *,
        verdict: Verdict | None = None,
        usage: Sequence[UsageEvent] = (),
        dead: DeadLetter | None = None,
    ) -> list[OutRecord]:
        """One input's outputs, serialized; keyed by the input key, else the content id."""
        key = envelope.key
        if key is None and verdict is not None:
            key = verdict.content_id.encode()
        events: list[tuple[str, Verdict | UsageEvent | DeadLetter, str]] = []
        if verdict is not None:
            events.append((self.topics.verdicts, verdict, "Verdict"))
        events.extend((self.topics.usage, u, "UsageEvent") for u in usage)
        if dead is not None:
            events.append((self.topics.dead_letters, dead, "DeadLetter"))
        return [
            OutRecord(
                topic,
                key,
                event.model_dump_json().encode(),
                [
                    ("content-type", b"application/json"),
                    ("modstream-schema", f"{name}/1".encode()),
                    ("modstream-event-id", event.event_id.encode()),
                ],
            )
            for topic, event, name in events
        ]

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send and await acknowledgement; raise BrokerUnavailable if Kafka would not ack."""
        try:
            # send() only enqueues into the producer's batch; the returned futures resolve on ack.
            futures = [
                await self.producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                for r in records
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge outputs: {exc}") from exc


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
                        await self.producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                await self.producer.send_offsets_to_transaction(dict(offsets), self.group_id)
        except ProducerFenced as exc:
            raise ProducerFencedError(
                "another modstream instance took over this transactional id; stopping so the "
                "newer one owns its partitions"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"transaction aborted: {exc}") from exc
        for tp, offset in ready:  # only once the transaction committed
            del self._staged[tp][offset]

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Revoked partitions: their uncommitted outputs are redone by the next owner."""
        for tp in partitions:
            self._staged.pop(tp, None)
