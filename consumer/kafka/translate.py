"""Kafka's errors in our terms: the one place aiokafka's exceptions become ours.

Every send, transaction and commit that can fail goes through :func:`translate`, so the
pipeline's retry, dead-letter and stop decisions read ``retriable`` and ``fatal`` of our own
error tree (:mod:`consumer.errors`) instead of aiokafka's class list:

==========================================  ===========================  =====================
aiokafka says                               ours                         what happens
==========================================  ===========================  =====================
``retriable=True`` (no leader, connection,  ``BrokerUnavailable``        retried with backoff
not enough replicas), and the few that                                   and a WARNING
aiokafka marks non-retriable although they
pass (request timeout, broker not
available, concurrent transactions)
the record can never be written (too        ``PublishRejected``          the input becomes a
large, corrupt, invalid, bad timestamp,                                  dead letter with the
policy violation)                                                        reason
not authorized (topic, cluster, txn id)     ``BrokerRejected`` (fatal)   the service stops, 3
fenced, or the producer's transaction       ``ProducerFencedError``      the service stops, 3
state is fatal                              (fatal)
any other non-retriable error               ``PublishRejected``          dead letter: it can
                                                                         never succeed as is
==========================================  ===========================  =====================
"""

from __future__ import annotations

from aiokafka.errors import (
    BrokerNotAvailableError,
    ClusterAuthorizationFailedError,
    ConcurrentTransactions,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from consumer.errors import (
    BrokerRejected,
    BrokerUnavailable,
    ModstreamError,
    ProducerFencedError,
    PublishRejected,
)

#: aiokafka marks these non-retriable, yet each passes once the broker is back.
_PASSING = (
    KafkaTimeoutError,
    KafkaUnavailableError,
    BrokerNotAvailableError,
    ConcurrentTransactions,
)

_NOT_AUTHORIZED = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

FENCED_MESSAGE = (
    "another modstream instance took over this transactional id (the same "
    "MODSTREAM_TRANSACTIONAL_ID, or a restarted pod): stopping, so the newer one owns "
    "its partitions"
)


def translate(exc: KafkaError, doing: str) -> ModstreamError:
    """Our error for ``exc``, raised while ``doing`` (e.g. "sending outputs")."""
    name = type(exc).__name__
    detail = f"Kafka refused {doing}: {name}: {exc}"
    if isinstance(exc, ProducerFenced | InvalidProducerEpoch):
        return ProducerFencedError(FENCED_MESSAGE)
    if isinstance(exc, _NOT_AUTHORIZED):
        return BrokerRejected(
            f"{detail}. The Kafka principal lacks an ACL it needs (write on the output "
            "topics, read on the input topic and group, and for exactly-once the "
            "transactional id)"
        )
    if exc.retriable or isinstance(exc, _PASSING):
        return BrokerUnavailable(detail)
    return PublishRejected(detail)


def fatal_transaction_state(doing: str) -> ProducerFencedError:
    """The transactional producer can no longer be used (aiokafka's FATAL_ERROR state)."""
    return ProducerFencedError(
        f"the transactional producer failed for good while {doing}; {FENCED_MESSAGE}"
    )
