"""The exactly-once outbox: staging, one transaction per commit, and what a failed one leaves.

The producer is the in-memory fake of ``tests.unit.kafka_fakes``: its ``transaction()`` raises
aiokafka's ``AssertionError`` on a second begin while one is open, as the real one does.
"""

from __future__ import annotations

import asyncio

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

from consumer.errors import (
    BrokerRejected,
    BrokerUnavailable,
    ModstreamError,
    ProducerFencedError,
)
from consumer.pipeline.outbox import Outbox
from consumer.pipeline.publish import OutRecord
from tests.unit.kafka_fakes import FakeProducer, eventually

pytestmark = pytest.mark.timeout(120)

TP = TopicPartition("in", 0)


def out(topic: str = "verdicts", value: bytes = b"{}", key: bytes | None = b"k") -> OutRecord:
    return OutRecord(topic, key, value, [("content-type", b"application/json")])


# ---- Outbox --------------------------------------------------------------------------------


def test_outbox_len_counts_staged_inputs() -> None:
    outbox = Outbox(FakeProducer(), "g")
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
    outbox = Outbox(producer, "group-1")
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
    outbox = Outbox(producer, "g")
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
    outbox = Outbox(producer, "g")
    outbox.stage(TP, 0, [out()])
    producer._txn_manager.fatal = True  # after an earlier fence: begin asserts
    with pytest.raises(ProducerFencedError) as info:
        await outbox.commit({TP: 1})
    assert isinstance(info.value.__cause__, AssertionError)
    assert "while committing a transaction (Invalid state transition" in info.value.message
    assert len(outbox) == 1


async def test_outbox_commits_offsets_of_a_partition_with_nothing_staged() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")
    await outbox.commit({TP: 5})  # e.g. the start position, before anything finished
    [txn] = producer.transactions
    assert txn.outcome == "committed" and txn.records == [] and txn.offsets == {TP: 5}


async def test_outbox_sends_each_record_with_its_key_and_headers() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, "g")
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
    outbox = Outbox(producer, "g")
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
    outbox = Outbox(producer, "g")
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
