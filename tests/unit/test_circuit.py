"""The circuit breaker alone, on an injected clock: probes, intake, backoff, reset."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.circuit import CircuitBreaker, CircuitState

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened(
    threshold: int = 3, reset_s: float = 5.0, max_reset_s: float = 60.0
) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=threshold, reset_s=reset_s, max_reset_s=max_reset_s, clock=clock
    )
    for _ in range(threshold):
        breaker.failure()
    assert breaker.state is CircuitState.OPEN
    return breaker, clock


def test_closed_admits_intake_and_opens_after_threshold_failures_in_a_row() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=Clock())
    assert breaker.admits_intake()
    breaker.failure()
    breaker.failure()
    breaker.success()  # not in a row
    breaker.failure()
    breaker.failure()
    assert breaker.is_closed and breaker.admits_intake()
    breaker.failure()
    assert not breaker.is_closed
    assert not breaker.admits_intake()
    assert breaker.openings == 1


def test_open_admits_intake_once_the_wait_is_over_with_nothing_in_flight() -> None:
    """The probe needs no in-flight call: intake opens when the reset time has passed."""
    breaker, clock = opened(reset_s=5.0)
    clock.now += 4.9
    assert not breaker.admits_intake()
    assert breaker.retry_in_s() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.admits_intake()
    assert breaker.state is CircuitState.OPEN  # asking changes nothing


async def test_one_probe_at_a_time_and_intake_waits_while_it_runs() -> None:
    breaker, clock = opened(reset_s=5.0)
    clock.now += 5
    assert await breaker.admit() is True  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.admits_intake()  # a probe is running: fetch nothing more
    waiter = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    breaker.end_probe()  # e.g. a 429: no verdict on the provider
    assert breaker.admits_intake()  # half-open, nobody probing: let one in
    assert await asyncio.wait_for(waiter, 1) is True  # the next probe
    breaker.success()
    assert breaker.is_closed and breaker.admits_intake()


async def test_a_failed_probe_doubles_the_wait_up_to_the_maximum() -> None:
    breaker, clock = opened(reset_s=5.0, max_reset_s=30.0)
    waits = []
    for _ in range(5):
        start = clock.now
        while not breaker.admits_intake():
            clock.now += 0.5
        waits.append(clock.now - start)
        assert await breaker.admit() is True
        breaker.failure()
        assert breaker.state is CircuitState.OPEN
    assert waits == [5.0, 10.0, 20.0, 30.0, 30.0]


async def test_a_successful_probe_closes_and_resets_the_wait() -> None:
    breaker, clock = opened(reset_s=5.0)
    clock.now += 5
    assert await breaker.admit()
    breaker.failure()  # 10 s now
    clock.now += 10
    assert await breaker.admit()
    breaker.success()
    assert breaker.is_closed
    for _ in range(3):
        breaker.failure()
    assert breaker.retry_in_s() == pytest.approx(5.0)  # back to the base wait


@given(
    events=st.lists(st.sampled_from(["fail", "ok", "tick", "probe_fail", "probe_ok"]), max_size=60)
)
def test_intake_is_never_paused_forever(events: list[str]) -> None:
    """Whatever happened, with nothing in flight, time alone brings intake back."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_s=1.0, max_reset_s=8.0, clock=clock)

    async def play() -> None:
        for name in events:
            if name == "fail":
                breaker.failure()
            elif name == "ok":
                breaker.success()
            elif name == "tick":
                clock.now += 1.0
            elif breaker.admits_intake():
                probe = await breaker.admit()
                if name == "probe_fail":
                    breaker.failure()
                else:
                    breaker.success()
                if probe and breaker.state is CircuitState.HALF_OPEN:
                    breaker.end_probe()
        clock.now += 8.0  # the longest wait
        assert breaker.admits_intake()
        assert breaker.successes >= events.count("ok")

    asyncio.run(play())


async def test_a_caller_whose_probe_failed_lets_another_probe_first() -> None:
    """A poison message cannot hold the circuit open by taking every probe."""
    breaker, clock = opened(reset_s=5.0)
    deferred = asyncio.create_task(breaker.admit(defer=True))  # first in line...
    await asyncio.sleep(0.01)
    eager = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.01)
    clock.now += 5
    breaker.end_probe()  # wakes the waiters (the wait is over on the injected clock)
    assert await asyncio.wait_for(eager, 1) is True  # ... yet the eager one probes
    assert not deferred.done()
    breaker.success()
    assert await asyncio.wait_for(deferred, 1) is False  # closed: it simply goes


async def test_a_deferred_caller_probes_when_nobody_else_waits() -> None:
    breaker, clock = opened(reset_s=5.0)
    clock.now += 5 + breaker.defer_grace_s
    assert await asyncio.wait_for(breaker.admit(defer=True), 1) is True


async def test_deferred_callers_wait_a_grace_for_a_fresh_message_to_probe() -> None:
    """Two poison messages taking turns cannot hold every probe: while only they wait, the
    probe is held back for the grace, intake admits (a fresh message comes in), and the
    fresh one probes; without any, a deferred one probes once the grace is over."""
    breaker, clock = opened(reset_s=5.0)
    first = asyncio.create_task(breaker.admit(defer=True))
    second = asyncio.create_task(breaker.admit(defer=True))
    clock.now += 5  # the probe is due, but only deferred callers wait
    breaker.end_probe()  # wake them on the injected clock
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    assert breaker.admits_intake()  # so the pipeline fetches a fresh message
    fresh = asyncio.create_task(breaker.admit())
    assert await asyncio.wait_for(fresh, 1) is True
    breaker.failure()  # the fresh one failed too: an outage after all
    clock.now += breaker.retry_in_s() + breaker.defer_grace_s
    breaker.end_probe()
    done, _ = await asyncio.wait([first, second], timeout=1, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and done.pop().result() is True  # one of them probes now
    for task in (first, second):
        task.cancel()


def test_one_or_two_callers_failing_again_and_again_never_open_the_circuit() -> None:
    """Poison (a message or two failing in a row) is not an outage: three callers it takes."""
    breaker = CircuitBreaker(failure_threshold=3)
    a, b, c = object(), object(), object()
    for _ in range(50):
        breaker.failure(a)
        breaker.failure(b)
    assert breaker.is_closed
    breaker.failure(c)
    assert breaker.state is CircuitState.OPEN


def test_a_success_starts_the_count_of_callers_again() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    a, b, c = object(), object(), object()
    breaker.failure(a)
    breaker.failure(b)
    breaker.success()
    breaker.failure(c)
    breaker.failure(c)
    breaker.failure(c)
    assert breaker.is_closed
