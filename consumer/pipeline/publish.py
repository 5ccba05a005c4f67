"""Publish stage: verdicts, usage events and dead letters to their topics, acknowledged.

At least once (the default): the producer is idempotent with ``acks=all`` and
``Publisher.publish`` returns only once the broker has acknowledged every record of one input,
which is what lets the offsets stage count that input as done: an offset is never committed
ahead of its outputs. Exactly once: the ``Outbox`` holds the verdicts and dead letters and sends
them in the same transaction as their input offsets; usage events go out at once on a plain
producer, so every answered model call is recorded even when a crash aborts the transaction.

Kafka's errors are translated by :mod:`consumer.kafka.translate`: ``BrokerUnavailable`` is retried
by the pipeline, ``PublishRejected`` (the record can never be written) turns the input into a dead
letter, and a dead letter is always cut to fit the dead-letter topic (:func:`fit`).
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
from aiokafka.errors import KafkaError

from consumer.errors import (
    BrokerRejected,
    InvalidReply,
    ModstreamError,
    ProducerFencedError,
    PublishRejected,
)
from consumer.kafka.translate import fatal_transaction_state, translate
from consumer.pipeline.source import Envelope
from schemas import DeadLetter, Header, UsageEvent, Verdict, make_event_id

Stage = Literal["decode", "admit", "classify", "publish"]

#: Room kept below a topic's size limit for the record batch, the key and our headers.
RECORD_OVERHEAD_BYTES = 1024
#: An error message or reply longer than this is cut when a dead letter must shrink.
_SHRUNK_TEXT_CHARS = 2000


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
    max_bytes: int | None = None,
) -> DeadLetter:
    """The dead letter for an input that can never succeed, carrying its bytes and reason.

    With ``max_bytes``, the serialized dead letter is cut to at most that size (see
    :func:`fit`), so it always fits the dead-letter topic.
    """
    value = envelope.value or b""
    dead = DeadLetter(
        event_id=make_event_id(envelope.source, policy_version, "dead_letter"),
        source=envelope.source,
        stage=stage,
        error_class=type(error).__name__,
        error_message=error.message,
        attempts=attempts,
        payload_b64=None if redact else base64.b64encode(value).decode(),
        payload_sha256=hashlib.sha256(value).hexdigest(),
        payload_redacted=redact,
        payload_length=None if envelope.value is None else len(value),
        headers=[
            Header(key=k, value_b64=None if v is None else base64.b64encode(v).decode())
            for k, v in envelope.headers
        ],
        reply=error.reply if isinstance(error, InvalidReply) and not redact else None,
        created_at=datetime.now(UTC),
    )
    return dead if max_bytes is None else fit(dead, value, max_bytes)


def _size(dead: DeadLetter) -> int:
    return len(dead.model_dump_json().encode())


def _upper_bound(dead: DeadLetter) -> int:
    """More than the serialized size can be: JSON escapes a control character to 6 bytes,
    and UTF-8 takes at most 4; base64 is ASCII."""
    texts = len(dead.error_message) + len(dead.reply or "") + len(dead.error_class)
    texts += sum(len(h.key) for h in dead.headers) + len(dead.source.key or "")
    texts += len(dead.source.topic)
    encoded = len(dead.payload_b64 or "") + sum(len(h.value_b64 or "") for h in dead.headers)
    return 6 * texts + encoded + 64 * len(dead.headers) + 2048


def _shorten(dead: DeadLetter, chars: int) -> DeadLetter:
    return dead.model_copy(
        update={
            "error_message": dead.error_message[:chars],
            "reply": None if dead.reply is None else dead.reply[:chars],
        }
    )


def _without_header_values(dead: DeadLetter) -> DeadLetter:
    headers = [Header(key=h.key[:256], value_b64=None) for h in dead.headers]
    return dead.model_copy(update={"headers": headers, "headers_truncated": True})


def fit(dead: DeadLetter, value: bytes, max_bytes: int) -> DeadLetter:
    """``dead``, cut until its JSON is at most ``max_bytes``: what a dead-letter topic takes.

    The payload gives way first: it becomes the longest head slice of ``value`` that fits
    (``payload_truncated``). Only when even the rest (source, reason, headers) is too large are
    the error message and reply shortened and header values left out (keys kept,
    ``headers_truncated``). ``payload_sha256`` and ``payload_length`` always describe the whole
    original, so it can be found and compared. Raises ``BrokerRejected`` when even the
    skeleton is larger than ``max_bytes``.
    """
    if _upper_bound(dead) <= max_bytes or _size(dead) <= max_bytes:
        return dead  # most dead letters: far below the limit, serialized once more at most
    redacted = dead.payload_b64 is None
    rest = dead if redacted else dead.model_copy(update={"payload_b64": ""})
    for shrink in (
        lambda d: _shorten(d, _SHRUNK_TEXT_CHARS),
        _without_header_values,
        lambda d: _shorten(d, _SHRUNK_TEXT_CHARS // 8),
    ):
        if _size(rest) <= max_bytes:
            break
        rest = shrink(rest)
    room = max_bytes - _size(rest)
    if room < 0:
        raise BrokerRejected(
            f"a dead letter for {dead.source.topic}[{dead.source.partition}]@"
            f"{dead.source.offset} does not fit the dead-letter topic even without its payload "
            f"({max_bytes} bytes allowed): raise the topic's max.message.bytes"
        )
    if redacted:
        return rest
    head = value[: room // 4 * 3]  # base64: 4 characters per 3 bytes
    return rest.model_copy(
        update={
            "payload_b64": base64.b64encode(head).decode(),
            "payload_truncated": len(head) < len(value),
        }
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

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        limits: Mapping[str, int] | None = None,
    ) -> None:
        self.producer = producer
        self.topics = topics
        #: The largest record each topic takes (its max.message.bytes, within the producer's
        #: max_request_size); an output over it is refused here, before any send.
        self.limits = dict(limits or {})

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
        records = [
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
        for record in records:
            self._check_size(record)
        return records

    def _check_size(self, record: OutRecord) -> None:
        limit = self.limits.get(record.topic)
        if limit is None:
            return
        size = len(record.value) + len(record.key or b"") + RECORD_OVERHEAD_BYTES
        size += sum(len(k) + len(v) for k, v in record.headers)
        if size > limit:
            raise PublishRejected(
                f"an output of {size} bytes is over the {limit}-byte limit of topic "
                f"{record.topic!r} (its max.message.bytes, or the producer's max_request_size)"
            )

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send and await acknowledgement; raise our error (:mod:`consumer.kafka.translate`) if not.

        ``BrokerUnavailable``: try again later. ``PublishRejected``: one of the records can
        never be written (too large for its topic, invalid).
        """
        try:
            # send() only enqueues into the producer's batch; the returned futures resolve on ack.
            futures = [
                await self.producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                for r in records
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise translate(exc, "an output") from exc


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
