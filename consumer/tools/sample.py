"""A small mixed corpus (clean, harmful, poison) and a producer for it.

Used by ``make demo``, the end-to-end tests and the benchmarks, so they all exercise the same
kinds of input. The harmful texts are deliberately mild: they only need to trip the fake
server's keyword heuristic (or a real model's judgement), not to shock anyone reading the repo.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.errors import ModstreamError
from consumer.kafka.client import enter_kafka, kafka_options
from consumer.kafka.topics import require_topics
from consumer.kafka.translate import translate
from consumer.settings import Settings

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


def _failed(answer: object) -> bool:
    return isinstance(answer, BaseException)
