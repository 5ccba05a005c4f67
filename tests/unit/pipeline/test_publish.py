"""Publish stage: records, the size check, acknowledgement, the Outbox, error translation, fit.

The producer is the in-memory fake of ``tests.unit.kafka_fakes``; the events are real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from datetime import timedelta

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFenced,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import (
    BrokerRejected,
    BrokerUnavailable,
    DecodeError,
    InvalidReply,
    ModstreamError,
    ProducerFencedError,
    PublishRejected,
)
from consumer.kafka.translate import translate
from consumer.pipeline.admit import Admitted
from consumer.pipeline.publish import (
    RECORD_OVERHEAD_BYTES,
    Outbox,
    OutRecord,
    Publisher,
    Topics,
    dead_letter,
    fit,
)
from consumer.pipeline.source import Envelope
from schemas import DeadLetter, ModerationRequest, make_event_id
from tests.unit.kafka_fakes import FakeProducer, eventually, usage_for, verdict_for

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


def verdict(env: Envelope, content_id: str = "m7"):
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
    records = Publisher(FakeProducer(), TOPICS).records(env, verdict=v, usage=usage)  # type: ignore[arg-type]
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
    records = Publisher(FakeProducer(), TOPICS).records(env, verdict=verdict(env, "content-42"))  # type: ignore[arg-type]
    assert [r.key for r in records] == [b"content-42"]


def test_a_dead_letter_record_goes_to_the_dlq_topic_with_its_schema_header() -> None:
    env = envelope(key=None)
    dead = dead_letter(env, DecodeError("bad"), stage="decode", policy_version="p1")
    [record] = Publisher(FakeProducer(), TOPICS).records(env, dead=dead)  # type: ignore[arg-type]
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
    publisher = Publisher(FakeProducer(), TOPICS)  # type: ignore[arg-type]
    [record] = publisher.records(env, verdict=verdict(env))
    size = _size(record)
    at_limit = Publisher(FakeProducer(), TOPICS, {"verdicts": size})  # type: ignore[arg-type]
    assert at_limit.records(env, verdict=verdict(env))  # exactly the limit: taken
    over = Publisher(FakeProducer(), TOPICS, {"verdicts": size - 1})  # type: ignore[arg-type]
    with pytest.raises(PublishRejected) as info:
        over.records(env, verdict=verdict(env))
    assert f"{size} bytes" in info.value.message and "'verdicts'" in info.value.message
    assert not info.value.retriable and not info.value.fatal
    # A limit on another topic does not apply.
    other = Publisher(FakeProducer(), TOPICS, {"usage": 10})  # type: ignore[arg-type]
    assert other.records(env, verdict=verdict(env))


def test_size_check_counts_the_key_and_the_headers() -> None:
    env = envelope(key=b"k" * 300)
    [record] = Publisher(FakeProducer(), TOPICS).records(env, verdict=verdict(env))  # type: ignore[arg-type]
    assert _size(record) > len(record.value) + RECORD_OVERHEAD_BYTES + 300
    limit = len(record.value) + RECORD_OVERHEAD_BYTES + 300  # value and key, no headers
    with pytest.raises(PublishRejected):
        Publisher(FakeProducer(), TOPICS, {"verdicts": limit}).records(env, verdict=verdict(env))  # type: ignore[arg-type]
    no_key = Publisher(FakeProducer(), TOPICS, {"verdicts": limit - 299})  # type: ignore[arg-type]
    with pytest.raises(PublishRejected):
        no_key.records(env, verdict=verdict(env))


# ---- Publisher.publish ---------------------------------------------------------------------


async def test_publish_returns_only_once_every_record_is_acknowledged() -> None:
    producer = FakeProducer()
    gate = producer.ack_gates["usage"] = asyncio.Event()
    publisher = Publisher(producer, TOPICS)  # type: ignore[arg-type]
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
        await Publisher(producer, TOPICS).publish([out("verdicts")])  # type: ignore[arg-type]
    assert info.value.__cause__ is error
    assert info.value.message.startswith(f"Kafka refused an output: {type(error).__name__}")


# ---- Outbox --------------------------------------------------------------------------------


def test_outbox_len_counts_staged_inputs() -> None:
    outbox = Outbox(FakeProducer(), "g")  # type: ignore[arg-type]
    outbox.stage(TP, 0, [out(), out()])
    outbox.stage(TP, 1, [])
    outbox.stage(TopicPartition("in", 1), 0, [out()])
    assert len(outbox) == 3
    outbox.drop([TP])
    assert len(outbox) == 1
    outbox.drop([TP])  # already gone: nothing happens
    assert len(outbox) == 1


async def test_outbox_commits_the_outputs_below_the_commit_point_with_the_offsets() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "group-1")  # type: ignore[arg-type]
    other = TopicPartition("in", 1)
    outbox.stage(TP, 0, [out(value=b"0")])
    outbox.stage(TP, 1, [out(value=b"1a"), out("dlq", value=b"1b")])
    outbox.stage(TP, 2, [out(value=b"2")])  # at the commit point: not yet
    outbox.stage(other, 5, [out(value=b"other")])  # its partition is not committed now
    await outbox.commit({TP: 2})
    [txn] = producer.transactions
    assert txn.outcome == "committed"
    assert [r.value for r in txn.records] == [b"0", b"1a", b"1b"]
    assert txn.offsets == {TP: 2} and txn.group_id == "group-1"
    assert len(outbox) == 2
    await outbox.commit({TP: 3, other: 6})
    assert sorted(r.value for r in producer.transactions[1].records) == [b"2", b"other"]
    assert len(outbox) == 0


@pytest.mark.parametrize(
    ("error", "ours"),
    [
        (KafkaTimeoutError(), BrokerUnavailable),
        (kafka_errors.NotLeaderForPartitionError(), BrokerUnavailable),
        (TopicAuthorizationFailedError(), BrokerRejected),
        (MessageSizeTooLargeError(), BrokerRejected),  # cannot skip one record: stop
        (ProducerFenced(), ProducerFencedError),
    ],
)
async def test_a_failed_transaction_keeps_its_outputs_and_raises_ours(
    error: KafkaError, ours: type[ModstreamError]
) -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")  # type: ignore[arg-type]
    outbox.stage(TP, 0, [out(value=b"0")])
    producer.txn_commit_errors.append(error)
    with pytest.raises(ours) as info:
        await outbox.commit({TP: 1})
    assert info.value.__cause__ is error
    assert len(outbox) == 1  # kept for the next transaction
    if ours is not ProducerFencedError:
        assert info.value.message.startswith(f"Kafka refused a transaction: {type(error).__name__}")
    if isinstance(error, MessageSizeTooLargeError):
        assert "exactly-once cannot skip one record" in info.value.message
        assert info.value.fatal
    if not info.value.fatal:
        await outbox.commit({TP: 1})
        assert producer.transactions[-1].outcome == "committed"
        assert [r.value for r in producer.transactions[-1].records] == [b"0"]
        assert len(outbox) == 0


async def test_a_producer_in_a_fatal_state_cannot_begin_a_transaction() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")  # type: ignore[arg-type]
    outbox.stage(TP, 0, [out()])
    producer._txn_manager.fatal = True  # after an earlier fence: begin asserts
    with pytest.raises(ProducerFencedError) as info:
        await outbox.commit({TP: 1})
    assert isinstance(info.value.__cause__, AssertionError)
    assert "while committing a transaction (Invalid state transition" in info.value.message
    assert len(outbox) == 1


async def test_outbox_commits_offsets_of_a_partition_with_nothing_staged() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")  # type: ignore[arg-type]
    await outbox.commit({TP: 5})  # e.g. the start position, before anything finished
    [txn] = producer.transactions
    assert txn.outcome == "committed" and txn.records == [] and txn.offsets == {TP: 5}


async def test_outbox_sends_each_record_with_its_key_and_headers() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")  # type: ignore[arg-type]
    record = OutRecord("verdicts", b"key-1", b"{}", [("modstream-event-id", b"e1")])
    outbox.stage(TP, 0, [record])
    await outbox.commit({TP: 1})
    [sent] = producer.transactions[0].records
    assert (sent.topic, sent.key, sent.value, sent.headers) == (
        "verdicts",
        b"key-1",
        b"{}",
        [("modstream-event-id", b"e1")],
    )


async def test_an_error_that_leaves_the_transaction_state_fatal_is_a_fenced_producer() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")  # type: ignore[arg-type]
    outbox.stage(TP, 0, [out()])
    gate = producer.txn_commit_gate = asyncio.Event()
    producer.txn_commit_errors.append(KafkaTimeoutError())  # looks retriable, is not now
    task = asyncio.create_task(outbox.commit({TP: 1}))
    await eventually(
        lambda: (
            producer.transactions[-1:] != [] and producer.transactions[-1].outcome == "committing"
        )
    )
    producer._txn_manager.fatal = True  # the broker's answer turned the state fatal
    gate.set()
    with pytest.raises(ProducerFencedError) as info:
        await task
    assert isinstance(info.value.__cause__, KafkaTimeoutError)
    assert "failed for good while committing a transaction;" in info.value.message
    assert len(outbox) == 1


async def test_an_overlapping_transaction_is_a_fatal_state_not_a_crash() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")  # type: ignore[arg-type]
    outbox.stage(TP, 0, [out()])
    gate = producer.txn_commit_gate = asyncio.Event()
    first = asyncio.create_task(outbox.commit({TP: 1}))
    await eventually(lambda: producer.transactions != [], what="the first transaction open")
    with pytest.raises(ProducerFencedError) as info:  # what the pipeline's lock rules out
        await outbox.commit({TP: 1})
    assert isinstance(info.value.__cause__, AssertionError)
    assert producer.overlaps == 1
    gate.set()
    await first
    assert len(outbox) == 0


# ---- consumer.kafka.translate.translate -----------------------------------------------------

RETRIABLE = [
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.KafkaConnectionError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.NotEnoughReplicasError,
    kafka_errors.NotEnoughReplicasAfterAppendError,
    kafka_errors.UnknownTopicOrPartitionError,
    # aiokafka says non-retriable, yet each passes once the broker is back:
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.ConcurrentTransactions,
]
REJECTED = [
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
    kafka_errors.PolicyViolationError,
    kafka_errors.InvalidRequiredAcksError,
    kafka_errors.OutOfOrderSequenceNumber,
]
NOT_AUTHORIZED = [
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
]
FENCED = [kafka_errors.ProducerFenced, kafka_errors.InvalidProducerEpoch]

TABLE = (
    [(c, BrokerUnavailable) for c in RETRIABLE]
    + [(c, PublishRejected) for c in REJECTED]
    + [(c, BrokerRejected) for c in NOT_AUTHORIZED]
    + [(c, ProducerFencedError) for c in FENCED]
)


@pytest.mark.parametrize(("cls", "ours"), TABLE, ids=[c.__name__ for c, _ in TABLE])
def test_translate(cls: type[KafkaError], ours: type[ModstreamError]) -> None:
    error = translate(cls(), "sending outputs")
    assert type(error) is ours
    assert error.retriable is (ours is BrokerUnavailable)
    assert error.fatal is (ours in (BrokerRejected, ProducerFencedError))
    if ours is not ProducerFencedError:
        assert error.message.startswith(f"Kafka refused sending outputs: {cls.__name__}")
    if ours is BrokerRejected:
        assert "ACL" in error.message
    if ours is ProducerFencedError:
        assert "transactional id" in error.message


def _all_kafka_errors() -> list[type[KafkaError]]:
    found = []
    for value in vars(kafka_errors).values():
        if isinstance(value, type) and issubclass(value, KafkaError):
            try:
                str(value())
            except (TypeError, AttributeError):  # needs arguments, or abstract (no errno)
                continue
            found.append(value)
    return found


def test_translate_every_aiokafka_error_into_one_of_ours_never_retrying_a_permanent_one() -> None:
    passing = {c for c in RETRIABLE if not c.retriable}
    for cls in _all_kafka_errors():
        error = translate(cls(), "x")
        assert type(error) in (
            BrokerUnavailable,
            PublishRejected,
            BrokerRejected,
            ProducerFencedError,
        )
        if error.retriable:  # retried forever: only what aiokafka calls retriable, or passes
            assert cls.retriable or cls in passing or issubclass(cls, tuple(passing)), cls
        elif cls.retriable:
            assert error.fatal, cls  # a retriable class is only overridden to stop (auth)


# ---- dead letters and fit ------------------------------------------------------------------


def _dead(
    value: bytes | None,
    *,
    message: str = "bad",
    headers: tuple[tuple[str, bytes | None], ...] = (),
    reply: str | None = None,
    redact: bool = False,
    max_bytes: int | None = None,
) -> DeadLetter:
    error: ModstreamError = InvalidReply(message, reply=reply) if reply else DecodeError(message)
    env = envelope(value=value, headers=headers)
    return dead_letter(
        env,
        error,
        stage="classify",
        policy_version="p1",
        attempts=2,
        redact=redact,
        max_bytes=max_bytes,
    )


def test_dead_letter_carries_the_input_and_the_reason() -> None:
    dead = _dead(b"\x00\xffraw", headers=(("h", b"v"), ("n", None)), reply="{not json")
    assert base64.b64decode(dead.payload_b64 or "") == b"\x00\xffraw"
    assert dead.payload_sha256 == hashlib.sha256(b"\x00\xffraw").hexdigest()
    assert dead.payload_length == 5 and not dead.payload_truncated
    assert dead.error_class == "InvalidReply" and dead.reply == "{not json"
    assert [(h.key, h.value_b64) for h in dead.headers] == [("h", "dg=="), ("n", None)]
    assert dead.attempts == 2 and dead.stage == "classify"
    assert dead.source.offset == 7


def test_dead_letter_defaults_and_identity() -> None:
    env = envelope()
    dead = dead_letter(env, DecodeError("bad"), stage="decode", policy_version="p1")
    assert dead.attempts == 0 and dead.payload_b64 is not None and not dead.payload_redacted
    assert dead.event_id == make_event_id(env.source, "p1", "dead_letter")  # de-duplication
    assert dead.created_at.utcoffset() == timedelta(0)


def test_a_redacted_dead_letter_has_no_payload_and_no_reply() -> None:
    dead = _dead(b"secret", reply="the reply", redact=True)
    assert dead.payload_b64 is None and dead.reply is None and dead.payload_redacted
    assert dead.payload_sha256 == hashlib.sha256(b"secret").hexdigest()


def test_a_record_without_a_value_has_no_payload_length() -> None:
    dead = _dead(None)
    assert dead.payload_length is None and dead.payload_b64 == ""


def test_fit_raises_broker_rejected_when_even_the_skeleton_is_too_large() -> None:
    headers = tuple((f"header-{i}-" + "k" * 200, b"v") for i in range(30))
    with pytest.raises(BrokerRejected) as info:
        _dead(b"x" * 10_000, headers=headers, max_bytes=4096)
    assert "4096 bytes allowed" in info.value.message
    assert info.value.fatal


def test_fit_leaves_header_values_out_only_when_needed() -> None:
    headers = (("big", b"h" * 30_000), ("small", b"s"))
    dead = _dead(b"p" * 100, headers=headers, max_bytes=8192)
    assert dead.headers_truncated and [h.key for h in dead.headers] == ["big", "small"]
    assert all(h.value_b64 is None for h in dead.headers)
    assert len(dead.model_dump_json().encode()) <= 8192


def test_fit_shortens_a_long_error_message_and_reply() -> None:
    dead = _dead(b"p", message="m" * 50_000, reply="r" * 50_000, max_bytes=16_384)
    assert len(dead.error_message) == 2000 and dead.reply == "r" * 2000
    assert dead.error_message == "m" * 2000
    assert not dead.headers_truncated


#: Any text that can be encoded: control characters (6 bytes in JSON) and 4-byte UTF-8 included.
ASCII = st.characters(blacklist_categories=("Cs",))


@st.composite
def dead_letter_inputs(draw: st.DrawFn) -> dict[str, object]:
    size = draw(st.one_of(st.integers(0, 4096), st.integers(0, 2_000_000)))
    seed = draw(st.integers(0, 2**32 - 1))
    value = random.Random(seed).randbytes(size)
    headers = draw(
        st.lists(
            st.tuples(st.text(ASCII, max_size=40), st.one_of(st.none(), st.binary(max_size=3000))),
            max_size=4,
        )
    )
    short = st.text(ASCII, max_size=200)
    long = st.text(ASCII, min_size=1, max_size=20).map(lambda t: t * 1000)
    return {
        "value": value,
        "headers": tuple(headers),
        "message": draw(st.one_of(short, long)) or "x",
        "reply": draw(st.one_of(st.none(), st.text(ASCII, min_size=1, max_size=3000))),
        "redact": draw(st.booleans()),
        "limit": draw(st.integers(4096, 3_000_000)),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dead_letter_inputs())
def test_fit_property(case: dict[str, object]) -> None:
    value = case["value"]
    assert isinstance(value, bytes)
    limit = case["limit"]
    assert isinstance(limit, int)
    kwargs = {k: case[k] for k in ("message", "headers", "reply", "redact")}
    whole = _dead(value, **kwargs)  # type: ignore[arg-type]
    cut = fit(whole, value, limit)
    assert len(cut.model_dump_json().encode()) <= limit
    assert cut.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert cut.payload_length == len(value)
    if len(whole.model_dump_json().encode()) <= limit:
        assert cut == whole  # a dead letter that fits is unchanged
        assert not cut.payload_truncated and not cut.headers_truncated
        return
    assert (cut.source, cut.error_class, cut.stage) == (whole.source, whole.error_class, "classify")
    assert [h.key for h in cut.headers] == [h.key[:256] for h in whole.headers]
    if case["redact"]:
        assert cut.payload_b64 is None and not cut.payload_truncated
        return
    head = base64.b64decode(cut.payload_b64 or "")
    assert value.startswith(head)
    assert cut.payload_truncated == (head != value)
    # The payload keeps every byte the limit leaves room for (base64: 3 bytes per 4 chars).
    assert head == value or limit - len(cut.model_dump_json().encode()) < 4 + 4


def test_a_dead_letter_of_exactly_the_limit_is_unchanged() -> None:
    whole = _dead(b"z" * 30_000, message="m" * 3000)
    size = len(whole.model_dump_json().encode())
    assert fit(whole, b"z" * 30_000, size) is whole  # (past the cheap estimate: serialized)
    cut = fit(whole, b"z" * 30_000, size - 1)
    assert cut.payload_truncated and len(cut.model_dump_json().encode()) <= size - 1


def test_fit_cuts_the_payload_before_the_message_and_the_message_before_the_headers() -> None:
    value = b"p" * 20_000
    headers = (("h", b"v" * 300),)
    whole = _dead(value, message="m" * 3000, headers=headers)
    cut = fit(whole, value, 12_000)  # the payload's cut is enough
    assert cut.payload_truncated and cut.error_message == "m" * 3000
    assert cut.headers == whole.headers and not cut.headers_truncated
    cut = fit(whole, value, 3000)  # the message is cut too; the header still fits
    assert cut.error_message == "m" * 2000 and cut.headers == whole.headers
    assert not cut.headers_truncated


def test_fit_shrinks_only_as_far_as_needed_at_each_step() -> None:
    value = b"z" * 10_000
    whole = _dead(value, message="m" * 3000, headers=(("h", b"v" * 100),))
    # The skeleton as fit measures it: no payload, not (yet) marked truncated ("false" is one
    # byte longer than "true", so a whole payload that fits is never one byte over).
    no_payload = whole.model_copy(update={"payload_b64": ""})
    limit = len(no_payload.model_dump_json().encode())  # exactly the skeleton: room 0
    cut = fit(whole, value, limit)
    assert cut.error_message == "m" * 3000 and cut.payload_b64 == ""  # the message fits whole
    assert cut.headers == whole.headers
    short = no_payload.model_copy(update={"error_message": "m" * 2000})
    limit = len(short.model_dump_json().encode())
    cut = fit(whole, value, limit)
    assert cut.error_message == "m" * 2000 and not cut.headers_truncated  # headers fit whole


def test_fit_keeps_the_first_256_characters_of_a_header_key() -> None:
    dead = _dead(b"p" * 50_000, headers=(("k" * 300, b"v" * 20_000),), max_bytes=8192)
    assert dead.headers_truncated and dead.headers[0].key == "k" * 256


def test_fit_cuts_a_two_megabyte_payload_to_a_head_slice() -> None:
    value = random.Random(1).randbytes(2_000_000)
    dead = _dead(value, max_bytes=1_000_000 - 2 * RECORD_OVERHEAD_BYTES)
    size = len(dead.model_dump_json().encode())
    assert (
        1_000_000 - 2 * RECORD_OVERHEAD_BYTES - 4 <= size <= 1_000_000 - 2 * RECORD_OVERHEAD_BYTES
    )
    head = base64.b64decode(dead.payload_b64 or "")
    assert dead.payload_truncated and value.startswith(head) and len(head) > 700_000
    assert dead.payload_length == 2_000_000


@pytest.mark.parametrize("value", [b"", b"abc"])
def test_fit_reports_a_payload_truncated_only_when_it_was_cut(value: bytes) -> None:
    dead = _dead(value, message="0000" * 1000, max_bytes=4096)  # the message is what is big
    assert base64.b64decode(dead.payload_b64 or "") == value  # the payload is whole ...
    assert dead.payload_truncated is False  # ... yet marked truncated


@pytest.mark.parametrize(
    ("message", "reply"),
    [("\x1f" * 1000, None), ("bad", "\U0001f600" * 900)],  # control characters; emoji
    ids=["control-chars-in-message", "emoji-in-reply"],
)
def test_fit_bound_holds_for_text_json_or_utf8_makes_larger(
    message: str, reply: str | None
) -> None:
    dead = _dead(b"", message=message, reply=reply, max_bytes=4096)
    assert len(dead.model_dump_json().encode()) <= 4096


def test_fit_shortens_multibyte_error_text_until_it_fits() -> None:
    dead = _dead(b"payload", message="\u0800" * 3000, max_bytes=4096)
    assert len(dead.model_dump_json().encode()) <= 4096
