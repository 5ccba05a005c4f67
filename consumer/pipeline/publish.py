"""Publish stage: one input's verdict, usage events and dead letter, serialized and acknowledged.

:class:`Publisher` turns events into :class:`OutRecord` values (encoded as
``MODSTREAM_OUTPUT_FORMAT`` says, :mod:`consumer.pipeline.encode`; keyed by the input key, headed
with the schema and the event id, then the input headers it carries (:mod:`consumer.pipeline.carry`)
and, with tracing on, the trace context of the moment), refuses one over its topic's limit
before any send, and
``publish`` returns only once the broker has acknowledged every record it was handed: that is
what lets the offsets stage count the input as done, so an offset is never committed ahead of
its outputs. The producer is idempotent with ``acks=all``.

Kafka's errors are translated by :mod:`consumer.kafka.translate`: ``BrokerUnavailable`` is
retried by the delivery (:mod:`consumer.pipeline.delivery`), ``PublishRejected`` (the record
can never be written) turns the input into a dead letter (:mod:`consumer.pipeline.dead_letter`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.errors import PublishRejected
from consumer.kafka.translate import translate
from consumer.pipeline.carry import carried, carry_names
from consumer.pipeline.encode import Encoder, JsonEncoder
from consumer.pipeline.source import Envelope
from schemas import DeadLetter, UsageEvent, Verdict

__all__ = ["RECORD_OVERHEAD_BYTES", "OutRecord", "Publisher", "Topics"]

#: Room kept below a topic's size limit for the record batch, the key and our headers.
RECORD_OVERHEAD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Topics:
    """Where each kind of output goes."""

    verdicts: str
    usage: str
    dead_letters: str


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
        *,
        carry: Collection[str] | None = None,
        inject: Callable[[list[tuple[str, bytes]]], None] | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """``carry``: the input headers carried onto the outputs besides the trace context
        (None: none at all, not even that); ``inject``: writes the current trace context into
        an output's headers (:meth:`consumer.ops.tracing.Tracing.injector`; None: tracing is
        off, a carried ``traceparent`` goes on as it came); ``encoder``: how values are
        written (:func:`consumer.kafka.registry_outputs.output_encoder`; None: JSON)."""
        self.producer = producer
        self.topics = topics
        #: The largest record each topic takes (its max.message.bytes, within the producer's
        #: max_request_size); an output over it is refused here, before any send.
        self.limits = dict(limits or {})
        self.carry = frozenset() if carry is None else carry_names(carry)
        self.inject = inject
        self.encoder = encoder or JsonEncoder()

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
        # Ours first; the carried ones after, never in their place (carry_names leaves ours out).
        extra = carried(envelope.headers, self.carry) if self.carry else []
        if self.inject is not None:
            self.inject(extra)  # once per input: every output has the same parent
        encode = self.encoder.encode
        content_type = self.encoder.content_type
        records = [
            OutRecord(
                topic,
                key,
                encode(topic, event),
                [
                    ("content-type", content_type),
                    ("modstream-schema", f"{name}/1".encode()),
                    ("modstream-event-id", event.event_id.encode()),
                    *extra,
                ],
            )
            for topic, event, name in events
        ]
        for record in records:
            self._check_size(record)
        return records

    def replay_records(
        self, envelope: Envelope, *, verdict: Verdict | None, usage: Sequence[UsageEvent]
    ) -> tuple[list[OutRecord], PublishRejected | None]:
        """For a replay, which writes no dead letters: :meth:`records`, or, when the verdict
        can never be written (over a limit, a value Avro cannot hold), the usage events alone
        (their calls cost all the same) and the reason, for the replay to count."""
        try:
            return self.records(envelope, verdict=verdict, usage=usage), None
        except PublishRejected as exc:
            if verdict is None:
                raise
            return self.records(envelope, usage=usage), exc

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
