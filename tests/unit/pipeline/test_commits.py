"""Committer: one shielded commit at a time, assigned partitions only, fatal errors final.

The delivery is scripted here (what it was asked to commit, a gate, errors), so each rule is seen
on its own; ``tests/unit/pipeline/test_pipeline.py`` runs the same rules inside the pipeline,
and the exactly-once e2e tests on a real broker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

import pytest
from aiokafka.structs import TopicPartition
from structlog.testing import capture_logs

from consumer.errors import BrokerRejected, BrokerUnavailable, FatalError, ModstreamError
from consumer.ops.metrics import Metrics
from consumer.pipeline.commits import Committer
from consumer.pipeline.offsets import OffsetTracker
from consumer.settings import load_settings
from tests.unit.kafka_fakes import FakeConsumer, eventually

pytestmark = pytest.mark.timeout(60)

P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


class ScriptedDelivery:
    """A delivery whose commits are recorded, can be held at a gate, and fail on demand."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.finished: list[dict[TopicPartition, int]] = []
        self.gate: asyncio.Event | None = None
        self.errors: deque[ModstreamError] = deque()
        self.running = 0
        self.max_running = 0

    async def deliver(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the committer never delivers")

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.errors:
                raise self.errors.popleft()
        finally:
            self.running -= 1
        self.finished.append(dict(offsets))

    def held(self, tracker: OffsetTracker) -> int:
        return tracker.held()

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        pass


class Rig:
    def __init__(self, *partitions: TopicPartition, **settings: object) -> None:
        self.consumer = FakeConsumer(partitions or (P0,))
        self.tracker = OffsetTracker()
        self.delivery = ScriptedDelivery()
        self.metrics = Metrics()
        self.woken = 0
        self.committer = Committer(
            load_settings(**settings),
            consumer=self.consumer,
            tracker=self.tracker,
            delivery=self.delivery,
            metrics=self.metrics,
            on_fatal=self.wake,
        )

    def wake(self) -> None:
        self.woken += 1

    def finish(self, tp: TopicPartition, *offsets: int) -> None:
        for offset in offsets:
            self.tracker.track(tp, offset)
            self.tracker.done(tp, offset)


async def test_commits_the_done_watermark_of_assigned_partitions_only() -> None:
    rig = Rig(P0, P1)
    rig.finish(P0, 0, 1, 2)
    rig.finish(P1, 0)
    rig.consumer.unassign(P1)  # mid-rebalance: gone before any callback ran
    await rig.committer.commit()
    assert rig.delivery.commits == [{P0: 3}]
    assert rig.tracker.committed(P0) == 3 and rig.tracker.committed(P1) is None
    await rig.committer.commit()  # nothing new is committable: no call at all
    assert rig.delivery.commits == [{P0: 3}]
    assert rig.metrics.registry.get_sample_value("modstream_commit_duration_seconds_count") == 1


async def test_only_commits_just_those_partitions() -> None:
    rig = Rig(P0, P1)
    rig.finish(P0, 0)
    rig.finish(P1, 0, 1)
    await rig.committer.commit(only={P1})
    assert rig.delivery.commits == [{P1: 2}]


async def test_commits_run_one_at_a_time() -> None:
    """A revoke's commit during the loop's: the second waits, never overlaps (aiokafka raises
    ``AssertionError`` on a second transaction while one is open)."""
    rig = Rig()
    rig.finish(P0, 0)
    gate = rig.delivery.gate = asyncio.Event()
    first = asyncio.create_task(rig.committer.commit())
    await eventually(lambda: rig.delivery.running == 1, what="the first commit running")
    rig.finish(P0, 1)
    second = asyncio.create_task(rig.committer.commit())
    await eventually(lambda: bool(rig.committer._lock._waiters), what="the second waiting")
    assert rig.delivery.commits == [{P0: 1}]
    gate.set()
    await asyncio.gather(first, second)
    assert rig.delivery.commits == [{P0: 1}, {P0: 2}]
    assert rig.delivery.max_running == 1


async def test_a_cancelled_caller_does_not_cancel_its_commit() -> None:
    rig = Rig()
    rig.finish(P0, 0, 1)
    gate = rig.delivery.gate = asyncio.Event()
    caller = asyncio.create_task(rig.committer.commit())
    await eventually(lambda: rig.delivery.running == 1, what="the commit running")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    await eventually(lambda: rig.tracker.committed(P0) == 2, what="the commit finished")
    assert rig.delivery.finished == [{P0: 2}]


async def test_a_refused_commit_is_a_warning_and_the_next_one_retries_it() -> None:
    rig = Rig()
    rig.finish(P0, 0)
    rig.delivery.errors.append(BrokerUnavailable("the coordinator is away"))
    with capture_logs() as logs:
        await rig.committer.commit()
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "commit failed; uncommitted work will be redelivered"
    assert rig.tracker.committed(P0) is None
    assert rig.metrics.registry.get_sample_value("modstream_commit_failures_total") == 1
    assert rig.committer.fatal is None
    await rig.committer.commit()
    assert rig.tracker.committed(P0) == 1


async def test_a_fatal_commit_is_raised_kept_and_ends_all_commits() -> None:
    rig = Rig()
    rig.finish(P0, 0)
    denied = BrokerRejected("not authorized")
    rig.delivery.errors.append(denied)
    with pytest.raises(BrokerRejected):
        await rig.committer.commit()
    assert rig.committer.fatal is denied and rig.woken == 1
    rig.finish(P0, 1)
    await rig.committer.commit()  # the producer or the group is unusable: not even tried
    assert len(rig.delivery.commits) == 1


def test_the_first_fatal_error_wins() -> None:
    rig = Rig()
    first, second = FatalError("first"), FatalError("second")
    rig.committer.fail(first)
    rig.committer.fail(second)
    assert rig.committer.fatal is first and rig.woken == 1


async def test_the_loop_commits_each_interval_and_stops_cooperatively() -> None:
    rig = Rig(commit_interval_s=0.01)
    stopping = asyncio.Event()
    loop = asyncio.create_task(rig.committer.loop(stopping))
    rig.finish(P0, 0)
    await eventually(lambda: rig.tracker.committed(P0) == 1, what="a commit round")
    rig.finish(P0, 1)
    await eventually(lambda: rig.tracker.committed(P0) == 2, what="the next round")
    gate = rig.delivery.gate = asyncio.Event()
    rig.finish(P0, 2)
    await eventually(lambda: rig.delivery.running == 1, what="a commit running")
    stopping.set()  # never cancelled in the middle of a commit: it ends, then the loop
    await asyncio.sleep(0.05)
    assert not loop.done()
    gate.set()
    async with asyncio.timeout(5):
        await loop
    assert rig.tracker.committed(P0) == 3
