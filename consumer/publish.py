"""Publish stage: verdicts, usage events and dead letters to their topics, acknowledged.

The producer is idempotent with ``acks=all`` (built in the app's lifespan). ``Publisher.publish``
returns only once the broker has acknowledged every record of one input, which is what lets the
offsets stage count that input as done: an offset is never committed ahead of its outputs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from consumer.errors import BrokerUnavailable, InvalidReply, ModstreamError
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


class Publisher:
    """Sends one input's outputs and waits for the broker to acknowledge all of them."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics

    async def publish(
        self,
        envelope: Envelope,
        *,
        verdict: Verdict | None = None,
        usage: list[UsageEvent] | tuple[UsageEvent, ...] = (),
        dead: DeadLetter | None = None,
    ) -> None:
        """Publish and await acknowledgement; raise BrokerUnavailable if Kafka would not ack."""
        key = envelope.key
        if key is None and verdict is not None:
            key = verdict.content_id.encode()
        records: list[tuple[str, BaseModel, str]] = []
        if verdict is not None:
            records.append((self.topics.verdicts, verdict, "Verdict"))
        records.extend((self.topics.usage, u, "UsageEvent") for u in usage)
        if dead is not None:
            records.append((self.topics.dead_letters, dead, "DeadLetter"))
        try:
            # send() only enqueues into the producer's batch; the returned futures resolve on ack.
            futures = [
                await self.producer.send(
                    topic,
                    event.model_dump_json().encode(),
                    key=key,
                    headers=[
                        ("content-type", b"application/json"),
                        ("modstream-schema", f"{name}/1".encode()),
                        ("modstream-event-id", str(getattr(event, "event_id", "")).encode()),
                    ],
                )
                for topic, event, name in records
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge outputs: {exc}") from exc
