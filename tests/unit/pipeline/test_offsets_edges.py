"""OffsetTracker.oldest: what the stuck log and the oldest-in-flight gauge read."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from consumer.pipeline.offsets import OffsetTracker

A = TopicPartition("in", 0)
B = TopicPartition("in", 1)
C = TopicPartition("in", 2)


def test_oldest_is_the_longest_waiting_front_across_partitions() -> None:
    now = [10.0]
    tracker = OffsetTracker(clock=lambda: now[0])
    assert tracker.oldest() is None
    tracker.track(A, 5)  # A first in the dict, but not the oldest
    now[0] = 4.0  # (a clock that is not monotonic is enough to order them)
    tracker.track(B, 7)
    tracker.track(B, 8)
    now[0] = 12.0
    assert tracker.oldest() == (B, 7, 8.0)
    tracker.done(B, 8)  # a done record behind the front does not change it
    assert tracker.oldest() == (B, 7, 8.0)
    tracker.done(B, 7)  # B empty now: skipped
    assert tracker.oldest() == (A, 5, 2.0)
    tracker.track(C, 1)  # tracked at 12.0: younger than A
    now[0] = 20.0
    assert tracker.oldest() == (A, 5, 10.0)
    tracker.done(A, 5)
    assert tracker.oldest() == (C, 1, 8.0)
    tracker.done(C, 1)
    assert tracker.oldest() is None


def test_oldest_ignores_partitions_that_are_all_done_whatever_their_order() -> None:
    now = [0.0]
    tracker = OffsetTracker(clock=lambda: now[0])
    tracker.track(A, 0)
    tracker.done(A, 0)  # A stays known (its last offset) with nothing in order
    now[0] = 3.0
    tracker.track(B, 0)
    now[0] = 5.0
    assert tracker.oldest() == (B, 0, 2.0)


def test_goes_back_is_an_offset_not_above_the_last_tracked_one() -> None:
    tracker = OffsetTracker()
    assert not tracker.goes_back(A, 0)  # unknown partition
    tracker.track(A, 5)
    assert tracker.goes_back(A, 5) and tracker.goes_back(A, 4)
    assert not tracker.goes_back(A, 6)
    assert not tracker.goes_back(B, 5)  # per partition
    tracker.done(A, 5)
    assert tracker.goes_back(A, 3)  # done, but still the last one tracked
    tracker.forget([A])
    assert not tracker.goes_back(A, 3)


def test_held_counts_records_until_released_in_order() -> None:
    tracker = OffsetTracker()
    assert tracker.held() == 0
    for offset in (0, 1, 2, 3):
        tracker.track(A, offset)
    tracker.track(B, 0)
    assert (tracker.held(), tracker.in_flight()) == (5, 5)
    tracker.done(A, 1)
    tracker.done(A, 2)
    assert (tracker.held(), tracker.in_flight()) == (5, 3)  # behind the unfinished 0
    tracker.done(A, 0)
    assert (tracker.held(), tracker.in_flight()) == (2, 2)  # 0, 1, 2 released together
    tracker.done(A, 0)  # repeated: ignored
    assert tracker.held() == 2
    tracker.forget([B])
    assert (tracker.held(), tracker.in_flight()) == (1, 1)
    tracker.done(A, 3)
    assert (tracker.held(), tracker.in_flight()) == (0, 0)
    tracker.track(A, 4)
    assert tracker.held() == 1


def test_a_commit_acknowledged_again_is_not_committable_again() -> None:
    tracker = OffsetTracker()
    tracker.track(A, 0)
    tracker.done(A, 0)
    tracker.mark_committed({A: 1})
    tracker.mark_committed({A: 1})
    assert tracker.committable() == {}
    tracker.track(A, 1)
    assert tracker.committable() == {}  # still 1: nothing new done
    tracker.done(A, 1)
    assert tracker.committable() == {A: 2}
