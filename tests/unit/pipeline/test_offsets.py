"""OffsetTracker: out-of-order completion, in-order commits."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from consumer.pipeline.offsets import OffsetTracker

A = TopicPartition("in", 0)
B = TopicPartition("in", 1)
C = TopicPartition("other", 0)


def tracker_with(tp: TopicPartition, *offsets: int) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.track(tp, offset)
    return tracker


# ---- examples ------------------------------------------------------------------------------


def test_in_order_completion_commits_next_offset() -> None:
    tracker = tracker_with(A, 0, 1, 2)
    assert tracker.committable() == {A: 0}
    tracker.done(A, 0)
    assert tracker.committable() == {A: 1}
    tracker.done(A, 1)
    tracker.done(A, 2)
    assert tracker.committable() == {A: 3}


def test_out_of_order_completion_waits_for_the_first_unfinished() -> None:
    tracker = tracker_with(A, 10, 11, 12, 13)
    tracker.done(A, 12)
    tracker.done(A, 11)
    tracker.done(A, 13)
    assert tracker.committable() == {A: 10}
    tracker.done(A, 10)
    assert tracker.committable() == {A: 14}


def test_gaps_from_compaction_and_markers() -> None:
    tracker = tracker_with(A, 5, 9, 20)
    tracker.done(A, 9)
    assert tracker.commit_point(A) == 5
    tracker.done(A, 5)
    assert tracker.commit_point(A) == 20  # 10..19 do not exist: nothing to wait for
    tracker.done(A, 20)
    assert tracker.commit_point(A) == 21


def test_committable_reports_only_advanced_partitions() -> None:
    tracker = OffsetTracker()
    tracker.track(A, 0)
    tracker.track(B, 0)
    tracker.mark_committed(tracker.committable())
    assert tracker.committable() == {}
    tracker.done(B, 0)
    assert tracker.committable() == {B: 1}
    tracker.mark_committed({B: 1})
    assert tracker.committable() == {}


def test_mark_committed_never_moves_back_and_ignores_unknown_partitions() -> None:
    tracker = tracker_with(A, 0, 1)
    tracker.done(A, 0)
    tracker.done(A, 1)
    tracker.mark_committed({A: 2, C: 99})
    tracker.mark_committed({A: 1})  # a late acknowledgement of an older commit
    assert tracker.committable() == {}
    assert tracker.partitions() == {A}


def test_track_must_increase() -> None:
    tracker = tracker_with(A, 5)
    with pytest.raises(ValueError, match="must increase"):
        tracker.track(A, 5)
    with pytest.raises(ValueError, match="must increase"):
        tracker.track(A, 4)
    with pytest.raises(ValueError, match="negative"):
        tracker.track(B, -1)
    tracker.track(B, 0)  # other partitions are independent


def test_unknown_and_repeated_done_are_ignored() -> None:
    tracker = tracker_with(A, 1, 2)
    tracker.done(A, 7)
    tracker.done(B, 1)
    tracker.done(A, 2)
    tracker.done(A, 2)
    assert tracker.in_flight() == 1
    assert tracker.commit_point(A) == 1


def test_in_flight_per_partition_and_total() -> None:
    tracker = tracker_with(A, 0, 1, 2)
    tracker.track(B, 7)
    tracker.done(A, 1)
    assert (tracker.in_flight(A), tracker.in_flight(B), tracker.in_flight(C)) == (2, 1, 0)
    assert tracker.in_flight() == 3


def test_forget_drops_state_and_late_done_is_ignored() -> None:
    tracker = tracker_with(A, 0, 1)
    tracker.track(B, 0)
    tracker.forget([A])
    assert tracker.partitions() == {B}
    assert tracker.in_flight() == 1
    assert tracker.commit_point(A) is None
    tracker.done(A, 0)  # revoked work finishing late
    assert tracker.committable() == {B: 0}
    # Reassigned: offsets restart from the committed position, below the old last offset.
    tracker.track(A, 0)
    assert tracker.committable() == {A: 0, B: 0}


async def test_drained_is_immediate_when_idle() -> None:
    tracker = tracker_with(A, 0)
    tracker.done(A, 0)
    assert await tracker.drained([A, B], timeout=0)
    assert await tracker.drained([], timeout=0)


async def test_drained_waits_for_done() -> None:
    tracker = tracker_with(A, 0, 1)
    tracker.track(B, 0)  # not waited for

    async def finish() -> None:
        await asyncio.sleep(0.01)
        tracker.done(A, 1)
        await asyncio.sleep(0.01)
        tracker.done(A, 0)

    task = asyncio.create_task(finish())
    started = time.monotonic()
    assert await tracker.drained([A], timeout=5)
    assert time.monotonic() - started < 1
    await task
    assert tracker.in_flight(B) == 1


async def test_drained_times_out() -> None:
    tracker = tracker_with(A, 0)
    started = time.monotonic()
    assert not await tracker.drained([A], timeout=0.05)
    assert 0.04 < time.monotonic() - started < 1
    assert tracker._waiters == []


async def test_drained_ends_when_partitions_are_forgotten() -> None:
    tracker = tracker_with(A, 0)

    async def revoke() -> None:
        await asyncio.sleep(0.01)
        tracker.forget([A])

    task = asyncio.create_task(revoke())
    assert await tracker.drained([A], timeout=5)
    await task


async def test_several_waiters_each_wake_on_their_own_partitions() -> None:
    tracker = tracker_with(A, 0)
    tracker.track(B, 0)
    wait_a = asyncio.create_task(tracker.drained([A], timeout=5))
    wait_ab = asyncio.create_task(tracker.drained([A, B], timeout=5))
    await asyncio.sleep(0)
    tracker.done(A, 0)
    assert await wait_a
    await asyncio.sleep(0.01)
    assert not wait_ab.done()
    tracker.done(B, 0)
    assert await wait_ab


def test_amortised_constant_time() -> None:
    """A sliding window of 256 over 200k records, finishing in reverse order per window."""
    tracker = OffsetTracker()
    started = time.perf_counter()
    for base in range(0, 200_000, 256):
        for offset in range(base, base + 256):
            tracker.track(A, offset)
        for offset in reversed(range(base, base + 256)):
            tracker.done(A, offset)
    assert tracker.commit_point(A) == 200_192
    assert time.perf_counter() - started < 2.0  # ~0.2 s; quadratic would take minutes


# ---- properties ----------------------------------------------------------------------------

partitions = st.sampled_from([A, B, C])


@st.composite
def workloads(
    draw: st.DrawFn,
) -> tuple[dict[TopicPartition, list[int]], list[tuple[TopicPartition, int]]]:
    """Increasing offsets with gaps per partition, and a shuffled completion order."""
    offsets: dict[TopicPartition, list[int]] = {}
    for tp in draw(st.sets(partitions, min_size=1)):
        start = draw(st.integers(0, 1000))
        gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=40))
        offsets[tp] = [start + sum(gaps[:i]) for i in range(len(gaps))]
    completions = draw(st.permutations([(tp, o) for tp, os in offsets.items() for o in os]))
    return offsets, completions


@settings(max_examples=300)
@given(workloads())
def test_commit_point_never_passes_unfinished_never_goes_back_ends_at_last_plus_one(
    workload: tuple[dict[TopicPartition, list[int]], list[tuple[TopicPartition, int]]],
) -> None:
    offsets, completions = workload
    tracker = OffsetTracker()
    for tp, os in offsets.items():
        for o in os:
            tracker.track(tp, o)
    unfinished = {tp: set(os) for tp, os in offsets.items()}
    previous = {tp: os[0] for tp, os in offsets.items()}
    for tp, o in completions:
        tracker.done(tp, o)
        unfinished[tp].discard(o)
        for part, os in offsets.items():
            point = tracker.commit_point(part)
            assert point is not None
            if unfinished[part]:
                assert point == min(unfinished[part])
            else:
                assert point == os[-1] + 1
            assert point >= previous[part]
            previous[part] = point
    assert tracker.in_flight() == 0
    assert tracker.committable() == {tp: os[-1] + 1 for tp, os in offsets.items()}


class TrackerMachine(RuleBasedStateMachine):
    """Fetch, finish, commit, revoke and reassign in any interleaving, against a plain model."""

    @initialize()
    def start(self) -> None:
        self.now = 0.0
        self.tracker = OffsetTracker(clock=lambda: self.now)
        self.when: dict[tuple[TopicPartition, int], float] = {}  # tracked at
        # The model: per assigned partition, tracked offsets, unfinished ones, the last
        # committed mark and the last commit point seen (for monotonicity).
        self.tracked: dict[TopicPartition, list[int]] = {}
        self.unfinished: dict[TopicPartition, set[int]] = {}
        self.marked: dict[TopicPartition, int] = {}
        self.seen: dict[TopicPartition, int] = {}
        # Offsets of revoked partitions still "being processed" by old tasks.
        self.orphans: list[tuple[TopicPartition, int]] = []
        # Where each partition resumes after a reassignment: its committed offset.
        self.resume: dict[TopicPartition, int] = {}

    @rule(tp=partitions, gap=st.integers(1, 4), count=st.integers(1, 5))
    def fetch(self, tp: TopicPartition, gap: int, count: int) -> None:
        tracked = self.tracked.setdefault(tp, [])
        nxt = tracked[-1] + gap if tracked else self.resume.get(tp, 0) + gap - 1
        for i in range(count):
            self.now += 1.0
            assert not self.tracker.goes_back(tp, nxt + i)
            self.tracker.track(tp, nxt + i)
            self.when[(tp, nxt + i)] = self.now
            tracked.append(nxt + i)
            self.unfinished.setdefault(tp, set()).add(nxt + i)

    @precondition(lambda self: any(self.tracked.values()))
    @rule(data=st.data())
    def seek_back(self, data: st.DataObject) -> None:
        """An offset at or below the last tracked one (a seek, an offset reset): the pipeline
        forgets the partition, then tracks it afresh; old work finishing later is orphaned."""
        tp = data.draw(st.sampled_from(sorted(tp for tp, os in self.tracked.items() if os)))
        offset = data.draw(st.integers(0, self.tracked[tp][-1]))
        assert self.tracker.goes_back(tp, offset)
        self.revoke(tp)
        self.resume[tp] = offset
        self.now += 1.0
        self.tracker.track(tp, offset)
        self.when[(tp, offset)] = self.now
        self.tracked[tp] = [offset]
        self.unfinished.setdefault(tp, set()).add(offset)

    @precondition(lambda self: any(self.unfinished.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        choices = sorted((tp, o) for tp, os in self.unfinished.items() for o in os)
        tp, offset = data.draw(st.sampled_from(choices))
        self.tracker.done(tp, offset)
        self.unfinished[tp].remove(offset)

    @precondition(lambda self: bool(self.orphans))
    @rule(data=st.data())
    def finish_revoked(self, data: st.DataObject) -> None:
        """Work of a revoked partition finishing late must change nothing, unless the offset
        was fetched again after reassignment (then it is genuinely in flight again)."""
        tp, offset = self.orphans.pop(data.draw(st.integers(0, len(self.orphans) - 1)))
        if offset in self.unfinished.get(tp, set()):
            return  # re-fetched: its new copy is tracked; an old completion is not about it
        before = (self.tracker.committable(), self.tracker.in_flight())
        self.tracker.done(tp, offset)
        assert (self.tracker.committable(), self.tracker.in_flight()) == before

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.committable()
        for tp, point in offsets.items():
            assert tp in self.tracked
            assert tp not in self.marked or point > self.marked[tp]
        for tp in self.tracked:
            if tp not in offsets:
                # Not reported: its point has not advanced since the last mark.
                assert self.tracker.commit_point(tp) == self.marked.get(tp)
        self.tracker.mark_committed(offsets)
        self.marked.update(offsets)
        assert self.tracker.committable() == {}

    @rule(tp=partitions)
    def revoke(self, tp: TopicPartition) -> None:
        self.tracker.forget([tp])
        self.orphans.extend((tp, o) for o in self.unfinished.pop(tp, set()))
        self.resume[tp] = self.marked.pop(tp, self.resume.get(tp, 0))
        self.tracked.pop(tp, None)
        self.seen.pop(tp, None)

    @invariant()
    def commit_point_is_safe_and_monotonic(self) -> None:
        for tp, tracked in self.tracked.items():
            point = self.tracker.commit_point(tp)
            assert point is not None
            unfinished = self.unfinished.get(tp, set())
            if unfinished:
                assert point == min(unfinished)  # never past an unfinished offset
            else:
                assert point == tracked[-1] + 1
            assert point >= self.seen.get(tp, point)
            self.seen[tp] = point

    @invariant()
    def bookkeeping_matches(self) -> None:
        assert self.tracker.partitions() == set(self.tracked)
        for tp in (A, B, C):
            assert self.tracker.in_flight(tp) == len(self.unfinished.get(tp, set()))
        assert self.tracker.in_flight() == sum(len(s) for s in self.unfinished.values())

    @invariant()
    def held_counts_everything_not_yet_released(self) -> None:
        """The window's measure: tracked offsets from the first unfinished one on."""
        held = sum(
            sum(1 for o in tracked if o >= min(self.unfinished[tp]))
            for tp, tracked in self.tracked.items()
            if self.unfinished.get(tp)
        )
        assert self.tracker.held() == held

    @invariant()
    def oldest_is_the_longest_waiting_head(self) -> None:
        heads = [
            (self.when[(tp, min(unfinished))], tp, min(unfinished))
            for tp, unfinished in self.unfinished.items()
            if unfinished
        ]
        oldest = self.tracker.oldest()
        if not heads:
            assert oldest is None
            return
        since, tp, offset = min(heads)
        assert oldest == (tp, offset, self.now - since)


TrackerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
test_tracker_state_machine = TrackerMachine.TestCase
