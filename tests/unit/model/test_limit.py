"""limit: token buckets, adaptive concurrency and the limiter, on a clock the tests move.

No assertion here reads the wall clock: time is a ``FakeClock`` the test advances, and where
the code sleeps (``TokenBucket.take``) ``asyncio.sleep`` is replaced by one that advances the
fake clock by the requested delay and only yields to the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.model.limit import AdaptiveConcurrency, Limiter, TokenBucket

EPS = 1e-6


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@dataclass
class VirtualSleep:
    """Stands in for ``asyncio.sleep``: moves the clock instead of waiting."""

    clock: FakeClock
    slept: list[float] = field(default_factory=list)

    async def __call__(self, delay: float, result: object = None) -> object:
        self.slept.append(delay)
        self.clock.advance(max(delay, 0.0))
        await _real_sleep(0)
        return result


_real_sleep = asyncio.sleep


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def virtual_sleep(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualSleep]:
    fake = VirtualSleep(clock)
    monkeypatch.setattr(asyncio, "sleep", fake)
    yield fake


# ---- TokenBucket: property over operation sequences ---------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, 120, allow_nan=False)),
        st.tuples(st.just("take"), st.integers(0, 25_000)),
        st.tuples(st.just("give_back"), st.integers(-5_000, 5_000)),
        st.tuples(st.just("sync_down"), st.integers(-100, 25_000)),
    ),
    max_size=60,
)


@given(per_minute=st.integers(1, 12_000), script=ops)
def test_token_bucket_invariants(per_minute: int, script: list[tuple[str, float]]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute, clock=clock)
    cap, rate = bucket.capacity, bucket.rate
    assert bucket.level == cap  # starts full
    start = clock()
    granted = 0.0  # tokens handed out by successful try_take
    refunded = 0.0  # net of give_back: refunds minus extra charges
    for op, value in script:
        before = bucket.level
        if op == "advance":
            clock.advance(value)
            assert bucket.level >= before - EPS  # time only ever adds
        elif op == "take":
            wait = bucket.try_take(value)
            clamped = min(value, cap)
            after = bucket.level
            if wait == 0:
                granted += clamped
                assert after == pytest.approx(before - clamped, abs=EPS)
                # every grant is covered by the initial bucket, the refill and the refunds
                assert granted - refunded <= cap + rate * (clock() - start) + EPS * (1 + granted)
            else:
                assert wait > 0
                assert after == before  # a refused take takes nothing
                assert before < clamped
                assert wait == pytest.approx((clamped - before) / rate)
        elif op == "give_back":
            bucket.give_back(value)
            refunded += value
            assert bucket.level == pytest.approx(min(cap, before + value), abs=EPS)
        else:
            bucket.sync_down(value)
            assert bucket.level == pytest.approx(min(before, value))
            assert bucket.level <= before  # never raises the level
        assert bucket.level <= cap + EPS


@given(
    per_minute=st.integers(1, 12_000),
    spent=st.floats(0, 1, allow_nan=False),
    amount=st.integers(1, 50_000),
)
def test_waiting_the_returned_time_is_enough(per_minute: int, spent: float, amount: int) -> None:
    """The wait ``try_take`` returns is exact: after it the same request succeeds."""
    clock = FakeClock()
    bucket = TokenBucket(per_minute, clock=clock)
    bucket.try_take(bucket.capacity * spent)
    wait = bucket.try_take(amount)
    if wait == 0:
        assert bucket.capacity * (1 - spent) >= min(amount, bucket.capacity) - EPS
        return
    clock.advance(wait * 0.999)
    if wait > 1e-3:
        assert bucket.try_take(amount) > 0  # a little early is too early
    clock.advance(wait * 0.001 + 1e-9)
    assert bucket.try_take(amount) == 0


@given(per_minute=st.integers(1, 10_000), excess=st.integers(1, 10**9))
def test_amount_above_capacity_is_clamped(per_minute: int, excess: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute, clock=clock)
    bucket.try_take(1)
    wait = bucket.try_take(per_minute + excess)
    assert 0 < wait <= 60.0  # never longer than one full refill, never forever
    clock.advance(60.0)
    assert bucket.try_take(per_minute + excess) == 0  # a full bucket is enough
    assert bucket.level == pytest.approx(0.0, abs=EPS)


def test_token_bucket_examples(clock: FakeClock) -> None:
    bucket = TokenBucket(600, clock=clock)  # 10 tokens/s
    assert bucket.try_take(600) == 0
    assert bucket.try_take(1) == pytest.approx(0.1)
    clock.advance(3)
    assert bucket.level == pytest.approx(30)
    bucket.give_back(-50)  # the call used 50 more than charged
    assert bucket.level == pytest.approx(-20)
    assert bucket.try_take(10) == pytest.approx(3.0)
    clock.advance(1000)
    assert bucket.level == 600  # refill stops at capacity
    bucket.give_back(100)
    assert bucket.level == 600  # and so do refunds
    bucket.sync_down(1e9)
    assert bucket.level == 600
    bucket.sync_down(42)
    assert bucket.level == 42


@pytest.mark.parametrize("bad", [0, -1])
def test_token_bucket_rejects_non_positive_rate(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(bad)


# ---- TokenBucket.take (async) on virtual time ---------------------------------------------


async def test_take_waits_the_right_simulated_time(
    clock: FakeClock, virtual_sleep: VirtualSleep
) -> None:
    bucket = TokenBucket(600, clock=clock)  # 10 tokens/s
    start = clock()
    await bucket.take(600)
    assert clock() == start  # a full bucket: no wait
    assert virtual_sleep.slept == []
    await bucket.take(25)
    assert clock() - start == pytest.approx(2.5)
    await bucket.take(10_000)  # clamped: one full bucket
    assert clock() - start == pytest.approx(2.5 + 60.0)
    assert bucket.level == pytest.approx(0.0, abs=EPS)


async def test_take_is_fifo_a_large_request_is_not_starved(
    clock: FakeClock, virtual_sleep: VirtualSleep
) -> None:
    bucket = TokenBucket(60, clock=clock)  # 1 token/s
    await bucket.take(60)
    start = clock()
    served: list[tuple[str, float]] = []

    async def request(name: str, amount: int) -> None:
        await bucket.take(amount)
        served.append((name, clock() - start))

    big = asyncio.create_task(request("big", 50))
    await _real_sleep(0)  # big is queued first
    small = [asyncio.create_task(request(f"small{i}", 1)) for i in range(5)]
    await asyncio.gather(big, *small)
    assert [name for name, _ in served] == ["big", "small0", "small1", "small2", "small3", "small4"]
    assert [t for _, t in served] == pytest.approx([50, 51, 52, 53, 54, 55])


async def test_take_cancelled_while_waiting_takes_nothing(
    clock: FakeClock, virtual_sleep: VirtualSleep
) -> None:
    bucket = TokenBucket(60, clock=clock)
    await bucket.take(60)
    task = asyncio.create_task(bucket.take(30))
    await _real_sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    level = bucket.level
    assert level <= 30 + EPS  # whatever refilled while it waited, nothing was taken...
    await bucket.take(1)  # ...and the lock was released
    assert bucket.level == pytest.approx(level - 1)


# ---- AdaptiveConcurrency -------------------------------------------------------------------


@given(
    ceiling=st.integers(1, 8),
    tasks=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    overload_every=st.integers(0, 7),
)
def test_never_more_holders_than_the_limit(
    ceiling: int, tasks: int, seed: int, overload_every: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    peak = 0
    violations: list[tuple[int, int]] = []

    async def main() -> None:
        nonlocal peak
        conc = AdaptiveConcurrency(ceiling, clock=clock)

        async def worker(i: int) -> None:
            nonlocal peak
            await conc.acquire()
            try:
                # each admission happened with room under the limit at that moment
                if conc.in_use > conc.limit and not overload_every:
                    violations.append((conc.in_use, conc.limit))
                peak = max(peak, conc.in_use)
                for _ in range(rng.randint(0, 3)):
                    await _real_sleep(0)
                if overload_every and i % overload_every == 0:
                    clock.advance(rng.choice([0.0, 0.5, 1.0]))
                    conc.on_overload()
                else:
                    await conc.on_success()
            finally:
                await conc.release()

        async with asyncio.timeout(10):
            await asyncio.gather(*(worker(i) for i in range(tasks)))
        assert conc.in_use == 0

    asyncio.run(main())
    assert violations == []
    assert 1 <= peak <= ceiling


async def test_the_whole_limit_is_used() -> None:
    conc = AdaptiveConcurrency(3)
    gate = asyncio.Event()
    peak = 0

    async def worker() -> None:
        nonlocal peak
        await conc.acquire()
        peak = max(peak, conc.in_use)
        await gate.wait()
        await conc.release()

    tasks = [asyncio.create_task(worker()) for _ in range(10)]
    for _ in range(5):
        await _real_sleep(0)
    assert conc.in_use == 3
    gate.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert peak == 3
    assert conc.in_use == 0


async def test_a_cut_limit_admits_nobody_until_holders_drain(clock: FakeClock) -> None:
    conc = AdaptiveConcurrency(4, clock=clock)
    for _ in range(4):
        await conc.acquire()
    conc.on_overload()
    assert conc.limit == 2
    waiter = asyncio.create_task(conc.acquire())
    await conc.release()
    await conc.release()
    await _real_sleep(0)
    assert not waiter.done()  # 2 in use, limit 2: still full
    await conc.release()
    await asyncio.wait_for(waiter, 1)
    assert conc.in_use == 2


async def test_a_waiter_cancelled_after_its_wake_up_passes_it_on() -> None:
    """A release wakes one waiter; if that one is cancelled first, the next must still run."""
    conc = AdaptiveConcurrency(1)
    await conc.acquire()
    first = asyncio.create_task(conc.acquire())
    second = asyncio.create_task(conc.acquire())
    await _real_sleep(0)
    await conc.release()  # wakes first...
    first.cancel()  # ...which is cancelled before it runs
    async with asyncio.timeout(5):  # a deadlock, not a timing check
        await second
    assert conc.in_use == 1


@given(
    ceiling=st.integers(1, 4),
    tasks=st.integers(2, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_cancelled_waiters_never_strand_the_others(ceiling: int, tasks: int, seed: int) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        conc = AdaptiveConcurrency(ceiling)
        done = 0

        async def worker() -> None:
            nonlocal done
            await conc.acquire()
            try:
                for _ in range(rng.randint(0, 2)):
                    await _real_sleep(0)
            finally:
                await conc.release()
            done += 1

        running = [asyncio.create_task(worker()) for _ in range(tasks)]
        doomed = rng.sample(running, rng.randint(1, tasks - 1))
        for _ in range(rng.randint(0, 3)):
            await _real_sleep(0)
        for task in doomed:
            task.cancel()
        async with asyncio.timeout(5):  # a deadlock, not a timing check
            await asyncio.gather(*running, return_exceptions=True)
        assert conc.in_use == 0
        assert done >= tasks - len(doomed)

    asyncio.run(main())


def test_on_overload_halves_to_the_floor_once_per_second(clock: FakeClock) -> None:
    conc = AdaptiveConcurrency(16, floor=3, clock=clock)
    conc.on_overload()
    assert conc.limit == 8
    clock.advance(0.999)
    conc.on_overload()  # same burst
    assert conc.limit == 8
    clock.advance(0.001)
    conc.on_overload()
    assert conc.limit == 4
    clock.advance(1)
    conc.on_overload()
    assert conc.limit == 3  # not below the floor
    clock.advance(5)
    conc.on_overload()
    assert conc.limit == 3


async def test_on_success_grows_back_to_the_ceiling_and_stops() -> None:
    clock = FakeClock()
    conc = AdaptiveConcurrency(10, clock=clock)
    for _ in range(4):
        conc.on_overload()
        clock.advance(1)
    assert conc.limit == 1
    seen = [conc.limit]
    for _ in range(100):
        await conc.on_success()
        seen.append(conc.limit)
    assert seen == sorted(seen)
    assert seen[-1] == 10
    assert max(b - a for a, b in itertools.pairwise(seen)) == 1


concurrency_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.3, 0.999, 1.0, 2.5])),
        st.tuples(st.just("overload"), st.just(0.0)),
        st.tuples(st.just("success"), st.integers(1, 20)),
    ),
    max_size=50,
)


@given(
    ceiling=st.integers(1, 32),
    floor_frac=st.floats(0, 1),
    script=concurrency_ops,
)
def test_aimd_properties(ceiling: int, floor_frac: float, script: list[tuple[str, float]]) -> None:
    floor = max(1, round(ceiling * floor_frac))
    clock = FakeClock()

    async def main() -> None:
        conc = AdaptiveConcurrency(ceiling, floor=floor, clock=clock)
        assert conc.limit == ceiling
        last_cut: float | None = None
        for op, value in script:
            old = conc.limit
            if op == "advance":
                clock.advance(value)
            elif op == "overload":
                conc.on_overload()
                allowed = last_cut is None or clock() - last_cut >= 1.0
                if allowed:
                    last_cut = clock()
                    # the float limit was in [old, old + 1): half of it, floored, >= floor
                    assert max(floor, old // 2) <= conc.limit <= max(floor, (old + 1) // 2)
                    if old >= 2 * floor:
                        assert conc.limit < old
                else:
                    assert conc.limit == old  # at most one cut per clock-second
            else:
                for _ in range(int(value)):
                    before = conc.limit
                    await conc.on_success()
                    assert before <= conc.limit <= before + 1
            assert floor <= conc.limit <= ceiling
        for _ in range(2 * ceiling * ceiling):
            await conc.on_success()
        assert conc.limit == ceiling
        await conc.on_success()
        assert conc.limit == ceiling

    asyncio.run(main())


@pytest.mark.parametrize(("ceiling", "floor"), [(0, 1), (4, 0), (4, 5)])
def test_adaptive_concurrency_rejects_bad_bounds(ceiling: int, floor: int) -> None:
    with pytest.raises(ValueError, match="floor"):
        AdaptiveConcurrency(ceiling, floor=floor)


# ---- Limiter -------------------------------------------------------------------------------


async def test_slot_charges_the_estimate_and_settle_corrects_it(clock: FakeClock) -> None:
    limiter = Limiter(4, rpm=60, tpm=10_000, clock=clock)
    assert limiter.tpm is not None
    assert limiter.rpm is not None
    async with limiter.slot(3_000) as permit:
        assert limiter.concurrency.in_use == 1
        assert limiter.tpm.level == 7_000
        assert limiter.rpm.level == 59
        permit.settle(1_200)
        assert limiter.tpm.level == 8_800  # charged what it really used
        permit.settle(0)  # settles once
        assert limiter.tpm.level == 8_800
    assert limiter.concurrency.in_use == 0
    async with limiter.slot(1_000) as permit:
        permit.settle(2_500)  # used more than estimated: the difference is charged
    assert limiter.tpm.level == pytest.approx(8_800 - 2_500)


async def test_estimate_above_tpm_capacity_is_corrected_to_actual(
    clock: FakeClock, virtual_sleep: VirtualSleep
) -> None:
    """The bucket charges a clamped estimate; the refund must be computed from that charge."""
    limiter = Limiter(4, tpm=1_000, clock=clock)
    assert limiter.tpm is not None
    async with limiter.slot(5_000) as permit:
        assert limiter.tpm.level == 0  # clamped to one full bucket
        permit.settle(4_000)
    # net charge == actual use: 1000 - 4000
    assert limiter.tpm.level == pytest.approx(-3_000)


async def test_slot_releases_concurrency_when_the_call_fails(clock: FakeClock) -> None:
    limiter = Limiter(1, clock=clock)
    with pytest.raises(RuntimeError):
        async with limiter.slot(10):
            raise RuntimeError("boom")
    assert limiter.concurrency.in_use == 0
    async with asyncio.timeout(1), limiter.slot(10):
        pass


async def test_slot_without_buckets_only_limits_concurrency(clock: FakeClock) -> None:
    limiter = Limiter(2, clock=clock)
    assert limiter.rpm is None
    assert limiter.tpm is None
    async with limiter.slot(10**9) as permit:
        permit.settle(5)
        assert permit.settled


def test_limiter_clock_reaches_the_concurrency_limit(clock: FakeClock) -> None:
    """Two 429 bursts two (fake) seconds apart are two cuts."""
    limiter = Limiter(8, clock=clock)
    limiter.concurrency.on_overload()
    clock.advance(2)
    limiter.concurrency.on_overload()
    assert limiter.concurrency.limit == 2


def test_limiter_floor_is_clamped_to_concurrency() -> None:
    limiter = Limiter(2, floor=5)
    assert limiter.concurrency.floor == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-tokens": "1234", "x-ratelimit-remaining-requests": "7"},
        httpx2.Headers(
            {"X-RateLimit-Remaining-Tokens": "1234", "X-RateLimit-Remaining-Requests": "7"}
        ),
    ],
    ids=["dict", "httpx-headers"],
)
def test_observe_headers_lowers_the_buckets(clock: FakeClock, headers: object) -> None:
    limiter = Limiter(4, rpm=100, tpm=10_000, clock=clock)
    assert limiter.tpm is not None
    assert limiter.rpm is not None
    limiter.observe_headers(headers)  # type: ignore[arg-type]
    assert limiter.tpm.level == 1234
    assert limiter.rpm.level == 7


def test_observe_headers_never_raises_a_bucket(clock: FakeClock) -> None:
    limiter = Limiter(4, tpm=10_000, clock=clock)
    assert limiter.tpm is not None
    limiter.tpm.try_take(9_000)
    limiter.observe_headers({"x-ratelimit-remaining-tokens": "5000"})
    assert limiter.tpm.level == 1_000


@pytest.mark.parametrize(
    "value", ["", "abc", "12ms", "1,000", "0x10", "nan", "inf", "-inf", "-1e400", "NaN"]
)
def test_observe_headers_ignores_garbage(clock: FakeClock, value: str) -> None:
    limiter = Limiter(4, rpm=100, tpm=10_000, clock=clock)
    assert limiter.tpm is not None
    assert limiter.rpm is not None
    limiter.observe_headers(
        {"x-ratelimit-remaining-tokens": value, "x-ratelimit-remaining-requests": value}
    )
    assert limiter.tpm.level == 10_000
    assert limiter.rpm.level == 100
    assert math.isfinite(limiter.tpm.try_take(10))  # and a request can still be served


def test_observe_headers_without_buckets_or_headers_is_harmless(clock: FakeClock) -> None:
    Limiter(4, clock=clock).observe_headers({"x-ratelimit-remaining-tokens": "5"})
    limiter = Limiter(4, tpm=100, clock=clock)
    limiter.observe_headers({})
    assert limiter.tpm is not None
    assert limiter.tpm.level == 100
