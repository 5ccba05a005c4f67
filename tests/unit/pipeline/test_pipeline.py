"""Pipeline: the window, ordering, rebalances, commits, both deliveries and publish errors.

The pipeline runs for real (``Pipeline.run`` as a task) against the fakes of
``tests.unit.kafka_fakes``: a consumer over in-memory partitions, a producer that acknowledges in
memory (errors injectable), and a classifier whose per-offset behaviour each test scripts. Tests
wait on conditions (``eventually``); the timeouts are safety nets, never the thing tested.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerFenced,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition
from structlog.testing import capture_logs

from consumer.app import Summary, summary
from consumer.errors import BrokerRejected, InvalidReply, ProducerFencedError, RebalanceFailed
from consumer.model.circuit import CircuitBreaker, CircuitState
from consumer.ops.metrics import Metrics
from consumer.pipeline.delivery import AtLeastOnce, ExactlyOnce
from consumer.pipeline.outbox import Outbox
from consumer.pipeline.publish import Publisher, Topics
from consumer.pipeline.runner import Pipeline
from consumer.pipeline.source import Rebalance
from consumer.pipeline.stages import Stages
from consumer.settings import Delivery, Settings, load_settings
from tests.unit.kafka_fakes import (
    Behaviour,
    FakeClassifier,
    FakeConsumer,
    FakeProducer,
    admitter,
    eventually,
    request_bytes,
)
from tests.unit.virtual_time import VirtualTimeLoop, on_virtual_time

pytestmark = pytest.mark.timeout(60)

SETTINGS = load_settings()
TOPIC = SETTINGS.input_topic
VERDICTS, USAGE, DLQ = SETTINGS.verdict_topic, SETTINGS.usage_topic, SETTINGS.dlq_topic
P0 = TopicPartition(TOPIC, 0)
P1 = TopicPartition(TOPIC, 1)


@dataclass
class Rig:
    settings: Settings
    consumer: FakeConsumer
    producer: FakeProducer  # the plain producer: at-least-once outputs, and usage always
    txn: FakeProducer  # the transactional producer (exactly-once only)
    classifier: FakeClassifier
    metrics: Metrics
    pipeline: Pipeline
    stop: asyncio.Event

    @property
    def outbox(self) -> Outbox:
        assert isinstance(self.pipeline.delivery, ExactlyOnce)
        return self.pipeline.delivery.outbox

    def summary(self) -> Summary:
        """The run's figures as the stop line reports them (read from the metrics)."""
        return summary(self.metrics)

    def verdict_offsets(
        self, tp: TopicPartition = P0, *, producer: FakeProducer | None = None
    ) -> list[int]:
        """Offsets of ``tp`` whose verdicts were acknowledged, in acknowledgement order."""
        records = (producer or self.producer).on(VERDICTS)
        return [
            r.json()["source"]["offset"]
            for r in records
            if r.json()["source"]["partition"] == tp.partition
        ]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def make(
    *,
    partitions: tuple[TopicPartition, ...] = (P0,),
    exactly_once: bool = False,
    limits: dict[str, int] | None = None,
    dead_letter_max_bytes: int | None = None,
    classify_with: FakeClassifier | None = None,
    breaker: CircuitBreaker | None = None,
    **overrides: Any,
) -> Rig:
    config: dict[str, Any] = {
        "concurrency": 1,
        "max_in_flight": 16,
        "commit_interval_s": 60.0,  # commits only when a test asks, unless it says otherwise
        "shutdown_grace_s": 5.0,
        **overrides,
    }
    if exactly_once:
        config["delivery"] = Delivery.EXACTLY_ONCE
    settings = load_settings(**config)
    consumer = FakeConsumer(partitions)
    producer, txn = FakeProducer(), FakeProducer()
    classifier = FakeClassifier()
    metrics = Metrics()
    publisher = Publisher(producer, Topics(VERDICTS, USAGE, DLQ), limits)
    # What consumer.app chooses from MODSTREAM_DELIVERY.
    delivery = (
        ExactlyOnce(publisher, Outbox(txn, settings.group_id), metrics)
        if exactly_once
        else AtLeastOnce(publisher, consumer, metrics)
    )
    stages = Stages(
        settings,
        admitter=admitter(),
        classify=(classify_with or classifier).classify,
        publisher=publisher,
        delivery=delivery,
        metrics=metrics,
        policy_version=classifier.policy.version,
        dead_letter_max_bytes=dead_letter_max_bytes,
    )
    pipeline = Pipeline(
        settings,
        consumer=consumer,
        stages=stages,
        delivery=delivery,
        breaker=breaker or classifier.breaker,
        metrics=metrics,
    )
    consumer.listener = Rebalance(pipeline.on_revoked, pipeline.on_assigned)
    # An empty poll waits this long for records: short, so a stop is noticed at once.
    pipeline.source.fetch_timeout_ms = 20
    return Rig(settings, consumer, producer, txn, classifier, metrics, pipeline, asyncio.Event())


@asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[asyncio.Task[None]]:
    """Run the pipeline as a task; on leaving, stop it and wait for ``run`` to return."""
    await rig.pipeline.on_assigned(rig.consumer.assignment())
    task = asyncio.create_task(rig.pipeline.run(rig.stop))
    try:
        yield task
    finally:
        rig.stop.set()
        if not task.done():
            async with asyncio.timeout(15):
                await asyncio.wait([task])


@asynccontextmanager
async def released_at_exit(*gates: asyncio.Event) -> AsyncIterator[None]:
    """Open ``gates`` on leaving: uncancellable work must end with the test, even a failing one
    (else stopping the pipeline waits for it and the failure becomes a hang)."""
    try:
        yield
    finally:
        for gate in gates:
            gate.set()


def fatal_of(exc: BaseException) -> BaseException:
    """The error ``run`` stopped with (the task group wraps it)."""
    while isinstance(exc, BaseExceptionGroup):
        assert len(exc.exceptions) == 1, exc.exceptions
        exc = exc.exceptions[0]
    return exc


def offset_of(offset: int, partition: int = 0) -> Callable[[bytes], bool]:
    """A producer-error matcher: the output of this input."""

    def match(value: bytes) -> bool:
        source = json.loads(value)["source"]
        return bool(source["offset"] == offset and source["partition"] == partition)

    return match


# ---- the window ----------------------------------------------------------------------------


async def test_window_stops_fetching_at_max_in_flight_held_records_and_resumes() -> None:
    rig = make(max_in_flight=4)
    rig.consumer.fill(P0, range(12))
    head = rig.classifier.block(0, 0)
    held_at_poll: list[int] = []
    rig.consumer.on_poll.append(lambda _: held_at_poll.append(rig.pipeline.tracker.held()))
    async with running(rig):
        # 1..3 finish behind the stuck head: they are still held (not releasable).
        await eventually(lambda: rig.pipeline.tracker.in_flight() == 1, what="1..3 done")
        assert sorted(rig.verdict_offsets()) == [1, 2, 3]
        assert rig.pipeline.tracker.held() == 4
        polls = len(rig.consumer.polls)
        await eventually(
            lambda: any(P0 in paused for _, paused, _ in rig.consumer.polls[polls:]),
            what="a poll with the partition paused",
        )
        assert await rig.consumer.position(P0) == 4  # nothing more was fetched
        assert all(offset < 4 for _, offset in rig.classifier.started)
        polls = len(rig.consumer.polls)
        head.set()
        await eventually(lambda: len(rig.verdict_offsets()) == 12, what="everything done")
        # Resumed: a poll with the partition unpaused fetched the next records.
        assert any(P0 not in paused and got for _, paused, got in rig.consumer.polls[polls:])
    # Never more than the window in memory: held before a poll plus what it returned.
    assert len(held_at_poll) == len(rig.consumer.polls)
    assert (
        max(h + got for h, (_, _, got) in zip(held_at_poll, rig.consumer.polls, strict=True)) <= 4
    )
    assert rig.consumer.committed(P0) == 12


async def test_exactly_once_window_counts_outputs_waiting_for_their_transaction() -> None:
    rig = make(max_in_flight=4, exactly_once=True, commit_interval_s=0.01)
    rig.consumer.fill(P0, range(8))
    head = rig.classifier.block(0, 0)
    rig.txn.txn_commit_gate = asyncio.Event()  # every transaction is slow to commit
    async with running(rig):
        await eventually(lambda: len(rig.outbox) == 3, what="1..3 staged")
        head.set()
        await eventually(lambda: len(rig.outbox) == 4, what="0..3 staged")
        # The tracker released everything, but the outputs wait for their transaction: the
        # window is still full, so fetching stays stopped.
        assert rig.pipeline.tracker.held() == 0
        polls = len(rig.consumer.polls)
        await eventually(
            lambda: any(P0 in paused for _, paused, _ in rig.consumer.polls[polls:]),
            what="a poll with the partition paused",
        )
        assert await rig.consumer.position(P0) == 4
        # Usage events went out at once on the plain producer; verdicts only in transactions.
        assert len(rig.producer.on(USAGE)) == 4
        assert rig.producer.on(VERDICTS, acked=False) == []
        rig.txn.txn_commit_gate.set()
        await eventually(lambda: len(rig.verdict_offsets(producer=rig.txn)) == 8, what="all")
    committed = rig.txn.committed_transactions()
    with_records = [t for t in committed if t.records]
    assert with_records[0].offsets == {P0: 4}
    assert sorted(r.json()["source"]["offset"] for r in with_records[0].records) == [0, 1, 2, 3]
    assert committed[-1].offsets == {P0: 8}
    assert rig.txn.overlaps == 0


# ---- ordering ------------------------------------------------------------------------------


async def test_ordering_key_runs_one_key_in_offset_order_and_keys_concurrently() -> None:
    rig = make(ordering="key")
    keys = [b"a", b"b", b"a", b"b", b"a", None]
    for offset, key in enumerate(keys):
        rig.consumer.add(P0, offset, key=key)
    head = rig.classifier.block(0, 0)  # the first "a"
    async with running(rig):
        await eventually(lambda: sorted(rig.verdict_offsets()) == [1, 3, 5], what="b and None")
        assert (0, 2) not in rig.classifier.started  # waits behind 0, same key
        assert (0, 4) not in rig.classifier.started
        assert rig.classifier.max_running >= 2  # 0 and 1 ran at the same time
        head.set()
        await eventually(lambda: len(rig.verdict_offsets()) == 6, what="everything")
    by_key = {
        key: [r.json()["source"]["offset"] for r in rig.producer.on(VERDICTS) if r.key == key]
        for key in (b"a", b"b")
    }
    assert by_key == {b"a": [0, 2, 4], b"b": [1, 3]}
    a_started = [o for _, o in rig.classifier.started if keys[o] == b"a"]
    assert a_started == [0, 2, 4]
    assert rig.pipeline._tails == {}  # finished chains are forgotten (bounded by the window)


async def test_a_key_arriving_while_its_chain_runs_waits_for_it() -> None:
    rig = make(ordering="key")
    rig.consumer.add(P0, 0, key=b"a")
    rig.consumer.add(P0, 1, key=b"a")
    first = rig.classifier.block(0, 0)
    second = rig.classifier.block(0, 1)
    async with running(rig):
        await eventually(lambda: rig.classifier.started == [(0, 0)], what="0 runs")
        first.set()
        await eventually(lambda: (0, 1) in rig.classifier.started, what="1 runs")
        rig.consumer.add(P0, 2, key=b"a")  # same key, fetched while 1 still runs
        rig.consumer.add(P0, 3, key=b"b")
        await eventually(lambda: rig.verdict_offsets() == [0, 3], what="b done")
        assert (0, 2) not in rig.classifier.started
        second.set()
        await eventually(lambda: rig.verdict_offsets() == [0, 3, 1, 2], what="all in order")


async def test_ordering_partition_runs_a_partition_one_at_a_time_partitions_concurrently() -> None:
    rig = make(ordering="partition", partitions=(P0, P1))
    rig.consumer.fill(P0, range(4), key=b"x")
    rig.consumer.fill(P1, range(3), key=b"y")
    head = rig.classifier.block(0, 0)
    async with running(rig):
        await eventually(lambda: rig.verdict_offsets(P1) == [0, 1, 2], what="P1 done")
        assert [k for k in rig.classifier.started if k[0] == 0] == [(0, 0)]
        head.set()
        await eventually(lambda: len(rig.verdict_offsets(P0)) == 4, what="P0 done")
    assert rig.verdict_offsets(P0) == [0, 1, 2, 3]
    assert [o for p, o in rig.classifier.started if p == 0] == [0, 1, 2, 3]
    assert rig.pipeline._tails == {}


# ---- rebalances ----------------------------------------------------------------------------


async def test_revoke_drains_in_flight_work_then_commits_only_the_revoked_partition() -> None:
    rig = make(partitions=(P0, P1))
    rig.consumer.fill(P0, range(4))
    rig.consumer.fill(P1, range(4))
    gate = rig.classifier.block(0, 2)
    async with running(rig) as task:
        await eventually(lambda: len(rig.producer.on(VERDICTS)) == 7, what="all but P0@2")
        revoke = asyncio.create_task(rig.consumer.rebalance(revoke={P0}))
        await eventually(lambda: rig.pipeline.tracker._waiters != [], what="revoke draining")
        assert rig.consumer.commits == []  # not before the in-flight work finished
        gate.set()
        async with asyncio.timeout(5):
            await revoke
        assert rig.consumer.ok_commits() == [{P0: 4}]  # P0 alone, drained to its end
        assert P0 not in rig.pipeline.tracker.partitions()
        assert P1 in rig.pipeline.tracker.partitions()
        assert not task.done()
    assert task.exception() is None
    assert rig.consumer.ok_commits()[1:] == [{P1: 4}]
    assert rig.consumer.illegal_state_errors == 0


async def test_revoke_after_the_grace_period_commits_what_is_done_and_cancels_the_rest() -> None:
    rig = make(partitions=(P0, P1), shutdown_grace_s=0.2)
    rig.consumer.fill(P0, range(4))
    rig.consumer.fill(P1, range(2))
    rig.classifier.block(0, 2)  # never finishes
    async with running(rig) as task:
        await eventually(lambda: rig.summary().verdicts == 5, what="all but P0@2")
        await rig.consumer.rebalance(revoke={P0})
        assert rig.consumer.ok_commits() == [{P0: 2}]
        assert (0, 2) in rig.classifier.cancelled
        assert P0 not in rig.pipeline.tracker.partitions()
        assert rig.pipeline.tracker.held() == 0  # P1 all done and released
        assert not task.done()
    assert task.exception() is None
    assert rig.consumer.committed(P1) == 2
    assert all(P0 not in c for c in rig.consumer.ok_commits()[1:])


async def test_revoke_forgets_the_partition_when_the_commit_is_refused() -> None:
    rig = make(partitions=(P0, P1))
    rig.consumer.fill(P0, range(2))
    rig.consumer.fill(P1, range(2))
    async with running(rig) as task:
        await eventually(lambda: len(rig.producer.on(VERDICTS)) == 4, what="all done")
        rig.consumer.commit_errors.append(CommitFailedError("rebalance in progress"))
        with capture_logs() as logs:
            await rig.consumer.rebalance(revoke={P0})
        [warning] = [e for e in logs if e["log_level"] == "warning"]
        assert warning["event"] == "commit failed; uncommitted work will be redelivered"
        assert "CommitFailedError" in warning["error"]
        assert [c.outcome for c in rig.consumer.commits] == ["error: CommitFailedError"]
        assert P0 not in rig.pipeline.tracker.partitions()
        assert rig.metric("modstream_commit_failures_total") == 1
        assert not task.done()  # an expected refusal: the next owner redoes the work
    assert task.exception() is None
    assert rig.consumer.committed(P1) == 2


async def test_an_unexpected_error_in_revoke_lets_go_and_stops_run_with_rebalance_failed() -> None:
    rig = make(partitions=(P0, P1))
    rig.consumer.fill(P0, range(2))
    rig.consumer.fill(P1, range(2))
    async with running(rig) as task:
        await eventually(lambda: len(rig.producer.on(VERDICTS)) == 4, what="all done")
        rig.consumer.commit_errors.append(RuntimeError("coordinator exploded"))
        with capture_logs() as logs:
            await rig.consumer.rebalance(revoke={P0})  # aiokafka would swallow an exception
        assert P0 not in rig.pipeline.tracker.partitions()
        assert any(e["event"] == "rebalance callback failed" for e in logs)
        async with asyncio.timeout(5):
            await asyncio.wait([task])
    error = fatal_of(task.exception())  # type: ignore[arg-type]
    assert isinstance(error, RebalanceFailed)
    assert "coordinator exploded" in error.message
    assert len(rig.consumer.commits) == 1  # fatal: no final commit afterwards


async def test_commits_only_assigned_partitions() -> None:
    rig = make(partitions=(P0, P1))
    rig.consumer.fill(P0, range(3))
    rig.consumer.fill(P1, range(2))
    async with running(rig):
        await eventually(
            lambda: rig.pipeline.tracker.committable() == {P0: 3, P1: 2}, what="all done"
        )
        rig.consumer.unassign(P1)  # mid-rebalance: gone before any callback ran
        await rig.pipeline.committer.commit()
        assert rig.consumer.ok_commits() == [{P0: 3}]
    assert rig.consumer.illegal_state_errors == 0
    assert all(c.outcome == "ok" for c in rig.consumer.commits)
    assert all(P1 not in c.offsets for c in rig.consumer.commits)


async def test_revoke_during_a_slow_transaction_waits_instead_of_overlapping_it() -> None:
    rig = make(partitions=(P0, P1), exactly_once=True, commit_interval_s=0.01)
    rig.consumer.fill(P0, range(2))
    rig.consumer.fill(P1, range(2))
    gate = rig.txn.txn_commit_gate = asyncio.Event()
    async with running(rig) as task:
        await eventually(lambda: len(rig.producer.on(USAGE)) == 4, what="all classified")
        await eventually(
            lambda: any(t.outcome == "committing" for t in rig.txn.transactions),
            what="the commit loop's transaction is committing",
        )
        revoke = asyncio.create_task(rig.consumer.rebalance(revoke={P0}))
        await eventually(lambda: bool(rig.pipeline.committer._lock._waiters), what="revoke waits")
        assert len(rig.txn.transactions) == 1  # the revoke did not begin a second one
        gate.set()
        async with asyncio.timeout(5):
            await revoke
        assert P0 not in rig.pipeline.tracker.partitions()
        assert not task.done()
    assert task.exception() is None
    assert rig.txn.overlaps == 0
    assert all(t.outcome == "committed" for t in rig.txn.transactions)
    for tp in (P0, P1):  # each verdict committed exactly once, P0's before it was let go
        assert sorted(rig.verdict_offsets(tp, producer=rig.txn)) == [0, 1]


# ---- the outbox ----------------------------------------------------------------------------


async def test_outbox_commits_outputs_and_offsets_in_one_transaction() -> None:
    rig = make(exactly_once=True)
    rig.consumer.fill(P0, range(3))
    async with running(rig):
        await eventually(lambda: len(rig.outbox) == 3, what="staged")
        assert rig.txn.transactions == []  # nothing sent before its transaction
        await rig.pipeline.committer.commit()
        assert len(rig.outbox) == 0
    [txn] = [t for t in rig.txn.transactions if t.records]
    assert txn.outcome == "committed"
    assert txn.offsets == {P0: 3} and txn.group_id == rig.settings.group_id
    assert sorted(r.json()["source"]["offset"] for r in txn.records) == [0, 1, 2]
    assert {r.topic for r in txn.records} == {VERDICTS}
    assert all(r.in_transaction for r in txn.records)
    assert len(rig.producer.on(USAGE)) == 3 and rig.producer.on(VERDICTS, acked=False) == []
    assert rig.consumer.commits == []  # exactly-once never commits through the consumer


async def test_outbox_keeps_outputs_of_a_failed_transaction_for_the_next_one() -> None:
    rig = make(exactly_once=True)
    rig.consumer.fill(P0, range(3))
    async with running(rig) as task:
        await eventually(lambda: len(rig.outbox) == 3, what="staged")
        rig.txn.txn_commit_errors.append(KafkaTimeoutError())
        await rig.pipeline.committer.commit()
        assert [t.outcome for t in rig.txn.transactions] == ["error: KafkaTimeoutError"]
        assert len(rig.outbox) == 3
        assert rig.metric("modstream_commit_failures_total") == 1
        await rig.pipeline.committer.commit()
        assert len(rig.outbox) == 0
        assert not task.done()
    last = rig.txn.transactions[1]
    assert last.outcome == "committed" and last.offsets == {P0: 3}
    assert sorted(rig.verdict_offsets(producer=rig.txn)) == [0, 1, 2]


async def test_outbox_drops_a_revoked_partitions_outputs() -> None:
    rig = make(exactly_once=True, partitions=(P0, P1), shutdown_grace_s=0.1)
    rig.consumer.fill(P0, range(4))
    rig.consumer.fill(P1, range(1))
    rig.classifier.block(0, 0)  # 1..3 finish and wait behind it
    async with running(rig):
        await eventually(lambda: len(rig.outbox) == 4, what="P0@1..3 and P1@0 staged")
        await rig.consumer.rebalance(revoke={P0})
        assert len(rig.outbox) == 1  # P1's
        assert rig.pipeline.delivery.held(rig.pipeline.tracker) == 1
    sent = [r.json()["source"] for r in rig.txn.sent if r.topic == VERDICTS]
    assert [(s["partition"], s["offset"]) for s in sent] == [(1, 0)]
    assert rig.txn.committed_transactions()[-1].offsets == {P1: 1}


# ---- offsets going backwards ----------------------------------------------------------------


async def test_offset_reset_retracks_the_partition_and_ignores_late_old_work() -> None:
    rig = make()
    rig.consumer.fill(P0, range(10))
    old_gate, new_gate = asyncio.Event(), asyncio.Event()
    # The first run of offset 5 cannot be cancelled; its redelivery blocks too, separately.
    rig.classifier.on(0, 5, Behaviour(gate=old_gate, uncancellable=True), Behaviour(gate=new_gate))
    async with running(rig) as task, released_at_exit(old_gate, new_gate):
        await eventually(lambda: rig.pipeline.tracker.in_flight() == 1, what="all but 5")
        await rig.pipeline.committer.commit()
        assert rig.consumer.ok_commits() == [{P0: 5}]
        with capture_logs() as logs:
            rig.consumer.seek(P0, 3)  # an offset reset: 3..9 come again
            await eventually(lambda: rig.classifier.calls[(0, 5)] == 2, what="5 redone")
            await eventually(lambda: rig.summary().verdicts == 15, what="3,4,6..9 redone")
        [warning] = [e for e in logs if e["log_level"] == "warning"]
        assert warning["event"] == (
            "offsets went backwards (seek, offset reset or re-assignment): restarting the "
            "partition's tracking; its unfinished work is redone"
        )
        assert warning["offset"] == 3 and warning["tracked_up_to"] == 5
        assert warning["topic"] == TOPIC and warning["partition"] == 0
        assert rig.metric("modstream_partition_resets_total") == 1
        assert rig.pipeline.tracker.commit_point(P0) == 5
        old_gate.set()  # the old, uncancellable work completes late
        await eventually(lambda: rig.summary().verdicts == 16, what="old done")
        assert rig.pipeline.tracker.in_flight(P0) == 1  # the new 5 is still in flight
        assert rig.pipeline.tracker.commit_point(P0) == 5
        new_gate.set()
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 10, what="new done")
        assert not task.done()
    assert task.exception() is None
    assert rig.consumer.committed(P0) == 10


# ---- publish errors ------------------------------------------------------------------------


@pytest.mark.parametrize("at", ["send", "ack"])
async def test_a_verdict_kafka_refuses_for_good_becomes_a_publish_dead_letter(at: str) -> None:
    rig = make()
    rig.consumer.fill(P0, range(3))
    rig.producer.fail(VERDICTS, MessageSizeTooLargeError(), at=at, match=offset_of(1))
    async with running(rig) as task:
        await eventually(lambda: len(rig.producer.on(DLQ)) == 1, what="a dead letter")
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 3, what="all done")
    assert task.exception() is None
    dead = rig.producer.on(DLQ)[0].json()
    assert dead["stage"] == "publish" and dead["error_class"] == "PublishRejected"
    assert "MessageSizeTooLargeError" in dead["error_message"]
    assert dead["source"]["offset"] == 1
    assert dead["attempts"] == 1  # the one model call its verdict took
    # That call is still recorded: its usage event goes out with the dead letter.
    assert 1 in {r.json()["source"]["offset"] for r in rig.producer.on(USAGE)}
    assert base64.b64decode(dead["payload_b64"]) == rig.consumer._records[P0][1].value
    assert sorted(rig.verdict_offsets()) == [0, 2]
    assert rig.consumer.committed(P0) == 3
    assert rig.metric("modstream_dead_letters_total", stage="publish", reason="publish_rejected")
    assert rig.summary().dead_letters == 1 and rig.summary().verdicts == 2


async def test_an_output_over_the_topic_limit_is_dead_lettered_cut_to_the_dlq_limit() -> None:
    text = "x" * 60_000  # its dead letter carries the input, far over the DLQ's limit
    rig = make(limits={VERDICTS: 500, DLQ: 20_000}, dead_letter_max_bytes=20_000 - 2048)
    key = b"k" * 3000  # the key is sent with the dead letter: it counts against the limit
    rig.consumer.add(P0, 0, json.dumps({"id": "big", "text": text}).encode(), key=key)
    with capture_logs() as logs:
        async with running(rig):
            await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 1, what="done")
    [logged] = [e for e in logs if e["event"] == "dead letter"]
    assert logged["stage"] == "publish" and logged["payload_truncated"] is True
    assert rig.producer.sent and not rig.producer.on(VERDICTS, acked=False)  # refused before send
    [record] = rig.producer.on(DLQ)
    dead = record.json()
    assert record.key == key
    assert len(record.value) + len(key) <= 20_000 - 2048
    assert dead["stage"] == "publish" and dead["payload_truncated"] is True
    original = rig.consumer._records[P0][0].value
    assert original.startswith(base64.b64decode(dead["payload_b64"]))
    assert dead["payload_length"] == len(original)
    assert [r.json()["source"]["offset"] for r in rig.producer.on(USAGE)] == [0]
    assert rig.consumer.committed(P0) == 1


@pytest.mark.parametrize("error", [KafkaTimeoutError, NotLeaderForPartitionError])
async def test_a_retriable_produce_error_is_retried_with_a_warning_and_counted(error: type) -> None:
    rig = make()
    rig.consumer.fill(P0, range(2))
    rig.producer.fail(VERDICTS, error(), match=offset_of(0))
    with capture_logs() as logs:
        async with running(rig) as task:
            await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 2, what="done")
    assert task.exception() is None
    assert sorted(rig.verdict_offsets()) == [0, 1]  # acknowledged once each, none dead
    assert len(rig.producer.on(VERDICTS, acked=False)) == 3  # offset 0 was sent twice
    assert rig.producer.on(DLQ, acked=False) == []
    assert rig.metric("modstream_publish_retries_total", reason=error.__name__) == 1
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["publishing outputs failed; retrying"]
    assert error.__name__ in warnings[0]["error"] and warnings[0]["attempt"] == 1
    assert 0 <= warnings[0]["retry_in_s"] <= 0.4
    assert rig.consumer.committed(P0) == 2


async def test_a_fenced_producer_stops_run_and_skips_the_final_commit() -> None:
    rig = make(exactly_once=True, commit_interval_s=0.01)
    rig.consumer.fill(P0, range(3))
    rig.txn.txn_commit_errors.append(ProducerFenced())
    async with running(rig) as task:
        async with asyncio.timeout(5):
            await asyncio.wait([task])
    error = fatal_of(task.exception())  # type: ignore[arg-type]
    assert isinstance(error, ProducerFencedError)
    assert rig.txn.transactions[-1].outcome == "error: ProducerFenced"
    assert len(rig.txn.transactions) == 1  # no transaction (no final commit) after the fence
    assert rig.consumer.commits == []


# ---- stopping ------------------------------------------------------------------------------


async def test_stop_during_a_slow_commit_lets_it_finish_then_commits_the_rest() -> None:
    rig = make(commit_interval_s=0.01)
    rig.consumer.fill(P0, range(2))
    gate = rig.consumer.commit_gate = asyncio.Event()
    async with running(rig) as task:
        await eventually(lambda: rig.consumer.commits != [], what="a commit running")
        rig.consumer.fill(P0, range(2, 4))  # more work finishes while the commit hangs
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 4, what="2, 3 done")
        with capture_logs() as logs:
            rig.stop.set()
            await eventually(
                lambda: any("stop requested" in e["event"] for e in logs), what="intake stopped"
            )
        assert not task.done()
        assert rig.consumer.commits[0].outcome == "running"
        gate.set()
    assert task.exception() is None
    assert rig.consumer.commits[0].outcome == "ok"
    assert rig.consumer.committed(P0) == 4
    assert rig.consumer.max_concurrent_commits == 1


async def test_cancelling_run_during_a_slow_commit_does_not_cancel_the_commit() -> None:
    rig = make(commit_interval_s=0.01)
    rig.consumer.fill(P0, range(2))
    gate = rig.consumer.commit_gate = asyncio.Event()
    async with running(rig) as task:
        await eventually(lambda: rig.consumer.commits != [], what="a commit running")
        task.cancel()
        await eventually(lambda: rig.pipeline._group is None, what="run unwinding")
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
    assert rig.consumer.commits[0].outcome == "ok"
    assert all(c.outcome == "ok" for c in rig.consumer.commits)
    assert rig.consumer.max_concurrent_commits == 1


# ---- intake, idling and what operations see --------------------------------------------------


async def test_an_open_circuit_stops_intake_and_a_closed_one_resumes_it() -> None:
    rig = make()
    rig.consumer.fill(P0, range(3))
    breaker = rig.classifier.breaker
    breaker.base_reset_s = breaker._reset_s = 3600.0  # no probe falls due during the test
    for _ in range(breaker.failure_threshold):
        breaker.failure()  # the provider is down
    assert breaker.state is CircuitState.OPEN
    with capture_logs() as logs:
        async with running(rig):
            await eventually(lambda: P0 in rig.consumer.paused(), what="intake paused")
            assert rig.classifier.started == [] and await rig.consumer.position(P0) == 0
            breaker.success()  # e.g. a probe got an answer
            await eventually(lambda: len(rig.verdict_offsets()) == 3, what="resumed")
    warnings = [
        e["event"] for e in logs if e["log_level"] == "warning" and e["event"].startswith("intake")
    ]
    assert warnings == [
        "intake paused: the model provider is down (circuit open)",
        "intake resumed: the model provider answers again",
    ]
    assert rig.summary().dead_letters == 0


async def test_exit_when_idle_waits_for_an_assignment_and_for_the_window_to_empty() -> None:
    rig = make()
    task = asyncio.create_task(rig.pipeline.run(rig.stop, exit_when_idle=0.01))
    try:
        await eventually(lambda: len(rig.consumer.polls) >= 3, what="idle polls")
        assert not task.done()  # idle, but the group has not assigned anything yet
        await rig.pipeline.on_assigned({P0})
        rig.consumer.fill(P0, range(2))
        gate = rig.classifier.block(0, 1)
        await eventually(lambda: rig.verdict_offsets() == [0], what="0 done")
        polls = len(rig.consumer.polls)
        await eventually(lambda: len(rig.consumer.polls) >= polls + 2, what="more polls")
        assert not task.done()  # nothing new to fetch, but offset 1 is still held
        gate.set()
        async with asyncio.timeout(5):
            await task  # returns by itself: stop was never set
    finally:
        rig.stop.set()
        await asyncio.wait([task])
    assert rig.verdict_offsets() == [0, 1]
    assert rig.consumer.committed(P0) == 2


async def test_lag_is_the_high_watermark_minus_the_commit_point_per_assigned_partition() -> None:
    rig = make(partitions=(P0, P1), commit_interval_s=0.01)
    rig.consumer.fill(P0, range(5))
    gate = rig.classifier.block(0, 2)
    lag = {"topic": TOPIC, "partition": "0"}
    async with running(rig):
        await eventually(lambda: rig.metric("modstream_consumer_lag", **lag) == 3, what="lag 3")
        # P1 has no records: no high watermark, no lag reported.
        assert (
            rig.metrics.registry.get_sample_value(
                "modstream_consumer_lag", {"topic": TOPIC, "partition": "1"}
            )
            is None
        )
        assert rig.metric("modstream_messages_in_flight") == 1
        assert rig.metric("modstream_assigned_partitions") == 2
        assert rig.metric("modstream_oldest_in_flight_seconds") > 0
        gate.set()
        await eventually(lambda: rig.metric("modstream_consumer_lag", **lag) == 0, what="lag 0")
        assert rig.metric("modstream_oldest_in_flight_seconds") == 0


async def test_a_revoked_partitions_lag_is_not_reported_after_the_revoke() -> None:
    rig = make(partitions=(P0, P1), commit_interval_s=0.01, shutdown_grace_s=0.2)
    rig.consumer.fill(P0, range(5))
    rig.classifier.block(0, 2)
    lag = {"topic": TOPIC, "partition": "0"}
    async with running(rig):
        await eventually(lambda: rig.metric("modstream_consumer_lag", **lag) == 3, what="lag 3")
        await rig.consumer.rebalance(revoke={P0})
        assert rig.metric("modstream_assigned_partitions") == 1
        assert rig.metrics.registry.get_sample_value("modstream_consumer_lag", lag) is None


async def test_a_message_in_flight_too_long_is_logged_once() -> None:
    started = time.monotonic()
    rig = make(commit_interval_s=0.01, stuck_after_s=0.05)
    rig.consumer.fill(P0, range(2))
    gate = rig.classifier.block(0, 0)
    with capture_logs() as logs:
        async with running(rig):
            await eventually(
                lambda: any(e["event"] == "message stuck in flight" for e in logs), what="stuck"
            )
            commits = len(rig.consumer.commits)
            await eventually(lambda: len(rig.consumer.polls) > commits + 5, what="time passes")
            await eventually(lambda: rig.summary().commits >= 1, what="commit loop ran")
            gate.set()
    stuck = [e for e in logs if e["event"] == "message stuck in flight"]
    assert len(stuck) == 1
    assert stuck[0]["offset"] == 0 and stuck[0]["partition"] == 0
    assert stuck[0]["log_level"] == "warning" and stuck[0]["in_flight_s"] >= 0.05
    # No more than the test has run (0.1 s precision).
    assert stuck[0]["in_flight_s"] <= time.monotonic() - started + 0.05
    assert stuck[0]["topic"] == TOPIC and stuck[0]["stuck_after_s"] == 0.05


async def test_undecodable_and_unclassifiable_inputs_become_dead_letters_of_their_stage() -> None:
    rig = make()
    rig.consumer.add(P0, 0, b"\xff not json")
    rig.consumer.add(P0, 1)
    rig.classifier.on(0, 1, Behaviour(failure=InvalidReply("still invalid", reply="{")))
    rig.consumer.add(P0, 2)
    with capture_logs() as logs:
        async with running(rig):
            await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 3, what="done")
    logged = [e for e in logs if e["event"] == "dead letter"]
    assert [(e["stage"], e["reason"]) for e in logged] == [
        ("decode", "decode"),
        ("classify", "invalid_reply"),
    ]
    assert logged[1]["detail"] == "still invalid" and logged[1]["payload_truncated"] is None
    dead = {r.json()["source"]["offset"]: r.json() for r in rig.producer.on(DLQ)}
    assert dead[0]["stage"] == "decode" and dead[0]["attempts"] == 0
    assert dead[1]["stage"] == "classify" and dead[1]["error_class"] == "InvalidReply"
    assert dead[1]["attempts"] == 1 and dead[1]["reply"] == "{"
    # The failed input's model call is still recorded (usage goes out with its dead letter).
    usage = [r.json()["source"]["offset"] for r in rig.producer.on(USAGE)]
    assert sorted(usage) == [1, 2]
    assert rig.verdict_offsets() == [2]
    assert rig.metric("modstream_dead_letters_total", stage="decode", reason="decode") == 1
    labels = {"stage": "classify", "reason": "invalid_reply"}
    assert rig.metric("modstream_dead_letters_total", **labels) == 1
    assert rig.summary().dead_letters == 2


async def test_a_dead_letter_the_dlq_refuses_stops_the_service() -> None:
    rig = make()
    rig.consumer.add(P0, 0, b"not json")
    rig.producer.fail(DLQ, TopicAuthorizationFailedError())  # no write ACL on the DLQ
    async with running(rig) as task:
        async with asyncio.timeout(5):
            await asyncio.wait([task])
    error = fatal_of(task.exception())  # type: ignore[arg-type]
    assert isinstance(error, BrokerRejected)
    assert "ACL" in error.message
    assert rig.consumer.committed(P0) in (None, 0)  # the input was never counted as done


async def test_a_refused_dead_letter_is_reported_as_the_dlq_refusing_it() -> None:
    rig = make(limits={DLQ: 100})  # nothing fits: the dead-letter topic is misconfigured
    rig.consumer.add(P0, 0, b"not json")
    async with running(rig) as task:
        async with asyncio.timeout(5):
            await asyncio.wait([task])
    error = fatal_of(task.exception())  # type: ignore[arg-type]
    assert isinstance(error, BrokerRejected)
    assert repr(DLQ) in error.message and "refused a dead letter" in error.message


async def test_a_long_text_is_admitted_off_the_loop_and_classified() -> None:
    rig = make()
    rig.consumer.add(P0, 0, request_bytes(0, "word " * 10_000))
    async with running(rig):
        await eventually(lambda: rig.verdict_offsets() == [0], what="verdict")
    assert rig.consumer.committed(P0) == 1


async def test_a_redelivered_assignment_of_a_tracked_partition_starts_afresh() -> None:
    rig = make(commit_interval_s=60)
    rig.consumer.fill(P0, range(3))
    gate = rig.classifier.block(0, 1)
    async with running(rig):
        await eventually(lambda: rig.verdict_offsets() == [0, 2], what="0 and 2")
        await rig.pipeline.on_assigned({P0})  # no revoke came first (it failed to let go)
        assert P0 not in rig.pipeline.tracker.partitions()
        await eventually(lambda: (0, 1) in rig.classifier.cancelled, what="its work cancelled")
        gate.set()


async def test_redacted_dead_letters_carry_no_payload_and_reasons_are_counted() -> None:
    rig = make(redact_dead_letters=True)
    rig.consumer.add(P0, 0, b"secret one")
    rig.consumer.add(P0, 1, b"secret two")
    async with running(rig):
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 2, what="done")
    dead = [r.json() for r in rig.producer.on(DLQ)]
    assert len(dead) == 2
    assert all(d["payload_b64"] is None and d["payload_redacted"] for d in dead)
    assert rig.summary().dead_letters == 2
    assert rig.metric("modstream_dead_letters_total", stage="decode", reason="decode") == 2


async def test_revoke_logs_whether_the_partitions_drained() -> None:
    rig = make(partitions=(P0, P1), shutdown_grace_s=0.1)
    rig.consumer.fill(P0, range(2))
    rig.consumer.fill(P1, range(2))
    rig.classifier.block(1, 1)
    async with running(rig):
        await eventually(lambda: len(rig.producer.on(VERDICTS)) == 3, what="all but P1@1")
        with capture_logs() as logs:
            await rig.consumer.rebalance(revoke={P0})
            await rig.consumer.rebalance(revoke={P1})
    revoked = [e for e in logs if e["event"] == "partitions revoked"]
    assert [(e["partitions"], e["drained"]) for e in revoked] == [(1, True), (1, False)]


async def test_exit_when_idle_waits_out_the_idle_time() -> None:
    rig = make()
    rig.consumer.fill(P0, range(2))
    await rig.pipeline.on_assigned({P0})
    task = asyncio.create_task(rig.pipeline.run(rig.stop, exit_when_idle=30.0))
    try:
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 2, what="done")
        polls = len(rig.consumer.polls)
        await eventually(lambda: len(rig.consumer.polls) >= polls + 3, what="idle polls")
        assert not task.done()  # idle for less than 30 s: still running
    finally:
        rig.stop.set()
        async with asyncio.timeout(5):
            await asyncio.wait([task])
    assert task.exception() is None


async def test_stop_waits_for_in_flight_work_only_for_the_grace_period() -> None:
    rig = make(shutdown_grace_s=0.2)
    rig.consumer.fill(P0, range(3))
    rig.classifier.block(0, 1)  # never finishes
    with capture_logs() as logs:
        async with running(rig) as task:
            await eventually(lambda: rig.summary().verdicts == 2, what="0 and 2 done")
        assert task.done() and task.exception() is None
    assert (0, 1) in rig.classifier.cancelled
    assert rig.consumer.committed(P0) == 1  # up to the unfinished one: it is redelivered
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "grace period over; unfinished work will be redelivered"
    assert warning["grace_s"] == 0.2


async def test_the_pipeline_classifies_with_the_callable_it_is_handed() -> None:
    batched = FakeClassifier()  # stands in for consumer.model.batch.Batcher (same classify())
    rig = make(classify_with=batched)
    rig.consumer.fill(P0, range(2))
    async with running(rig):
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 2, what="done")
    assert batched.started == [(0, 0), (0, 1)] and rig.classifier.started == []


# ---- publish backoff, lag edges, revoked partitions (gaps found by mutation testing) ---------


def test_publish_retries_back_off_from_a_fifth_of_a_second_doubling_up_to_5_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full jitter, pinned at its ceiling; on a virtual clock (no real waiting)."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)

    async def play(loop: VirtualTimeLoop) -> None:
        rig = make()
        rig.consumer.add(P0, 0)
        rig.producer.fail(VERDICTS, *(KafkaTimeoutError() for _ in range(8)))
        with capture_logs() as logs:
            async with running(rig):
                await eventually(
                    lambda: rig.pipeline.tracker.commit_point(P0) == 1, timeout=60, what="done"
                )
        waits = [e["retry_in_s"] for e in logs if e["event"].startswith("publishing outputs")]
        assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
        assert rig.verdict_offsets() == [0]

    on_virtual_time(play)


def lag_of(rig: Rig, tp: TopicPartition) -> float | None:
    labels = {"topic": tp.topic, "partition": str(tp.partition)}
    return rig.metrics.registry.get_sample_value("modstream_consumer_lag", labels)


async def test_a_partition_with_nothing_left_to_do_reports_its_lag_from_its_position() -> None:
    """Nothing tracked since the assignment (a previous run committed everything): the lag is
    the high watermark minus the consumer's position, 0 here, and is reported as such."""
    rig = make(commit_interval_s=0.01)
    rig.consumer.fill(P0, range(5))
    rig.consumer.seek(P0, 5)  # the group's committed start
    async with running(rig):
        await eventually(lambda: lag_of(rig, P0) is not None, what="a lag figure")
        assert lag_of(rig, P0) == 0
        assert rig.pipeline.tracker.commit_point(P0) is None


@pytest.mark.parametrize(
    "error", [KafkaTimeoutError(), IllegalStateError("not assigned")], ids=type
)
async def test_a_failed_lag_read_skips_that_partition_only(error: Exception) -> None:
    rig = make(partitions=(P0, P1))
    for tp in (P0, P1):
        rig.consumer.fill(tp, range(3))
        rig.consumer.seek(tp, 3)
    async with running(rig):
        await eventually(lambda: len(rig.consumer.polls) >= 2, what="a fetch response")
        rig.consumer.position_errors.append(error)  # the first partition asked fails
        await rig.pipeline.committer.observe_lag()  # the commit loop's lag reading, one round
        assert sorted(lag_of(rig, tp) is None for tp in (P0, P1)) == [False, True]
        await rig.pipeline.committer.observe_lag()
        assert [lag_of(rig, tp) for tp in (P0, P1)] == [0, 0]


async def test_revoked_partitions_still_listed_as_assigned_report_no_lag() -> None:
    """aiokafka keeps revoked partitions in its assignment until the group hands out the next
    one, and two revokes can come before it: the lag of neither is reported meanwhile."""
    p2 = TopicPartition(TOPIC, 2)
    rig = make(partitions=(P0, P1, p2))
    for tp in (P0, P1, p2):
        rig.consumer.fill(tp, range(2))
    async with running(rig):
        await eventually(lambda: rig.summary().verdicts == 6, what="all done")
        await rig.pipeline.committer.commit()  # lag is reported from the acknowledged commit
        await rig.pipeline.on_revoked({P0})
        await rig.pipeline.on_revoked({P1})
        await rig.pipeline.committer.observe_lag()
        assert [lag_of(rig, tp) is None for tp in (P0, P1, p2)] == [True, True, False]
        rig.consumer.unassign(P1)  # P1 went to another member, P0 came back
        await rig.pipeline.on_assigned({P0})
        await rig.pipeline.committer.observe_lag()
        assert [lag_of(rig, tp) is None for tp in (P0, P1, p2)] == [False, True, False]


def test_a_full_window_polls_once_a_second_and_fetches_at_the_first_completion() -> None:
    """Full, the fetch loop only keeps the group membership alive (a poll a second, not a busy
    loop); a completion wakes it at once, and a window with room for one fetches that one."""

    async def play(loop: VirtualTimeLoop) -> None:
        rig = make(max_in_flight=2)
        rig.consumer.fill(P0, range(4))
        first, second = rig.classifier.block(0, 0), rig.classifier.block(0, 1)
        polled_at: list[float] = []

        def on_poll(_: int) -> None:
            polled_at.append(loop.time())
            if len(polled_at) > 1000:
                raise AssertionError("polling in a busy loop")

        rig.consumer.on_poll.append(on_poll)
        async with running(rig):
            await eventually(lambda: len(rig.classifier.started) == 2, what="window full")
            full_at = loop.time()
            await asyncio.sleep(10.0)
            polls = [t for t in polled_at if full_at <= t < full_at + 10.0]
            assert 9 <= len(polls) <= 11
            released_at = loop.time()
            first.set()
            await eventually(lambda: len(rig.classifier.started) == 3, what="2 fetched")
            assert loop.time() - released_at < 0.1
            assert await rig.consumer.position(P0) == 3  # room for one: one fetched
            second.set()
            await eventually(lambda: len(rig.verdict_offsets()) == 4, what="everything")

    on_virtual_time(play)


def test_an_open_circuit_resumes_intake_for_a_probe_once_its_wait_is_over() -> None:
    """Nothing in flight to probe with: intake itself resumes when the probe is due (within
    the fetch loop's second), and says so; the circuit is still open, so not "answers again"."""

    async def play(loop: VirtualTimeLoop) -> None:
        breaker = CircuitBreaker(failure_threshold=3, reset_s=5.0, clock=loop.time)
        rig = make(breaker=breaker)
        for _ in range(3):
            breaker.failure()
        opened_at = loop.time()
        rig.consumer.fill(P0, range(2))
        with capture_logs() as logs:
            async with running(rig):
                await eventually(lambda: rig.classifier.started != [], timeout=30, what="fetch")
                assert 5.0 <= loop.time() - opened_at <= 6.1
                await eventually(lambda: len(rig.verdict_offsets()) == 2, what="done")
        intake = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("intake")]
        assert intake == [
            ("intake paused: the model provider is down (circuit open)", "warning"),
            ("intake resumed for a probe: the next message tests the provider", "info"),
        ]

    on_virtual_time(play)


async def test_the_run_summary_and_the_counters_count_every_input_once() -> None:
    """What ``modstream consume`` logs when it stops (``stopped``: fetched, verdicts, dead
    letters, commits) and the matching Prometheus counters."""
    started = time.perf_counter()
    rig = make(partitions=(P0, P1))
    rig.consumer.fill(P0, range(3))
    rig.consumer.add(P1, 0, b"\xff not json")
    rig.consumer.add(P1, 1)
    async with running(rig):
        await eventually(lambda: rig.pipeline.tracker.committable() == {P0: 3, P1: 2}, what="all")
        await rig.pipeline.committer.commit()
        rig.consumer.add(P0, 3)
        await eventually(lambda: rig.pipeline.tracker.committable() == {P0: 4}, what="3 done")
        await rig.pipeline.committer.commit()
    assert rig.summary() == Summary(fetched=6, verdicts=5, dead_letters=1, commits=2)
    assert len(rig.consumer.ok_commits()) == 2  # nothing left for the last
    # One model call per classified input, none for the other.
    assert len(rig.producer.on(USAGE)) == 5
    assert rig.metric("modstream_messages_fetched_total") == 6
    assert rig.metric("modstream_messages_processed_total", outcome="verdict") == 5
    assert rig.metric("modstream_messages_processed_total", outcome="dead_letter") == 1
    assert rig.metric("modstream_commit_duration_seconds_count") == 2
    # Each commit's duration is a part of the test's own duration.
    assert 0 <= rig.metric("modstream_commit_duration_seconds_sum") <= time.perf_counter() - started
    assert rig.metric("modstream_messages_in_flight") == 0


async def test_an_offset_commit_the_group_may_not_make_stops_the_service_saying_so() -> None:
    rig = make(commit_interval_s=0.01)
    rig.consumer.fill(P0, range(2))
    rig.consumer.commit_errors.append(GroupAuthorizationFailedError())
    async with running(rig) as task:
        async with asyncio.timeout(5):
            await asyncio.wait([task])
    error = fatal_of(task.exception())  # type: ignore[arg-type]
    assert isinstance(error, BrokerRejected)
    assert "Kafka refused an offset commit: GroupAuthorizationFailedError" in error.message
    assert len(rig.consumer.commits) == 1  # fatal: no final commit afterwards
    assert rig.summary().commits == 0


async def test_an_input_over_the_token_limit_becomes_a_dead_letter_of_stage_admit() -> None:
    rig = make()
    rig.consumer.add(P0, 0, request_bytes(0, "word " * 40_000))  # 32,000 tokens at most
    rig.consumer.add(P0, 1)
    async with running(rig):
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 2, what="done")
    [dead] = [r.json() for r in rig.producer.on(DLQ)]
    assert dead["stage"] == "admit" and dead["source"]["offset"] == 0
    assert dead["attempts"] == 0 and rig.classifier.started == [(0, 1)]
    assert dead["error_class"] == "AdmissionError"
    assert rig.metric("modstream_dead_letters_total", stage="admit", reason="admission") == 1


async def test_after_two_offset_resets_late_work_of_either_earlier_run_is_ignored() -> None:
    rig = make()
    rig.consumer.fill(P0, range(10))
    gates = [asyncio.Event() for _ in range(3)]
    # Offset 5, three times: the first two runs cannot be cancelled and complete late.
    rig.classifier.on(
        0,
        5,
        Behaviour(gate=gates[0], uncancellable=True),
        Behaviour(gate=gates[1], uncancellable=True),
        Behaviour(gate=gates[2]),
    )
    async with running(rig) as task, released_at_exit(*gates):
        await eventually(lambda: rig.pipeline.tracker.in_flight() == 1, what="all but 5")
        for run in (2, 3):
            rig.consumer.seek(P0, 3)  # an offset reset: 3..9 come again
            await eventually(lambda: rig.classifier.calls[(0, 5)] == run, what="5 redone")  # noqa: B023  (awaited here, in this iteration)
            await eventually(lambda: rig.pipeline.tracker.in_flight() == 1, what="all but 5")
        assert rig.metric("modstream_partition_resets_total") == 2
        for late in gates[:2]:
            verdicts = rig.summary().verdicts
            late.set()
            await eventually(lambda: rig.summary().verdicts == verdicts + 1, what="late")  # noqa: B023  (awaited here)
            assert rig.pipeline.tracker.in_flight(P0) == 1  # the third run of 5 still counts
            assert rig.pipeline.tracker.commit_point(P0) == 5
        gates[2].set()
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 10, what="new done")
        assert not task.done()
    assert rig.consumer.committed(P0) == 10


async def test_unordered_by_default_one_key_does_not_wait_for_another_message_of_it() -> None:
    rig = make()  # MODSTREAM_ORDERING=unordered
    rig.consumer.fill(P0, range(3), key=b"same")
    head = rig.classifier.block(0, 0)
    async with running(rig):
        await eventually(lambda: sorted(rig.verdict_offsets()) == [1, 2], what="1, 2 done")
        head.set()
        await eventually(lambda: len(rig.verdict_offsets()) == 3, what="everything")
        await eventually(lambda: rig.classifier.running == set(), what="all returned")
        await eventually(
            lambda: not any(rig.pipeline._tasks.values()), what="finished work not kept"
        )
    assert rig.verdict_offsets() == [1, 2, 0]
    assert rig.pipeline._tails == {}


async def test_lines_logged_while_a_message_is_processed_carry_its_coordinates() -> None:
    """README: such lines carry ``partition``, ``offset`` and ``event_id`` (the verdict's);
    the text itself goes only into the DEBUG ``classifying`` line."""
    rig = make(partitions=(P0, P1))
    rig.consumer.add(P1, 7, request_bytes(7, "hello there"))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with running(rig):
            await eventually(lambda: rig.verdict_offsets(P1) == [7], what="verdict")
    [verdict] = [r.json() for r in rig.producer.on(VERDICTS)]
    [line] = [e for e in logs if e["event"] == "classifying"]
    assert line["log_level"] == "debug"
    assert (line["partition"], line["offset"]) == (1, 7)
    assert line["event_id"] == verdict["event_id"]
    assert line["content"] == "hello there" and line["tokens"] == 2


async def test_a_plain_text_input_is_classified_as_text_when_so_configured() -> None:
    rig = make(input_format="text")
    rig.consumer.add(P0, 0, b"just some words, not JSON")
    async with running(rig):
        await eventually(lambda: rig.pipeline.tracker.commit_point(P0) == 1, what="done")
    assert rig.verdict_offsets() == [0] and rig.producer.on(DLQ) == []


async def test_the_broker_gauge_reads_the_pipelines_own_consumer() -> None:
    rig = make()
    conn = SimpleNamespace(up=True)
    conn.connected = lambda: conn.up
    rig.consumer._client = SimpleNamespace(_conns={(0, "default"): conn})  # type: ignore[attr-defined]
    assert rig.metric("modstream_broker_up") == 1
    conn.up = False
    assert rig.metric("modstream_broker_up") == 0


async def test_exit_when_idle_counts_from_the_assignment_even_with_nothing_to_fetch() -> None:
    rig = make()
    await rig.pipeline.on_assigned({P0})  # an empty partition: nothing will ever come
    with capture_logs() as logs:
        async with asyncio.timeout(5):
            await rig.pipeline.run(rig.stop, exit_when_idle=0.05)  # returns by itself
    [idle] = [e for e in logs if e["event"] == "idle, stopping"]
    assert idle["idle_s"] == 0.05
    assert rig.consumer.polls and rig.summary().fetched == 0
