"""A circuit breaker for the model provider: a sustained outage stops intake, not messages.

    closed ──(failure_threshold provider failures in a row)──▶ open
    open ──(reset_s passes)──▶ half_open: one probe call goes through, the others wait
    half_open ──probe succeeds──▶ closed      half_open ──probe fails──▶ open (reset_s doubles)

Only ``ProviderUnavailable`` (5xx, timeouts, dropped connections) counts: rate limits are the
limit stage's business (AIMD and ``retry-after``). While the circuit is not closed the pipeline
fetches nothing, so lag grows and an alert can fire, and the messages already in flight wait
here instead of hammering the provider; none is dead-lettered.

The probe always happens: the pipeline asks :meth:`CircuitBreaker.admits_intake` (not
``is_closed``) whether to fetch. It says yes while closed, and also once the open wait is over
and no probe is running, so that even when every in-flight message was cancelled (a rebalance,
say) new messages come in and one of them becomes the probe in :meth:`CircuitBreaker.admit`.
A caller whose own probe just failed (``admit(defer=True)``) lets any other waiting caller
probe first, and while only such callers wait it holds back for ``defer_grace_s`` after the
probe is due, long enough for intake to bring in a fresh message to probe with: so poison
messages (one, or several taking turns) cannot keep the circuit open by taking every probe
while healthy messages wait behind them. In a real outage with nothing new to fetch, the
deferred callers probe after that grace.

Poison versus outage (see :mod:`consumer.model.watches`): the breaker counts every success
(``successes``) and every opening (``openings``). A message's transient failure counts towards
``poison_attempts`` only when the breaker is still closed after it and has seen a success since
that message's previous failure (other messages get through meanwhile); an opening during its
retries resets the message's count. In an outage nothing succeeds, so nothing counts.

Each line the breaker logs on opening, on a probe (half-open) and on a failed probe (open again)
carries the last failure's cause as the caller described it (``failure(cause=...)``: what it ran
into, the HTTP status, a short message and the base URL, from
:func:`consumer.model.provider.cause_of`), so an outage says why and where, never with the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)

#: Different callers whose failures in a row it takes to open the circuit (see ``failure``).
DISTINCT_CALLERS_TO_OPEN = 3


class CircuitState(StrEnum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive provider failures and gates calls while the provider is down."""

    def __init__(
        self,
        *,
        failure_threshold: int = 10,
        reset_s: float = 5.0,
        max_reset_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
        defer_grace_s: float = 2.0,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.defer_grace_s = defer_grace_s
        self.base_reset_s = reset_s
        self.max_reset_s = max_reset_s
        self._clock = clock
        self._on_change = on_change
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._failing: set[int] = set()  # who failed in the current run of failures
        self._reset_s = reset_s
        self._open_until = 0.0
        self._probing = False
        self._eager = 0  # callers waiting in admit() that did not just fail a probe
        self._changed = asyncio.Event()
        #: Calls that got an answer, ever (read by the poison rule, consumer.model.watches).
        self.successes = 0
        #: Times the circuit opened, ever (an opening resets a message's poison count).
        self.openings = 0
        #: The last failure's cause, as log fields (see ``failure``); empty before any.
        self.last_cause: Mapping[str, object] = {}

    @property
    def is_closed(self) -> bool:
        """Calls flow freely (the pipeline fetches only then)."""
        return self.state is CircuitState.CLOSED

    def admits_intake(self) -> bool:
        """Whether the pipeline should fetch now.

        True while closed; while open, True once the wait is over, and while half-open, True
        when no probe is running: new messages then come in and one becomes the probe, even
        if nothing was left in flight to call :meth:`admit`. False otherwise.
        """
        if self.state is CircuitState.CLOSED:
            return True
        if self._probing:
            return False
        return self.state is CircuitState.HALF_OPEN or self._clock() >= self._open_until

    def retry_in_s(self) -> float:
        """Seconds until the open circuit lets a probe through (0 when it may go now)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    async def admit(self, *, defer: bool = False) -> bool:
        """Wait until a call may go out; return True when this call is the half-open probe.

        ``defer``: this caller's last call was a probe that failed; it probes again only when
        no other caller is waiting, so one poison message cannot keep the circuit open by
        taking every probe while healthy messages wait behind it.
        """
        if not defer:
            self._eager += 1
        try:
            while True:
                if self.state is CircuitState.CLOSED:
                    return False
                if self.state is CircuitState.OPEN:
                    remaining = self._open_until - self._clock()
                    if remaining > 0:
                        await self._wait(remaining)
                        continue
                    self._set(CircuitState.HALF_OPEN)
                held_back = self._held_back_s() if defer else 0.0
                if not self._probing and held_back <= 0:
                    self._probing = True
                    return True
                await self._wait(held_back if held_back > 0 else self._reset_s)
        finally:
            if not defer:
                self._eager -= 1

    def _held_back_s(self) -> float:
        """How long a deferring caller still waits before it may probe (0: it may now).

        Until another caller probes, if one waits; else until ``defer_grace_s`` after the
        probe fell due, which gives intake time to fetch a fresh message to probe with.
        """
        if self._eager > 0:
            return self._reset_s
        return max(0.0, self._open_until + self.defer_grace_s - self._clock())

    def end_probe(self) -> None:
        """The probe finished without a verdict on the provider (e.g. a 429): let another try."""
        self._probing = False
        self._wake()

    def success(self) -> None:
        """A call reached the provider and got an answer."""
        self._failures = 0
        self._failing.clear()
        self._probing = False
        self.successes += 1
        if self.state is not CircuitState.CLOSED:
            self._reset_s = self.base_reset_s
            self._set(CircuitState.CLOSED)

    def failure(
        self, caller: object | None = None, *, cause: Mapping[str, object] | None = None
    ) -> None:
        """A call failed with ProviderUnavailable; ``caller`` says whose (one message's calls),
        ``cause`` what it ran into, as log fields without secrets (the breaker's lines carry the
        last one).

        From closed, the circuit opens only when the run of failures comes from at least
        :data:`DISTINCT_CALLERS_TO_OPEN` different callers: a message or two failing again and
        again (poison) must not stop intake, an outage fails everyone. ``None``: a caller of
        its own.
        """
        if cause is not None:
            self.last_cause = cause
        self._failures += 1
        self._failing.add(id(caller) if caller is not None else -self._failures)
        if self.state is CircuitState.HALF_OPEN:
            self._probing = False
            self._reset_s = min(self._reset_s * 2, self.max_reset_s)
            self._open()
        elif (
            self.state is CircuitState.CLOSED
            and self._failures >= self.failure_threshold
            and len(self._failing) >= min(DISTINCT_CALLERS_TO_OPEN, self.failure_threshold)
        ):
            self._open()

    def _open(self) -> None:
        self._open_until = self._clock() + self._reset_s
        self.openings += 1
        self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is self.state:
            return
        # Closing needs no cause; opening and probing say what the provider last did.
        cause = {} if state is CircuitState.CLOSED else self.last_cause
        log.warning(
            "circuit " + state.value,
            previous=self.state.value,
            consecutive_failures=self._failures,
            retry_in_s=self._reset_s if state is CircuitState.OPEN else None,
            **cause,
        )
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, at_most_s: float) -> None:
        """Sleep until the state changes or ``at_most_s`` passes."""
        changed = self._changed
        try:
            async with asyncio.timeout(max(at_most_s, 0.001)):
                await changed.wait()
        except TimeoutError:
            pass
