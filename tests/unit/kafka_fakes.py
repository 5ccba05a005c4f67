"""Small, honest test doubles of the aiokafka surface the pipeline uses, and a fake classifier.

Each fake behaves like the real thing where the pipeline could tell the difference, and keeps a
record of what was asked of it, so tests assert on what crossed the Kafka boundary:

- :class:`FakeConsumer`: ``assignment()``, ``pause()``/``resume()``/``paused()``,
  ``getmany(timeout_ms, max_records)`` over queued records per partition (the position moves past
  what it returned, paused and unassigned partitions return nothing, an empty poll waits up to
  ``timeout_ms`` for records), ``commit(offsets)`` (aiokafka's validation and its
  ``IllegalStateError`` for an unassigned partition), ``highwater()``, ``position()``, ``seek()``,
  and a rebalance helper that calls the real :class:`consumer.pipeline.source.Rebalance` listener
  while the revoked partitions are still assigned, as aiokafka does.
- :class:`FakeProducer`: ``send()`` returns a future resolved on "ack" (errors injectable per
  topic, at send or at ack), ``transaction()`` that raises aiokafka's ``AssertionError`` on a
  second begin while one is open, ``send_offsets_to_transaction`` and ``_txn_manager``.
- :class:`FakeClassifier`: its ``classify`` is the one callable the stages are handed (the
  classifier's or the batcher's in production), with per-offset behaviour (block on an event,
  fail, verdict) and a record of calls; ``policy`` and ``breaker`` as the app reads them.

Records, verdicts and usage events are the real types (aiokafka's ``ConsumerRecord``,
``schemas``), so serialization and sizes are real too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import IllegalOperation, IllegalStateError, KafkaError, ProducerFenced
from aiokafka.structs import ConsumerRecord, TopicPartition
from aiokafka.util import commit_structure_validate

from consumer.errors import PermanentError
from consumer.model.circuit import CircuitBreaker
from consumer.model.classify import Classified
from consumer.model.policy import Policy, load_policy
from consumer.pipeline.admit import Admitted, Admitter
from consumer.settings import OversizePolicy
from schemas import Source, UsageEvent, UsageOutcome, Verdict, make_event_id

MODEL = "gpt-4o-mini"
POLICY = load_policy()


async def eventually(
    condition: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
) -> None:
    """Wait until ``condition()`` holds; the timeout is only a safety net (fails the test)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


def admitter() -> Admitter:
    """The real admitter (tiktoken ships with the project: offline)."""
    return Admitter(
        model=MODEL, budget_tokens=8000, max_input_tokens=32_000, oversize=OversizePolicy.TRUNCATE
    )


def request_bytes(offset: int, text: str | None = None) -> bytes:
    return json.dumps({"id": f"m{offset}", "text": text or f"message {offset}"}).encode()


# ---- consumer ------------------------------------------------------------------------------


@dataclass
class Commit:
    """One ``commit(offsets)`` call: what was asked, and how it ended."""

    offsets: dict[TopicPartition, int]
    outcome: str = "running"  # running | ok | error: <name> | cancelled


class FakeConsumer:
    """The part of ``AIOKafkaConsumer`` the pipeline uses, over in-memory partitions."""

    def __init__(self, assigned: Iterable[TopicPartition] = ()) -> None:
        self._assigned: set[TopicPartition] = set(assigned)
        self._paused: set[TopicPartition] = set()
        self._records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        self._positions: dict[TopicPartition, int] = {}
        self._highwater: dict[TopicPartition, int] = {}
        self._arrived = asyncio.Event()
        self.listener: Any = None  # a consumer.pipeline.source.Rebalance, as subscribe() would take
        self.commits: list[Commit] = []
        #: Raised by the next commit() calls, in order (after the gate opens).
        self.commit_errors: deque[BaseException] = deque()
        #: While set to an unset event, commit() waits for it (a slow group coordinator).
        self.commit_gate: asyncio.Event | None = None
        self.illegal_state_errors = 0
        self._committing = 0
        self.max_concurrent_commits = 0  # commits running at once (must stay 1)
        #: Every getmany call: (max_records, partitions paused at the call, records returned).
        self.polls: list[tuple[int, frozenset[TopicPartition], int]] = []
        self.on_poll: list[Callable[[int], None]] = []  # called with max_records at each poll
        #: Raised by the next position() calls, in order, whatever the partition.
        self.position_errors: deque[BaseException] = deque()

    # -- test set-up
    def add(
        self,
        tp: TopicPartition,
        offset: int,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """Append a record to ``tp`` (offsets must increase; gaps allowed)."""
        value = request_bytes(offset) if value is None else value
        records = self._records[tp]
        assert not records or records[-1].offset < offset, "offsets must increase"
        records.append(
            ConsumerRecord(
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                timestamp=1_700_000_000_000 + offset,
                timestamp_type=0,
                key=key,
                value=value,
                checksum=None,
                serialized_key_size=-1 if key is None else len(key),
                serialized_value_size=-1 if value is None else len(value),
                headers=list(headers),
            )
        )
        self._arrived.set()

    def fill(self, tp: TopicPartition, offsets: Iterable[int], **kw: Any) -> None:
        for offset in offsets:
            self.add(tp, offset, **kw)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Move the position (an offset reset or a seek): the next poll re-reads from there."""
        self._require_assigned(tp)
        self._positions[tp] = offset
        self._arrived.set()

    def unassign(self, *tps: TopicPartition) -> None:
        """The assignment shrinks without a callback (as it does mid-rebalance in aiokafka)."""
        self._assigned -= set(tps)
        self._paused -= set(tps)

    async def rebalance(
        self, *, revoke: Iterable[TopicPartition] = (), assign: Iterable[TopicPartition] = ()
    ) -> None:
        """Eager rebalance: revoke (callback while still assigned), then assign, then notify."""
        revoked, added = set(revoke), set(assign)
        if self.listener is not None:
            await self.listener.on_partitions_revoked(revoked)
        self.unassign(*revoked)
        self._assigned |= added
        self._arrived.set()
        if self.listener is not None:
            await self.listener.on_partitions_assigned(added)

    # -- aiokafka surface
    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        if not all(isinstance(p, TopicPartition) for p in partitions):
            raise TypeError("partitions must be TopicPartition namedtuples")
        for tp in partitions:
            self._require_assigned(tp)  # aiokafka's subscription asserts the assignment
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        if not all(isinstance(p, TopicPartition) for p in partitions):
            raise TypeError("partitions must be TopicPartition namedtuples")
        self._paused -= set(partitions)
        self._arrived.set()

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def _available(self, tp: TopicPartition) -> list[ConsumerRecord[bytes, bytes]]:
        position = self._positions.get(tp, 0)
        return [r for r in self._records.get(tp, []) if r.offset >= position]

    def _fetchable(self) -> list[TopicPartition]:
        return sorted(
            (tp for tp in self._assigned - self._paused if self._available(tp)),
            key=lambda tp: (tp.topic, tp.partition),
        )

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
            raise ValueError("`max_records` must be a positive Integer")
        assert not partitions, "the pipeline polls every assigned partition"
        limit = max_records or 500
        for hook in self.on_poll:
            hook(limit)
        paused = frozenset(self._paused)
        if not self._fetchable() and timeout_ms > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    while not self._fetchable():
                        await self._arrived.wait()
                        self._arrived.clear()
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0)  # a real poll always yields to the loop
        result: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in self._fetchable():
            if limit <= 0:
                break
            taken = self._available(tp)[:limit]
            limit -= len(taken)
            result[tp] = taken
            self._positions[tp] = taken[-1].offset + 1
        for tp in self._assigned - self._paused:  # every fetch response carries it
            if self._records.get(tp):
                self._highwater[tp] = self._records[tp][-1].offset + 1
        self.polls.append((max_records or 500, paused, sum(len(v) for v in result.values())))
        return result

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        assert offsets is not None, "the pipeline always names its offsets"
        record = Commit({tp: int(o) for tp, o in offsets.items()})
        self.commits.append(record)
        self._committing += 1
        self.max_concurrent_commits = max(self.max_concurrent_commits, self._committing)
        try:
            validated = commit_structure_validate(dict(offsets))
            for tp in validated:
                if tp not in self._assigned:
                    self.illegal_state_errors += 1
                    raise IllegalStateError(f"Partition {tp} is not assigned")
            if self.commit_gate is not None:
                await self.commit_gate.wait()
            if self.commit_errors:
                raise self.commit_errors.popleft()
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except BaseException as exc:
            record.outcome = f"error: {type(exc).__name__}"
            raise
        finally:
            self._committing -= 1
        record.outcome = "ok"

    def highwater(self, partition: TopicPartition) -> int | None:
        assert partition in self._assigned, "Partition is not assigned"
        return self._highwater.get(partition)

    async def position(self, partition: TopicPartition) -> int:
        self._require_assigned(partition)
        if self.position_errors:
            raise self.position_errors.popleft()
        return self._positions.get(partition, 0)

    def _require_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._assigned:
            self.illegal_state_errors += 1
            raise IllegalStateError(f"Partition {tp} is not assigned")

    # -- what tests read
    def ok_commits(self) -> list[dict[TopicPartition, int]]:
        return [c.offsets for c in self.commits if c.outcome == "ok"]

    def committed(self, tp: TopicPartition) -> int | None:
        """The last offset successfully committed for ``tp``."""
        points = [c[tp] for c in self.ok_commits() if tp in c]
        return points[-1] if points else None


# ---- producer ------------------------------------------------------------------------------


@dataclass
class Sent:
    """One record handed to ``send()``."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    in_transaction: bool

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.value)
        return parsed


@dataclass
class Transaction:
    """One transaction: its records and offsets, and how it ended."""

    records: list[Sent] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    group_id: str | None = None
    outcome: str = "open"  # open | committing | committed | aborted | error: <name>


class FakeTxnManager:
    """``producer._txn_manager``: the one method the Outbox reads."""

    def __init__(self) -> None:
        self.fatal = False

    def is_fatal_error(self) -> bool:
        return self.fatal


class _TransactionContext:
    def __init__(self, producer: FakeProducer) -> None:
        self._producer = producer

    async def __aenter__(self) -> _TransactionContext:
        await self._producer._begin()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self._producer._end(failed=exc_type is not None)


class FakeProducer:
    """The part of ``AIOKafkaProducer`` the pipeline uses; acknowledges in memory."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []  # every send() call that enqueued a record
        self.acked: list[Sent] = []  # records whose future resolved successfully
        #: Injected errors: (topic, error, "send" | "ack", which values), each raised once, by
        #: the first matching send.
        self.errors: list[tuple[str, KafkaError, str, Callable[[bytes], bool] | None]] = []
        #: While set to an unset event, acknowledgements of that topic wait for it.
        self.ack_gates: dict[str, asyncio.Event] = {}
        self._txn_manager = FakeTxnManager()
        self.transactions: list[Transaction] = []
        self._open: Transaction | None = None
        self.overlaps = 0  # a second transaction begun while one was open (must stay 0)
        #: While set to an unset event, committing a transaction waits for it.
        self.txn_commit_gate: asyncio.Event | None = None
        #: Raised by the next transaction commits, in order (after the gate opens).
        self.txn_commit_errors: deque[KafkaError] = deque()

    def fail(
        self,
        topic: str,
        *errors: KafkaError,
        at: str = "ack",
        match: Callable[[bytes], bool] | None = None,
    ) -> None:
        """The next sends to ``topic`` (whose value ``match``es) fail with ``errors``, in order.

        ``at="send"``: ``send()`` raises (aiokafka does so for a record over max_request_size);
        ``at="ack"``: the returned future fails (the broker's answer).
        """
        assert at in ("send", "ack")
        self.errors.extend((topic, e, at, match) for e in errors)

    def _take_error(self, topic: str, value: bytes) -> tuple[KafkaError | None, str]:
        for i, (t, error, at, match) in enumerate(self.errors):
            if t == topic and (match is None or match(value)):
                del self.errors[i]
                return error, at
        return None, ""

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        if self._txn_manager.fatal:
            raise AssertionError("Invalid state transition (the producer is in FATAL_ERROR)")
        error, at = self._take_error(topic, value)
        if error is not None and at == "send":
            raise error  # e.g. MessageSizeTooLargeError over max_request_size: raised at once
        record = Sent(topic, value, key, list(headers or []), self._open is not None)
        self.sent.append(record)
        if self._open is not None:
            self._open.records.append(record)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate = self.ack_gates.get(topic)

        async def ack() -> None:
            if gate is not None:
                await gate.wait()
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                if not record.in_transaction:
                    self.acked.append(record)
                future.set_result(None)

        if gate is None and error is None:
            if self._open is None:  # a transaction's records count once it commits
                self.acked.append(record)
            future.set_result(None)
        elif gate is None:
            future.set_exception(error)  # type: ignore[arg-type]
        else:
            task = asyncio.ensure_future(ack())
            _background.add(task)
            task.add_done_callback(_background.discard)
        return future

    def transaction(self) -> _TransactionContext:
        return _TransactionContext(self)

    async def _begin(self) -> None:
        await asyncio.sleep(0)  # begin_transaction awaits the producer id
        if self._txn_manager.fatal:
            raise AssertionError(
                "Invalid state transition TransactionState.FATAL_ERROR -> "
                "TransactionState.IN_TRANSACTION"
            )
        if self._open is not None:
            self.overlaps += 1
            raise AssertionError(
                "Invalid state transition TransactionState.IN_TRANSACTION -> "
                "TransactionState.IN_TRANSACTION"
            )
        self._open = Transaction()
        self.transactions.append(self._open)

    async def _end(self, *, failed: bool) -> None:
        txn = self._open
        assert txn is not None
        try:
            if failed:
                if not self._txn_manager.fatal:  # aiokafka: no abort once fatal
                    await asyncio.sleep(0)
                    txn.outcome = "aborted"
                return
            txn.outcome = "committing"
            if self.txn_commit_gate is not None:
                await self.txn_commit_gate.wait()
            if self.txn_commit_errors:
                error = self.txn_commit_errors.popleft()
                if isinstance(error, ProducerFenced):
                    self._txn_manager.fatal = True  # aiokafka: FATAL_ERROR, no abort
                txn.outcome = f"error: {type(error).__name__}"
                raise error
            txn.outcome = "committed"
            self.acked.extend(txn.records)
        finally:
            self._open = None

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        if self._open is None:
            raise IllegalOperation("Not in the middle of a transaction")
        if not group_id or not isinstance(group_id, str):
            raise ValueError(group_id)
        commit_structure_validate(dict(offsets))
        await asyncio.sleep(0)
        self._open.offsets.update(offsets)
        self._open.group_id = group_id

    # -- what tests read
    def on(self, topic: str, *, acked: bool = True) -> list[Sent]:
        return [r for r in (self.acked if acked else self.sent) if r.topic == topic]

    def committed_transactions(self) -> list[Transaction]:
        return [t for t in self.transactions if t.outcome == "committed"]


_background: set[asyncio.Task[None]] = set()


# ---- classifier ----------------------------------------------------------------------------


def verdict_for(
    admitted: Admitted, source: Source, policy: Policy = POLICY, **scores: float
) -> Verdict:
    """A real verdict, decided by the real policy on ``scores`` (category name -> score)."""
    full = {c.name: scores.get(c.name, 0.0) for c in policy.categories}
    flagged, action, categories = policy.decide(full)
    request = admitted.request
    return Verdict(
        event_id=make_event_id(source, policy.version, "verdict"),
        source=source,
        content_id=request.id,
        content_sha256=hashlib.sha256(request.text.encode()).hexdigest(),
        flagged=flagged,
        action=action,
        categories=categories,
        rationale="fake classifier",
        model=MODEL,
        policy_version=policy.version,
        prompt_version="test",
        truncated=admitted.truncated,
        latency_ms=1.0,
        created_at=datetime.now(UTC),
    )


def usage_for(source: Source, content_id: str | None, attempt: int = 1) -> UsageEvent:
    return UsageEvent(
        event_id=make_event_id(source, POLICY.version, "usage", attempt),
        source=source,
        content_id=content_id,
        model=MODEL,
        attempt=attempt,
        outcome=UsageOutcome.OK,
        prompt_tokens=100,
        completion_tokens=20,
        latency_ms=1.0,
        created_at=datetime.now(UTC),
    )


@dataclass
class Behaviour:
    """What the fake classifier does for one call of one offset."""

    gate: asyncio.Event | None = None  # wait for it before answering
    uncancellable: bool = False  # keep waiting through cancellation (work that cannot stop)
    failure: PermanentError | None = None  # answer with this failure (-> dead letter)
    scores: dict[str, float] = field(default_factory=dict)


Key = tuple[int, int]  # (partition, offset)


class FakeClassifier:
    """Stands in for ``Classifier``: ``classify()``, and the ``policy`` and ``breaker`` the
    pipeline is built with."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.policy = policy
        self.breaker = CircuitBreaker()
        #: Behaviour per (partition, offset), one per call in order; the last one repeats.
        self.script: dict[Key, list[Behaviour]] = {}
        self.started: list[Key] = []  # classify() entered, in order
        self.finished: list[Key] = []  # classify() answered, in order
        self.cancelled: list[Key] = []
        self.running: set[Key] = set()
        self.max_running = 0
        self.calls: dict[Key, int] = defaultdict(int)

    def on(self, partition: int, offset: int, *behaviours: Behaviour) -> None:
        self.script[(partition, offset)] = list(behaviours)

    def block(self, partition: int, offset: int, *, uncancellable: bool = False) -> asyncio.Event:
        gate = asyncio.Event()
        self.on(partition, offset, Behaviour(gate=gate, uncancellable=uncancellable))
        return gate

    async def classify(self, admitted: Admitted, source: Source) -> Classified:
        key = (source.partition, source.offset)
        self.calls[key] += 1
        script = self.script.get(key) or [Behaviour()]
        behaviour = script[min(self.calls[key], len(script)) - 1]
        self.started.append(key)
        self.running.add(key)
        self.max_running = max(self.max_running, len(self.running))
        try:
            if behaviour.gate is not None:
                await _wait(behaviour.gate.wait, uncancellable=behaviour.uncancellable)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.running.discard(key)
        self.finished.append(key)
        usage = [usage_for(source, admitted.request.id)]
        if behaviour.failure is not None:
            return Classified(verdict=None, failure=behaviour.failure, usage=usage)
        verdict = verdict_for(admitted, source, self.policy, **behaviour.scores)
        return Classified(verdict=verdict, failure=None, usage=usage)


async def _wait(wait: Callable[[], Awaitable[Any]], *, uncancellable: bool) -> None:
    if not uncancellable:
        await wait()
        return
    inner = asyncio.ensure_future(wait())
    while True:
        try:
            await asyncio.shield(inner)
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            continue
