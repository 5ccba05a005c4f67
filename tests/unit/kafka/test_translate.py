"""consumer.kafka.translate: each aiokafka error becomes one of ours, retried only if it passes."""

from __future__ import annotations

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.errors import KafkaError

from consumer.errors import (
    BrokerRejected,
    BrokerUnavailable,
    ModstreamError,
    ProducerFencedError,
    PublishRejected,
)
from consumer.kafka.translate import translate

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
