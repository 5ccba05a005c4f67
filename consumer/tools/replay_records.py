"""A replayed record as the service would see it: its envelope, decoded and admitted, and its
key in the verdict cache. Shared by both ways of replaying."""

from __future__ import annotations

from consumer.kafka.ranges import Record
from consumer.kafka.registry import SchemaRegistry
from consumer.model.classify import Classifier
from consumer.pipeline.admit import Admitted, Admitter
from consumer.pipeline.decode import decode_record
from consumer.pipeline.source import Envelope
from consumer.settings import Settings
from consumer.tools.cache import cache_key

__all__ = ["admit_record", "envelope_of", "verdict_key"]


async def admit_record(
    settings: Settings,
    admitter: Admitter,
    envelope: Envelope,
    registry: SchemaRegistry | None = None,
) -> Admitted:
    """A record decoded and admitted as the service does; ``PermanentError`` for one that the
    service would dead-letter (a replay counts it, :attr:`ReplayResult.dead_letters`).

    ``registry``: decodes avro, protobuf and json_schema input (required for those formats),
    waiting, as the service does, while the registry is away."""
    request = await decode_record(
        envelope,
        input_format=settings.input_format,
        max_message_bytes=settings.max_message_bytes,
        registry=registry,
    )
    return admitter.admit(request)


def verdict_key(classifier: Classifier, admitted: Admitted) -> str:
    """The verdict cache's key for ``admitted`` under ``classifier``'s model, prompt, policy."""
    builder = classifier.builder
    return cache_key(
        admitted.text,
        admitted.context,
        classifier.model,
        builder.prompt.version,
        builder.policy.version,
        images=[image.url for image in admitted.images],
    )


def envelope_of(record: Record) -> Envelope:
    """The pipeline's envelope of a record read from the range."""
    return Envelope(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        tuple(record.headers),
        record.timestamp,
    )
