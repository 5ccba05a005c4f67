"""Per-minute request and token buckets that answer like OpenAI's rate limiter.

Each bucket holds up to its per-minute limit and refills continuously (limit/60 per second). A
chat request is charged 1 request and ``prompt_tokens + max_tokens`` tokens at admission, and
the unused completion allowance is refunded once the reply is built, which is how OpenAI
meters TPM. The ``x-ratelimit-*`` headers report the buckets in OpenAI's format.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: What the headers report when no limit is configured: generous, fixed, never reached.
UNLIMITED_REQUESTS = 30_000
UNLIMITED_TOKENS = 150_000_000


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "120ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


class Bucket:
    """A token bucket holding up to ``per_minute`` units, refilled continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.level = self.capacity
        self.stamp = clock()

    def refill(self) -> float:
        """Bring the level up to now and return it."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.level

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now, inf if it never will be)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.refill()) / self.rate)

    def take(self, amount: float) -> None:
        """Charge ``amount`` (call after ``wait_for`` returned 0)."""
        self.refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        """Refund ``amount``, never above capacity."""
        self.level = min(self.capacity, self.refill() + amount)

    def until_full(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.refill()) / self.rate


class RateLimiter:
    """RPM and TPM buckets for chat completions; either may be absent (unlimited)."""

    def __init__(
        self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.requests = Bucket(rpm, clock) if rpm else None
        self.tokens = Bucket(tpm, clock) if tpm else None

    def admit(self, tokens: int) -> tuple[float, str]:
        """Charge one request and ``tokens``; when over budget, charge nothing and return
        ``(seconds to wait, which limit)``. ``(0.0, "")`` means admitted."""
        wait_requests = self.requests.wait_for(1) if self.requests else 0.0
        wait_tokens = self.tokens.wait_for(tokens) if self.tokens else 0.0
        if wait_requests > 0 or wait_tokens > 0:
            which = "tokens" if wait_tokens >= wait_requests else "requests"
            return max(wait_requests, wait_tokens), which
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(tokens)
        return 0.0, ""

    def refund(self, tokens: int) -> None:
        """Give back the unused part of a charge."""
        if self.tokens and tokens > 0:
            self.tokens.give(tokens)

    def headers(self) -> dict[str, str]:
        """The six ``x-ratelimit-*`` headers for a response sent now."""
        out: dict[str, str] = {}
        for kind, bucket, unlimited in (
            ("requests", self.requests, UNLIMITED_REQUESTS),
            ("tokens", self.tokens, UNLIMITED_TOKENS),
        ):
            if bucket is None:
                limit, remaining, reset = unlimited, unlimited, "0s"
            else:
                limit = int(bucket.capacity)
                remaining = max(0, math.floor(bucket.refill()))
                reset = format_duration(bucket.until_full())
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            out[f"x-ratelimit-reset-{kind}"] = reset
        return out
