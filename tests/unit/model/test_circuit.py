"""The circuit breaker alone, on an injected clock: probes, intake, backoff, reset."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.model.circuit import CircuitBreaker, CircuitState
from tests.unit.virtual_time import VirtualTimeLoop, on_virtual_time

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


# ---- Probe timing on a virtual clock --------------------------------------------------------
#
# The breaker's waits are asyncio timeouts, so its timing is checked on an event loop whose
# clock jumps to the next timer (tests.unit.virtual_time); the breaker reads that same clock.


def service_breaker(clock: Callable[[], float]) -> CircuitBreaker:
    """The breaker as ``app.py`` builds it, with the settings' documented defaults."""
    return CircuitBreaker(failure_threshold=10, reset_s=5.0, clock=clock)


def open_it(breaker: CircuitBreaker) -> None:
    for caller in range(breaker.failure_threshold):
        breaker.failure(caller)
    assert breaker.state is CircuitState.OPEN


def test_the_probe_goes_out_when_the_wait_is_over_even_for_a_late_caller() -> None:
    async def play(loop: VirtualTimeLoop) -> None:
        breaker = CircuitBreaker(failure_threshold=3, reset_s=5.0, clock=loop.time)
        open_it(breaker)
        opened_at = loop.time()
        assert await breaker.admit() is True
        assert loop.time() - opened_at == pytest.approx(5.0, abs=1e-6)
        breaker.failure()  # the probe failed: 10 s now
        reopened_at = loop.time()
        await asyncio.sleep(9.5)  # a caller that comes in half a second before the probe
        assert await breaker.admit() is True
        assert loop.time() - reopened_at == pytest.approx(10.0, abs=1e-6)

    on_virtual_time(play)


def test_the_service_breaker_doubles_its_wait_up_to_a_minute() -> None:
    """Settings: ``circuit_reset_s`` is the first wait before a probe; it doubles up to 60 s."""

    async def play(loop: VirtualTimeLoop) -> None:
        breaker = service_breaker(loop.time)
        open_it(breaker)
        waits = []
        for _ in range(7):
            start = loop.time()
            assert await breaker.admit() is True
            waits.append(round(loop.time() - start, 6))
            breaker.failure()
        assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
        assert breaker.openings == 8

    on_virtual_time(play)


def test_only_deferred_callers_probe_the_grace_after_the_probe_fell_due() -> None:
    """With nothing fresh to probe with, a caller whose probe failed probes again once the
    grace is over (2 s in the service), early or late as it arrives, never sooner."""

    async def play(loop: VirtualTimeLoop) -> None:
        breaker = service_breaker(loop.time)
        open_it(breaker)
        due = loop.time() + 5.0
        assert await breaker.admit(defer=True) is True
        assert loop.time() - due == pytest.approx(2.0, abs=1e-6)
        breaker.failure()  # 10 s now
        due = loop.time() + 10.0
        await asyncio.sleep(10.0 + 1.5)  # arrives half a second before the grace is over
        assert await breaker.admit(defer=True) is True
        assert loop.time() - due == pytest.approx(2.0, abs=1e-6)

    on_virtual_time(play)


def test_a_waiting_caller_goes_as_soon_as_the_circuit_closes() -> None:
    async def play(loop: VirtualTimeLoop) -> None:
        breaker = CircuitBreaker(failure_threshold=3, reset_s=5.0, clock=loop.time)
        open_it(breaker)
        waiter = asyncio.create_task(breaker.admit())
        await asyncio.sleep(1.0)
        breaker.success()  # e.g. a witness call got an answer
        assert await waiter is False
        assert loop.time() == pytest.approx(1.0, abs=1e-3)  # not at the end of the wait

    on_virtual_time(play)


def test_callers_waiting_behind_a_running_probe_sleep_instead_of_polling() -> None:
    """A probe can take a whole request timeout; the messages waiting behind it must not spin
    on the event loop meanwhile (they wake when it ends, or every reset interval)."""

    async def play(loop: VirtualTimeLoop) -> None:
        breaker = CircuitBreaker(failure_threshold=3, reset_s=5.0, clock=loop.time)
        open_it(breaker)
        assert await breaker.admit() is True  # the probe, now calling the provider
        waiting = [asyncio.create_task(breaker.admit()) for _ in range(2)]
        waiting.append(asyncio.create_task(breaker.admit(defer=True)))
        wakeups = loop.wakeups
        await asyncio.sleep(30.0)  # a slow probe call
        assert loop.wakeups - wakeups < 30
        assert not any(task.done() for task in waiting)
        breaker.success()
        assert await asyncio.gather(*waiting) == [False, False, False]

    on_virtual_time(play)


# ---- Counting ---------------------------------------------------------------------------


def test_the_breaker_built_without_settings_has_the_documented_defaults() -> None:
    """A Classifier without a breaker makes ``CircuitBreaker()``: it must behave as the
    README's defaults (10 failures in a row, 5 s first wait)."""
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    for caller in range(9):
        breaker.failure(caller)
    assert breaker.is_closed
    breaker.failure(9)
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_in_s() == 5.0


def test_exactly_the_threshold_of_failures_opens_the_circuit() -> None:
    breaker = CircuitBreaker(failure_threshold=4, clock=Clock())
    for caller in range(3):
        breaker.failure(caller)
    assert breaker.is_closed
    breaker.failure(3)
    assert breaker.state is CircuitState.OPEN


def test_after_a_success_it_takes_the_whole_threshold_again() -> None:
    breaker = CircuitBreaker(failure_threshold=4, clock=Clock())
    for caller in range(3):
        breaker.failure(caller)
    breaker.success()
    for caller in range(3, 6):
        breaker.failure(caller)
    assert breaker.is_closed
    breaker.failure(6)
    assert breaker.state is CircuitState.OPEN


def test_successes_and_openings_count_every_one() -> None:
    """The poison rule reads both counters (a success since a message's last failure; an
    opening during its retries)."""
    breaker, _ = opened(reset_s=5.0)
    assert (breaker.successes, breaker.openings) == (0, 1)
    for _ in range(3):
        breaker.success()
    assert (breaker.successes, breaker.openings) == (3, 1)
    for _ in range(3):
        breaker.failure()
    assert breaker.openings == 2


def test_retry_in_s_is_zero_unless_open() -> None:
    breaker, clock = opened(reset_s=5.0)
    assert breaker.retry_in_s() == pytest.approx(5.0)
    clock.now += 5

    async def probe() -> None:
        assert await breaker.admit() is True

    asyncio.run(probe())
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.retry_in_s() == 0.0
    breaker.success()
    assert breaker.retry_in_s() == 0.0


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_deferred_caller_yields_to_every_eager_one_even_after_the_grace() -> None:
    """Two healthy messages and one whose probe failed wait; long past the grace, the
    healthy ones still probe first, one after the other."""
    breaker, clock = opened(reset_s=5.0)
    deferred = asyncio.create_task(breaker.admit(defer=True))  # first in line
    await settle()
    first, second = asyncio.create_task(breaker.admit()), asyncio.create_task(breaker.admit())
    await settle()
    clock.now += 5 + breaker.defer_grace_s + 1
    breaker.end_probe()  # wake them on the injected clock
    await settle()
    assert first.done() and first.result() is True
    assert not second.done() and not deferred.done()
    breaker.end_probe()  # the first probe got a 429: no verdict, let another try
    await settle()
    assert second.done() and second.result() is True
    assert not deferred.done()
    breaker.success()
    assert await asyncio.wait_for(deferred, 1) is False


def test_every_state_change_is_reported_and_logged() -> None:
    """``on_change`` feeds the circuit-state gauge; the WARNING lines are what an operator
    reads during an outage (the e2e outage test looks for them by name)."""
    seen: list[CircuitState] = []
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_s=5.0, clock=clock, on_change=seen.append)

    async def play() -> None:
        for _ in range(3):
            breaker.failure()
        clock.now += 5
        assert await breaker.admit()
        breaker.failure()
        clock.now += 10
        assert await breaker.admit()
        breaker.success()

    with capture_logs() as logs:
        asyncio.run(play())
    assert seen == ["open", "half_open", "open", "half_open", "closed"]
    lines = [
        (e["event"], e["log_level"], e["previous"], e["retry_in_s"])
        for e in logs
        if e["event"].startswith("circuit ")
    ]
    assert lines == [
        ("circuit open", "warning", "closed", 5.0),
        ("circuit half_open", "warning", "open", None),
        ("circuit open", "warning", "half_open", 10.0),
        ("circuit half_open", "warning", "open", None),
        ("circuit closed", "warning", "half_open", None),
    ]
    assert [e["consecutive_failures"] for e in logs if e["event"] == "circuit open"] == [3, 4]


def test_open_and_probe_lines_carry_the_last_failures_cause_and_closed_none() -> None:
    """An outage says why and where: the cause the caller gave with its last failure."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_s=5.0, clock=clock)
    refused = {"cause": "connection refused", "status": None, "base_url": "http://h:1/v1"}
    unavailable = {"cause": "status 503", "status": 503, "base_url": "http://h:1/v1"}

    async def play() -> None:
        for _ in range(3):
            breaker.failure(cause=refused)
        clock.now += 5
        assert await breaker.admit()
        breaker.failure(cause=unavailable)  # the probe fails otherwise
        clock.now += 10
        assert await breaker.admit()
        breaker.success()

    with capture_logs() as logs:
        asyncio.run(play())
    lines = [
        (e["event"], e.get("cause"), e.get("status"), e.get("base_url"))
        for e in logs
        if e["event"].startswith("circuit ")
    ]
    assert lines == [
        ("circuit open", "connection refused", None, "http://h:1/v1"),
        ("circuit half_open", "connection refused", None, "http://h:1/v1"),
        ("circuit open", "status 503", 503, "http://h:1/v1"),
        ("circuit half_open", "status 503", 503, "http://h:1/v1"),
        ("circuit closed", None, None, None),
    ]
