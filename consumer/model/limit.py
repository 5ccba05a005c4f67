"""Limit stage: how many model calls run at once, and how many requests and tokens per minute.

Three gates, taken in this order by :meth:`Limiter.slot`:

1. an adaptive concurrency limit (additive increase on success, multiplicative decrease on a
   429) between a floor and ``MODSTREAM_CONCURRENCY``;
2. a requests-per-minute bucket (optional);
3. a tokens-per-minute bucket (optional), charged with the estimate (prompt + ``max_tokens``)
   and corrected by the actual usage once the reply is in, and re-synced down from the
   provider's ``x-ratelimit-remaining-tokens`` header.

aiolimiter was the first candidate for the buckets; it cannot refund unused tokens or re-sync
from headers, which is most of the saving, so the bucket here is a small one of our own.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

Clock = Callable[[], float]


class TokenBucket:
    """A per-minute budget refilled continuously; may go negative after a correction.

    A request larger than the whole bucket is clamped to the bucket's size, so it waits for a
    full bucket instead of forever.
    """

    def __init__(self, per_minute: int, *, clock: Clock = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()
        # FIFO: asyncio.Lock wakes waiters in order, so a large request is not starved.
        self._lock = asyncio.Lock()

    @property
    def level(self) -> float:
        """Tokens available now (negative after an under-estimate was corrected)."""
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self, amount: float) -> float:
        """Take ``amount`` if available and return 0, else return the seconds to wait."""
        amount = min(amount, self.capacity)
        self._refill()
        if self._level >= amount:
            self._level -= amount
            return 0.0
        return (amount - self._level) / self.rate

    async def take(self, amount: float) -> None:
        """Wait until ``amount`` is available, then take it."""
        async with self._lock:
            # Time, not an event, refills the bucket: sleeping until it has enough is right.
            while (wait := self.try_take(amount)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)

    def give_back(self, amount: float) -> None:
        """Refund (positive) or charge more (negative) after the fact."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)

    def sync_down(self, remaining: float) -> None:
        """The provider says only ``remaining`` is left: never believe we have more."""
        self._refill()
        self._level = min(self._level, remaining)


class AdaptiveConcurrency:
    """A semaphore whose size moves with the provider: AIMD between ``floor`` and ``ceiling``."""

    def __init__(self, ceiling: int, *, floor: int = 1, clock: Clock = time.monotonic) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError("need 1 <= floor <= ceiling")
        self.floor = floor
        self.ceiling = ceiling
        self._limit = float(ceiling)
        self._in_use = 0
        self._cond = asyncio.Condition()
        self._clock = clock
        self._last_decrease = -1e9

    @property
    def limit(self) -> int:
        """Calls allowed at once right now."""
        return int(self._limit)

    @property
    def in_use(self) -> int:
        """Calls running now."""
        return self._in_use

    async def acquire(self) -> None:
        """Wait for a free slot under the current limit."""
        async with self._cond:
            try:
                await self._cond.wait_for(lambda: self._in_use < int(self._limit))
            except asyncio.CancelledError:
                # Cancelled after release() woke us (Python < 3.13 drops that wake-up): pass
                # it on, or a free slot strands the other waiters.
                self._cond.notify(1)
                raise
            self._in_use += 1

    async def release(self) -> None:
        """Free a slot."""
        async with self._cond:
            self._in_use -= 1
            self._cond.notify(1)

    async def on_success(self) -> None:
        """Additive increase: about +1 per full window of successes."""
        if self._limit < self.ceiling:
            self._limit = min(float(self.ceiling), self._limit + 1.0 / self._limit)
            async with self._cond:
                self._cond.notify_all()

    def on_overload(self) -> None:
        """Multiplicative decrease on a 429, at most once per second (one burst, one cut)."""
        now = self._clock()
        if now - self._last_decrease >= 1.0:
            self._limit = max(float(self.floor), self._limit / 2)
            self._last_decrease = now


@dataclass
class Permit:
    """Held while one model call runs; settles the token estimate when the call is done."""

    limiter: Limiter
    estimated_tokens: int
    settled: bool = field(default=False)

    def settle(self, actual_tokens: int) -> None:
        """Correct the token budget by what the call really used (once)."""
        if not self.settled and self.limiter.tpm is not None:
            self.limiter.tpm.give_back(self.estimated_tokens - actual_tokens)
        self.settled = True


class Limiter:
    """Concurrency, requests/min and tokens/min, taken together for each model call."""

    def __init__(
        self,
        concurrency: int,
        *,
        floor: int = 1,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.concurrency = AdaptiveConcurrency(
            concurrency, floor=min(floor, concurrency), clock=clock
        )
        self.rpm = TokenBucket(rpm, clock=clock) if rpm else None
        self.tpm = TokenBucket(tpm, clock=clock) if tpm else None

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[Permit]:
        """One model call's worth of concurrency, request and token budget."""
        await self.concurrency.acquire()
        try:
            if self.rpm is not None:
                await self.rpm.take(1)
            if self.tpm is not None:
                await self.tpm.take(estimated_tokens)
                # The bucket clamps a request above its size: settle against what it took.
                estimated_tokens = min(estimated_tokens, int(self.tpm.capacity))
            yield Permit(self, estimated_tokens)
        finally:
            await self.concurrency.release()

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Re-sync the buckets from the provider's ``x-ratelimit-remaining-*`` headers."""
        for bucket, name in ((self.rpm, "requests"), (self.tpm, "tokens")):
            value = headers.get(f"x-ratelimit-remaining-{name}")
            if bucket is not None and value is not None:
                try:
                    remaining = float(value)
                except ValueError:
                    continue
                if math.isfinite(remaining):  # "-inf" would stall the bucket forever
                    bucket.sync_down(remaining)
