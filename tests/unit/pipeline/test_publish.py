"""Publish stage: records, the size check, acknowledgement and error translation.

The producer is the in-memory fake of ``tests.unit.kafka_fakes``; the events are real.
"""

from __future__ import annotations

import asyncio
import json

import fastavro
import pytest
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition

from consumer.errors import (
    BrokerRejected,
    BrokerUnavailable,
    DecodeError,
    ModstreamError,
    PublishRejected,
)
from consumer.pipeline.admit import Admitted
from consumer.pipeline.dead_letter import dead_letter
from consumer.pipeline.encode import RegistryEncoder, TopicSchema, frame
from consumer.pipeline.publish import RECORD_OVERHEAD_BYTES, OutRecord, Publisher, Topics
from consumer.pipeline.source import Envelope
from schemas import DeadLetter, ModerationRequest, UsageEvent, Verdict
from schemas.avro import avro_schema
from tests.unit.kafka_fakes import FakeProducer, usage_for, verdict_for

pytestmark = pytest.mark.timeout(120)

TOPICS = Topics("verdicts", "usage", "dlq")
TP = TopicPartition("in", 0)


def envelope(
    offset: int = 7,
    *,
    key: bytes | None = b"user-1",
    value: bytes | None = b'{"id": "m7", "text": "hello"}',
    headers: tuple[tuple[str, bytes | None], ...] = (("trace", b"abc"),),
) -> Envelope:
    return Envelope("in", 0, offset, key, value, headers, 1_700_000_000_000)


def verdict(env: Envelope, content_id: str = "m7") -> Verdict:
    request = ModerationRequest(id=content_id, text="hello")
    admitted = Admitted(request, "hello", None, truncated=False, content_tokens=1)
    return verdict_for(admitted, env.source)


def out(topic: str = "verdicts", value: bytes = b"{}", key: bytes | None = b"k") -> OutRecord:
    return OutRecord(topic, key, value, [("content-type", b"application/json")])


# ---- Publisher.records and the size check --------------------------------------------------


def test_records_are_keyed_by_the_input_key_and_headed_with_schema_and_event_id() -> None:
    env = envelope()
    v = verdict(env)
    usage = [usage_for(env.source, "m7", 1), usage_for(env.source, "m7", 2)]
    records = Publisher(FakeProducer(), TOPICS).records(env, verdict=v, usage=usage)
    assert [r.topic for r in records] == ["verdicts", "usage", "usage"]
    assert all(r.key == b"user-1" for r in records)
    assert records[0].headers == [
        ("content-type", b"application/json"),
        ("modstream-schema", b"Verdict/1"),
        ("modstream-event-id", v.event_id.encode()),
    ]
    assert records[1].headers[1] == ("modstream-schema", b"UsageEvent/1")
    assert records[2].headers[2] == ("modstream-event-id", usage[1].event_id.encode())
    assert json.loads(records[0].value)["event_id"] == v.event_id
    assert records[0].value == v.model_dump_json().encode()


def test_records_without_an_input_key_are_keyed_by_the_content_id() -> None:
    env = envelope(key=None)
    records = Publisher(FakeProducer(), TOPICS).records(env, verdict=verdict(env, "content-42"))
    assert [r.key for r in records] == [b"content-42"]


def test_a_dead_letter_record_goes_to_the_dlq_topic_with_its_schema_header() -> None:
    env = envelope(key=None)
    dead = dead_letter(env, DecodeError("bad"), stage="decode", policy_version="p1")
    [record] = Publisher(FakeProducer(), TOPICS).records(env, dead=dead)
    assert record.topic == "dlq" and record.key is None  # no verdict: no content id
    assert ("modstream-schema", b"DeadLetter/1") in record.headers
    assert DeadLetter.model_validate_json(record.value) == dead


def _size(record: OutRecord) -> int:
    return (
        len(record.value)
        + len(record.key or b"")
        + RECORD_OVERHEAD_BYTES
        + sum(len(k) + len(v) for k, v in record.headers)
    )


def test_size_check_refuses_an_output_over_its_topics_limit_and_only_then() -> None:
    env = envelope()
    publisher = Publisher(FakeProducer(), TOPICS)
    [record] = publisher.records(env, verdict=verdict(env))
    size = _size(record)
    at_limit = Publisher(FakeProducer(), TOPICS, {"verdicts": size})
    assert at_limit.records(env, verdict=verdict(env))  # exactly the limit: taken
    over = Publisher(FakeProducer(), TOPICS, {"verdicts": size - 1})
    with pytest.raises(PublishRejected) as info:
        over.records(env, verdict=verdict(env))
    assert f"{size} bytes" in info.value.message and "'verdicts'" in info.value.message
    assert not info.value.retriable and not info.value.fatal
    # A limit on another topic does not apply.
    other = Publisher(FakeProducer(), TOPICS, {"usage": 10})
    assert other.records(env, verdict=verdict(env))


def test_size_check_counts_the_key_and_the_headers() -> None:
    env = envelope(key=b"k" * 300)
    [record] = Publisher(FakeProducer(), TOPICS).records(env, verdict=verdict(env))
    assert _size(record) > len(record.value) + RECORD_OVERHEAD_BYTES + 300
    limit = len(record.value) + RECORD_OVERHEAD_BYTES + 300  # value and key, no headers
    with pytest.raises(PublishRejected):
        Publisher(FakeProducer(), TOPICS, {"verdicts": limit}).records(env, verdict=verdict(env))
    no_key = Publisher(FakeProducer(), TOPICS, {"verdicts": limit - 299})
    with pytest.raises(PublishRejected):
        no_key.records(env, verdict=verdict(env))


# ---- Publisher.publish ---------------------------------------------------------------------


async def test_publish_returns_only_once_every_record_is_acknowledged() -> None:
    producer = FakeProducer()
    gate = producer.ack_gates["usage"] = asyncio.Event()
    publisher = Publisher(producer, TOPICS)
    task = asyncio.create_task(publisher.publish([out("verdicts"), out("usage")]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # the verdict is acknowledged, the usage event is not yet
    assert [r.topic for r in producer.sent] == ["verdicts", "usage"]
    gate.set()
    async with asyncio.timeout(5):
        await task
    assert [r.topic for r in producer.acked] == ["verdicts", "usage"]
    assert producer.sent[0].headers == [("content-type", b"application/json")]


@pytest.mark.parametrize("at", ["send", "ack"])
@pytest.mark.parametrize(
    ("error", "ours"),
    [
        (MessageSizeTooLargeError(), PublishRejected),
        (KafkaTimeoutError(), BrokerUnavailable),
        (TopicAuthorizationFailedError(), BrokerRejected),
    ],
)
async def test_publish_translates_kafka_errors(
    at: str, error: KafkaError, ours: type[ModstreamError]
) -> None:
    producer = FakeProducer()
    producer.fail("verdicts", error, at=at)
    with pytest.raises(ours) as info:
        await Publisher(producer, TOPICS).publish([out("verdicts")])
    assert info.value.__cause__ is error
    assert info.value.message.startswith(f"Kafka refused an output: {type(error).__name__}")


# ---- an encoder other than JSON, and what a replay does with a verdict it cannot write -------


def avro_publisher(limits: dict[str, int] | None = None) -> Publisher:
    schemas = {
        "verdicts": TopicSchema(11, fastavro.parse_schema(avro_schema(Verdict))),
        "usage": TopicSchema(12, fastavro.parse_schema(avro_schema(UsageEvent))),
    }
    return Publisher(None, TOPICS, limits, encoder=RegistryEncoder(schemas, avro=True))


def test_records_are_encoded_by_the_encoder_with_its_content_type() -> None:
    env = envelope()
    records = avro_publisher().records(
        env, verdict=verdict(env), usage=[usage_for(env.source, "m7")]
    )
    assert [(r.topic, r.value[:5]) for r in records] == [
        ("verdicts", frame(11, b"")),
        ("usage", frame(12, b"")),
    ]
    assert all(dict(r.headers)["content-type"] == b"application/avro" for r in records)


def test_a_replay_gets_the_usage_alone_and_the_reason_when_the_verdict_cannot_be_written() -> None:
    env = envelope()
    unwritable = verdict(env).model_copy(update={"metadata": {"n": 2**70}})
    usage = [usage_for(env.source, "m7")]
    records, rejected = avro_publisher().replay_records(env, verdict=unwritable, usage=usage)
    assert [r.topic for r in records] == ["usage"]
    assert isinstance(rejected, PublishRejected)
    assert "metadata['n']" in rejected.message
    fine, none = avro_publisher().replay_records(env, verdict=verdict(env), usage=usage)
    assert [r.topic for r in fine] == ["verdicts", "usage"] and none is None
