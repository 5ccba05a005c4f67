"""A small mixed corpus (clean, harmful, poison) and a producer for it.

Used by ``make demo``, the end-to-end tests and the benchmarks, so they all exercise the same
kinds of input. With ``MODSTREAM_INPUT_FORMAT=avro`` (``make demo FORMAT=avro``) the requests
are Avro records in the Confluent wire format, their schema (:data:`SAMPLE_AVRO`) registered
under ``<input topic>-value`` first; the poison stays raw bytes, dead letters either way.

The harmful texts are deliberately mild: they only need to trip the fake
server's keyword heuristic (or a real model's judgement), not to shock anyone reading the repo.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import fastavro
import httpx2
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from confluent_kafka.schema_registry import Schema, SchemaRegistryError

from consumer.errors import ConfigError, ModstreamError
from consumer.kafka.client import enter_kafka, kafka_options
from consumer.kafka.registry import registry_client
from consumer.kafka.topics import require_topics
from consumer.kafka.translate import translate
from consumer.model.provider import public_url
from consumer.pipeline.encode import frame
from consumer.settings import InputFormat, Settings

#: The sample's requests as Avro: the fields MODSTREAM_INPUT_FIELDS maps by default.
SAMPLE_AVRO = {
    "type": "record",
    "name": "SampleRequest",
    "namespace": "dev.modstream.sample",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "text", "type": "string"},
        {"name": "metadata", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}

CLEAN = [
    "Does anyone know a good recipe for banana bread?",
    "The train was late again this morning, but the coffee was good.",
    "Congratulations on the new job! Well deserved.",
    "Can someone explain how Kafka consumer groups rebalance?",
    "I loved the concert last night, the drummer was amazing.",
    "Reminder: the library closes early on Friday.",
    "What's the best way to learn Python in 2026?",
    "Our team won the match 3-1, great effort everyone.",
]
HARMFUL = [
    ("violence", "I will kill you and attack your family if you show up again."),
    ("harassment", "You are a pathetic idiot and a loser, nobody wants you here."),
    ("self-harm", "I want to kill myself, I can't take this anymore."),
    ("illicit", "Selling cocaine and counterfeit bills, DM me for prices."),
    ("hate", "Those people are vermin and subhuman, they should be driven out."),
    ("sexual", "Click here for explicit nsfw porn pictures."),
]
POISON: list[bytes] = [
    b"\xff\xfe not utf-8 \xc3\x28",
    b'{"id": "p1", "text": ',
    b"[1, 2, 3]",
    b'{"id": "p2"}',
    b'{"id": 5, "text": ["not", "a", "string"]}',
    b"",
    b"null",
    b'{"id": "p3", "text": "   "}',
]


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One record to produce, with what the corpus meant it to be."""

    key: bytes
    value: bytes
    kind: str  # clean | harmful:<category> | poison


def corpus(count: int, *, seed: int = 7, poison_share: float = 0.05) -> Iterator[SampleRecord]:
    """``count`` records: about 70 % clean, 25 % harmful and ``poison_share`` undecodable."""
    rng = random.Random(seed)
    for i in range(count):
        roll = rng.random()
        key = f"user-{rng.randrange(50)}".encode()
        if roll < poison_share:
            yield SampleRecord(key, POISON[i % len(POISON)], "poison")
            continue
        if roll < poison_share + 0.25:
            category, text = HARMFUL[rng.randrange(len(HARMFUL))]
            kind = f"harmful:{category}"
        else:
            text, kind = CLEAN[rng.randrange(len(CLEAN))], "clean"
        body = {"id": f"msg-{i}", "text": f"{text} (#{i})", "metadata": {"label": kind}}
        yield SampleRecord(key, json.dumps(body).encode(), kind)


@dataclass
class Produced:
    """What the broker acknowledged of a sample, and why the rest was refused."""

    acknowledged: list[SampleRecord] = field(default_factory=list)
    #: The first refusal in our terms, naming how many records were refused; None if none.
    error: ModstreamError | None = None


async def produce(settings: Settings, records: list[SampleRecord]) -> Produced:
    """Write ``records`` to the input topic, which must exist; say which the broker acked.

    The topic is checked first: a producer would wait ``request_timeout_ms`` (40 s) for the
    metadata of a topic that does not exist, logging each attempt, before it failed.
    """
    options = kafka_options(settings)
    await require_topics(options, {"MODSTREAM_INPUT_TOPIC": settings.input_topic})
    if settings.input_format is InputFormat.AVRO:
        records = await as_avro(settings, records)
    elif settings.input_format.uses_registry:
        raise ConfigError(
            f"modstream sample writes json or avro, not MODSTREAM_INPUT_FORMAT="
            f"{settings.input_format}"
        )
    async with AsyncExitStack() as stack:
        producer = AIOKafkaProducer(**options, acks="all", linger_ms=20)
        await enter_kafka(stack, producer, options)
        futures = [await producer.send(settings.input_topic, r.value, key=r.key) for r in records]
        answers = await asyncio.gather(*futures, return_exceptions=True)
    done = Produced([r for r, a in zip(records, answers, strict=True) if not _failed(a)])
    refused = [a for a in answers if _failed(a)]
    if refused:
        first = refused[0]
        if not isinstance(first, KafkaError):
            raise first  # not Kafka's answer: a bug, with its traceback
        done.error = translate(first, f"{len(refused)} of {len(records)} sample records")
    return done


async def as_avro(settings: Settings, records: list[SampleRecord]) -> list[SampleRecord]:
    """The requests as framed Avro under :data:`SAMPLE_AVRO`, registered first; poison as is."""
    client = registry_client(settings)
    try:
        schema_id = await client.register_schema(
            f"{settings.input_topic}-value", Schema(json.dumps(SAMPLE_AVRO), "AVRO")
        )
    except (SchemaRegistryError, httpx2.TransportError) as exc:
        raise ConfigError(
            f"the sample's Avro schema could not be registered at "
            f"{public_url(settings.schema_registry_url)}: {exc}"
        ) from None
    finally:
        await client.aclose()
    parsed = fastavro.parse_schema(SAMPLE_AVRO)
    out = []
    for record in records:
        if record.kind == "poison":
            out.append(record)
            continue
        payload = io.BytesIO()
        fastavro.schemaless_writer(payload, parsed, json.loads(record.value))
        out.append(SampleRecord(record.key, frame(schema_id, payload.getvalue()), record.kind))
    return out


def _failed(answer: object) -> bool:
    return isinstance(answer, BaseException)
