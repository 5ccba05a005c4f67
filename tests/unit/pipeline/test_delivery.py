"""Delivery: at-least-once (acknowledged, then committed through the group) and exactly-once
(usage at once, the rest staged and committed in one transaction), behind one interface.

The consumer and the producers are the in-memory fakes of ``tests.unit.kafka_fakes``; the events
are real.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)
from aiokafka.structs import TopicPartition

from consumer.errors import (
    BrokerRejected,
    BrokerUnavailable,
    DecodeError,
    ModstreamError,
    PublishRejected,
)
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitted
from consumer.pipeline.dead_letter import dead_letter
from consumer.pipeline.delivery import AtLeastOnce, ExactlyOnce
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.outbox import Outbox
from consumer.pipeline.publish import OutRecord, Publisher, Topics
from consumer.pipeline.source import Envelope
from schemas import ModerationRequest
from tests.unit.kafka_fakes import FakeConsumer, FakeProducer, usage_for, verdict_for

pytestmark = pytest.mark.timeout(60)

TOPICS = Topics("verdicts", "usage", "dlq")
TP = TopicPartition("in", 0)


def envelope(offset: int = 0) -> Envelope:
    return Envelope("in", 0, offset, b"k", b'{"id": "m", "text": "hi"}', (), 1_700_000_000_000)


def records(env: Envelope) -> list[OutRecord]:
    """One classified input's outputs, serialized: its verdict and its usage event."""
    request = ModerationRequest(id="m", text="hi")
    admitted = Admitted(request, "hi", None, truncated=False, content_tokens=1)
    verdict, usage = verdict_for(admitted, env.source), [usage_for(env.source, "m")]
    return Publisher(None, TOPICS).records(env, verdict=verdict, usage=usage)


def at_least_once(
    producer: FakeProducer, consumer: FakeConsumer, metrics: Metrics | None = None
) -> AtLeastOnce:
    publisher = Publisher(producer, TOPICS)
    return AtLeastOnce(publisher, consumer, metrics or Metrics())


def exactly_once(producer: FakeProducer, txn: FakeProducer) -> ExactlyOnce:
    publisher = Publisher(producer, TOPICS)
    return ExactlyOnce(publisher, Outbox(txn, "group"), Metrics())


# ---- at least once -------------------------------------------------------------------------


async def test_at_least_once_returns_once_every_output_is_acknowledged() -> None:
    producer = FakeProducer()
    gate = producer.ack_gates["verdicts"] = asyncio.Event()
    delivery = at_least_once(producer, FakeConsumer([TP]))
    env = envelope()
    task = asyncio.create_task(delivery.deliver(env, records(env)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # the usage event is acknowledged, the verdict not yet
    gate.set()
    async with asyncio.timeout(5):
        await task
    assert sorted(r.topic for r in producer.acked) == ["usage", "verdicts"]
    assert not any(r.in_transaction for r in producer.sent)


async def test_at_least_once_retries_what_kafka_refuses_for_now_and_counts_it() -> None:
    producer = FakeProducer()
    producer.fail("verdicts", KafkaTimeoutError())
    metrics = Metrics()
    delivery = at_least_once(producer, FakeConsumer([TP]), metrics)
    env = envelope()
    await delivery.deliver(env, records(env))
    assert [r.topic for r in producer.on("verdicts")] == ["verdicts"]
    labels = {"reason": "KafkaTimeoutError"}
    assert metrics.registry.get_sample_value("modstream_publish_retries_total", labels) == 1


async def test_an_output_kafka_can_never_take_is_raised_not_retried() -> None:
    producer = FakeProducer()
    producer.fail("verdicts", MessageSizeTooLargeError())
    delivery = at_least_once(producer, FakeConsumer([TP]))
    env = envelope()
    with pytest.raises(PublishRejected):
        await delivery.deliver(env, records(env))
    assert len(producer.on("verdicts", acked=False)) == 1  # sent once


async def test_at_least_once_commits_through_the_group_and_translates_refusals() -> None:
    consumer = FakeConsumer([TP])
    delivery = at_least_once(FakeProducer(), consumer)
    await delivery.commit({TP: 3})
    assert consumer.ok_commits() == [{TP: 3}]
    consumer.commit_errors.append(CommitFailedError("rebalance in progress"))
    with pytest.raises(ModstreamError) as refused:
        await delivery.commit({TP: 4})
    assert not refused.value.fatal and "an offset commit" in refused.value.message
    consumer.commit_errors.append(GroupAuthorizationFailedError())
    with pytest.raises(BrokerRejected) as denied:
        await delivery.commit({TP: 4})
    assert denied.value.fatal


def test_at_least_once_holds_what_the_tracker_holds_and_has_nothing_to_drop() -> None:
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.track(TP, offset)
    tracker.done(TP, 1)  # done, queued behind 0
    tracker.done(TP, 2)
    delivery = at_least_once(FakeProducer(), FakeConsumer([TP]))
    assert delivery.held(tracker) == tracker.held() == 3
    delivery.drop([TP])  # nothing waits here
    tracker.done(TP, 0)
    assert delivery.held(tracker) == 0


# ---- exactly once --------------------------------------------------------------------------


async def test_exactly_once_sends_usage_at_once_and_stages_the_verdict() -> None:
    producer, txn = FakeProducer(), FakeProducer()
    delivery = exactly_once(producer, txn)
    env = envelope(4)
    await delivery.deliver(env, records(env))
    assert [r.topic for r in producer.acked] == ["usage"]  # outside any transaction
    assert txn.sent == [] and len(delivery.outbox) == 1
    await delivery.commit({TP: 5})
    [transaction] = txn.committed_transactions()
    assert [r.topic for r in transaction.records] == ["verdicts"]
    assert transaction.offsets == {TP: 5} and transaction.group_id == "group"
    assert len(delivery.outbox) == 0


async def test_exactly_once_stages_a_dead_letter_too() -> None:
    producer, txn = FakeProducer(), FakeProducer()
    delivery = exactly_once(producer, txn)
    env = envelope()
    dead = dead_letter(env, DecodeError("bad"), stage="decode", policy_version="p")
    await delivery.deliver(env, Publisher(None, TOPICS).records(env, dead=dead))
    assert producer.sent == []  # no usage: nothing goes out at once
    await delivery.commit({TP: 1})
    assert [r.topic for r in txn.committed_transactions()[0].records] == ["dlq"]


async def test_exactly_once_holds_in_flight_records_and_staged_outputs() -> None:
    """Done records leave the tracker at once, but their outputs wait for the transaction:
    the window counts them until it commits."""
    producer, txn = FakeProducer(), FakeProducer()
    delivery = exactly_once(producer, txn)
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.track(TP, offset)
    for offset in (0, 1):
        env = envelope(offset)
        await delivery.deliver(env, records(env))
        tracker.done(TP, offset)
    assert tracker.held() == 1  # 0 and 1 released
    assert delivery.held(tracker) == 3  # 2 in flight, 0 and 1 staged
    delivery.drop([TP])  # revoked: never sent, redone by the next owner
    assert delivery.held(tracker) == 1
    await delivery.commit({TP: 2})
    assert txn.committed_transactions()[0].records == []


async def test_exactly_once_retries_a_usage_event_and_raises_a_failed_transaction() -> None:
    producer, txn = FakeProducer(), FakeProducer()
    producer.fail("usage", KafkaTimeoutError())
    delivery = exactly_once(producer, txn)
    env = envelope()
    await delivery.deliver(env, records(env))
    assert len(producer.on("usage")) == 1 and len(producer.on("usage", acked=False)) == 2
    txn.txn_commit_errors.append(KafkaTimeoutError())
    with pytest.raises(BrokerUnavailable):
        await delivery.commit({TP: 1})
    assert len(delivery.outbox) == 1  # kept for the next transaction
