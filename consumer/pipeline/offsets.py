"""Offsets stage: out-of-order completion, in-order commits.

Records of one partition are fetched in increasing offset order, processed concurrently and
finish in any order. Kafka commits one number per partition, the next offset to read, so the
committed offset may never pass a record whose outputs are not yet acknowledged: a crash would
skip it. :class:`OffsetTracker` keeps, per partition, the fetched offsets in fetch order and
commits up to the first unfinished one.

Offsets need not be contiguous (compaction and transaction markers leave gaps), so the commit
point is "the first tracked offset not yet done", or, when everything tracked is done, "the
last tracked offset + 1" (which jumps any gap after it, exactly as the consumer's own position
would).

Cost is amortised O(1) per record: a deque of offsets in fetch order whose done prefix is
popped as soon as it forms. (An insertion-ordered ``dict`` looks equivalent but is not:
deleting from its front leaves dummy slots that ``next(iter(d))`` scans over until the next
resize, which made 160k front pops take seconds in a measurement, against milliseconds for a
deque.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition

__all__ = ["OffsetTracker"]


@dataclass(slots=True)
class _Partition:
    """What the tracker knows about one assigned partition."""

    #: Tracked offsets in fetch order; the front is the lowest one not yet released.
    order: deque[int] = field(default_factory=deque)
    #: When each offset of ``order`` was tracked (monotonic seconds), in the same order.
    since: deque[float] = field(default_factory=deque)
    #: Tracked offsets whose outputs are not yet acknowledged.
    waiting: set[int] = field(default_factory=set)
    #: Done offsets still queued behind an unfinished one (not yet popped from ``order``).
    finished: set[int] = field(default_factory=set)
    #: Last offset tracked; ``None`` until the first ``track``.
    last: int | None = None
    #: Last commit point handed to Kafka (via ``mark_committed``); ``None`` before the first.
    committed: int | None = None

    def commit_point(self) -> int | None:
        """The next offset to read once everything before it is safe; ``None`` if unknown."""
        if self.order:
            return self.order[0]
        return None if self.last is None else self.last + 1


@dataclass(slots=True)
class _Waiter:
    partitions: frozenset[TopicPartition]
    event: asyncio.Event


class OffsetTracker:
    """Per-partition offset bookkeeping: which offsets may be committed, and what is in flight.

    Single-threaded by design (it lives on the event loop); every method is synchronous except
    :meth:`drained`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
        self._in_flight = 0
        self._held = 0
        self._waiters: list[_Waiter] = []
        self._clock = clock

    def goes_back(self, tp: TopicPartition, offset: int) -> bool:
        """Whether ``offset`` is not above the last one tracked for ``tp`` (a seek or reset).

        The caller resets the partition (:meth:`forget`) before it tracks such an offset.
        """
        part = self._parts.get(tp)
        return part is not None and part.last is not None and offset <= part.last

    def track(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` of ``tp`` was fetched and is now in flight.

        Offsets must increase per partition (gaps allowed); anything else is a bug in the
        caller (which checks :meth:`goes_back` first), so it raises ``ValueError`` rather than
        silently corrupting the commit point.
        """
        if offset < 0:
            raise ValueError(f"{tp.topic}[{tp.partition}]: offset {offset} is negative")
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        elif part.last is not None and offset <= part.last:
            raise ValueError(
                f"{tp.topic}[{tp.partition}]: offset {offset} tracked after {part.last}; "
                "offsets must increase per partition"
            )
        part.order.append(offset)
        part.since.append(self._clock())
        part.waiting.add(offset)
        part.last = offset
        self._in_flight += 1
        self._held += 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        """Record that every output of ``offset`` was acknowledged by the broker.

        An unknown partition or offset (revoked and forgotten meanwhile) and a repeated call
        are ignored: late completions of revoked work are normal during a rebalance.
        """
        part = self._parts.get(tp)
        if part is None or offset not in part.waiting:
            return
        part.waiting.remove(offset)
        self._in_flight -= 1
        if part.order[0] == offset:
            part.order.popleft()
            part.since.popleft()
            self._held -= 1
            # Release the done run that was queued behind this offset.
            while part.order and part.order[0] in part.finished:
                part.finished.remove(part.order.popleft())
                part.since.popleft()
                self._held -= 1
        else:
            part.finished.add(offset)
        if self._waiters and not part.waiting:
            self._wake()

    def commit_point(self, tp: TopicPartition) -> int | None:
        """The offset that may be committed for ``tp`` now; ``None`` if nothing was tracked."""
        part = self._parts.get(tp)
        return None if part is None else part.commit_point()

    def committed(self, tp: TopicPartition) -> int | None:
        """The last commit point Kafka acknowledged for ``tp`` (:meth:`mark_committed`);
        ``None`` before the first, or if nothing was tracked."""
        part = self._parts.get(tp)
        return None if part is None else part.committed

    def committable(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point advanced since :meth:`mark_committed`, with that point.

        A partition never marked reports its first commit point even if nothing is done yet:
        committing the start position protects against ``auto.offset.reset=latest`` skipping
        the fetched-but-unfinished records after a crash.
        """
        result: dict[TopicPartition, int] = {}
        for tp, part in self._parts.items():
            point = part.commit_point()
            if point is not None and (part.committed is None or point > part.committed):
                result[tp] = point
        return result

    def mark_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record that Kafka acknowledged these commits; partitions forgotten since are ignored.

        Never moves a partition's mark backwards, so a late acknowledgement of an older commit
        cannot make an already committed point reappear in :meth:`committable`.
        """
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or offset > part.committed):
                part.committed = offset

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        """Tracked but not done: for ``tp``, or in total when ``tp`` is ``None``."""
        if tp is None:
            return self._in_flight
        part = self._parts.get(tp)
        return 0 if part is None else len(part.waiting)

    def held(self) -> int:
        """Tracked and not yet released: in flight, or done but queued behind an unfinished one.

        This is what the work window counts, so that one stuck record cannot let the finished
        ones behind it pile up without bound.
        """
        return self._held

    def oldest(self) -> tuple[TopicPartition, int, float] | None:
        """The longest-waiting in-flight record: partition, offset and seconds in flight."""
        best: tuple[TopicPartition, int, float] | None = None
        for tp, part in self._parts.items():
            if part.order and (best is None or part.since[0] < best[2]):
                best = (tp, part.order[0], part.since[0])
        if best is None:
            return None
        return best[0], best[1], self._clock() - best[2]

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop all state of revoked partitions; their unfinished offsets will be redelivered."""
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._in_flight -= len(part.waiting)
                self._held -= len(part.order)
        if self._waiters:
            self._wake()

    def partitions(self) -> set[TopicPartition]:
        """Partitions with state (tracked since assignment and not forgotten)."""
        return set(self._parts)

    # A timeout parameter rather than asyncio.timeout() around the call: running out of time
    # is an expected answer (commit what is done, let the rest be redelivered), not an error.
    async def drained(self, tps: Iterable[TopicPartition], timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until none of ``tps`` has anything in flight; ``False`` if ``timeout`` passed.

        Used on revoke and shutdown: the grace period for in-flight work to be acknowledged
        before its partitions are committed and let go.
        """
        wanted = frozenset(tps)
        if self._idle(wanted):
            return True
        waiter = _Waiter(wanted, asyncio.Event())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                while not self._idle(wanted):
                    waiter.event.clear()
                    await waiter.event.wait()
        except TimeoutError:
            return self._idle(wanted)
        finally:
            self._waiters.remove(waiter)
        return True

    def _idle(self, tps: frozenset[TopicPartition]) -> bool:
        return all(self.in_flight(tp) == 0 for tp in tps)

    def _wake(self) -> None:
        # Only called when a partition became idle or was forgotten; each waiter re-checks.
        for waiter in self._waiters:
            if self._idle(waiter.partitions):
                waiter.event.set()
