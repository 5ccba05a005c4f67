"""The fake's RPM/TPM buckets, their headers, and the fault dice (with a fake clock)."""

from __future__ import annotations

import math

import pytest

from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.faults import Dice, Outcome
from consumer.testing.fake_openai.ratelimit import (
    UNLIMITED_REQUESTS,
    Bucket,
    RateLimiter,
    format_duration,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.12, "120ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"),
     (61.25, "1m1.25s"), (3723, "1h2m3s")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_bucket_refills_continuously_and_caps_at_capacity() -> None:
    clock = Clock()
    bucket = Bucket(60, clock)  # one per second
    bucket.take(60)
    assert bucket.wait_for(1) == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.wait_for(1) == pytest.approx(0.5)
    clock.now += 1000
    assert bucket.refill() == 60
    assert bucket.wait_for(61) == math.inf


def test_tokens_are_charged_at_admission_and_the_unused_part_refunded() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=None, tpm=6000, clock=clock)  # 100 tokens per second
    assert limiter.admit(5000) == (0.0, "")
    wait, which = limiter.admit(2000)
    assert which == "tokens"
    assert wait == pytest.approx(10.0)  # 1000 short at 100/s
    limiter.refund(4000)  # the reply used 1000 of its 5000
    assert limiter.admit(2000) == (0.0, "")
    headers = limiter.headers()
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert headers["x-ratelimit-remaining-tokens"] == "3000"
    assert headers["x-ratelimit-reset-tokens"] == "30s"
    assert headers["x-ratelimit-limit-requests"] == str(UNLIMITED_REQUESTS)


def test_a_refused_request_charges_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=2, tpm=1000, clock=clock)
    assert limiter.admit(100) == (0.0, "")
    assert limiter.admit(100) == (0.0, "")
    wait, which = limiter.admit(100)
    assert which == "requests"
    assert wait == pytest.approx(30.0)
    assert limiter.headers()["x-ratelimit-remaining-tokens"] == "800"
    assert limiter.headers()["x-ratelimit-reset-requests"] == "1m0s"


def test_retry_after_modes() -> None:
    dice = Dice(seed=1)
    assert dice.retry_after(1.0, "seconds") == {"retry-after": "1"}
    assert dice.retry_after(0.25, "ms") == {"retry-after-ms": "250"}
    assert dice.retry_after(0.05, "both") == {"retry-after": "0.05", "retry-after-ms": "50"}
    mixed = [dice.retry_after(2.0, "mixed") for _ in range(4)]
    assert mixed == [{"retry-after": "2"}, {"retry-after-ms": "2000"}] * 2


def test_fault_shares_follow_the_probabilities_and_a_seed_repeats_them() -> None:
    config = FakeConfig(p_429=0.2, p_drop=0.1, p_refusal=0.3)
    dice = Dice(seed=7)
    draws = [dice.roll(config) for _ in range(5000)]
    again = Dice(seed=7)
    assert [again.roll(config) for _ in range(5000)] == draws
    shares = {o: draws.count(o) / len(draws) for o in set(draws)}
    assert shares[Outcome.RATE_LIMITED] == pytest.approx(0.2, abs=0.03)
    assert shares[Outcome.DROP] == pytest.approx(0.1, abs=0.03)
    assert shares[Outcome.REFUSAL] == pytest.approx(0.3, abs=0.03)
    assert shares[Outcome.OK] == pytest.approx(0.4, abs=0.03)


def test_latency_distributions() -> None:
    dice = Dice(seed=3)
    assert dice.latency(FakeConfig()) == 0.0
    assert dice.latency(FakeConfig(latency_ms=20)) == pytest.approx(0.02)
    uniform = [dice.latency(FakeConfig(latency_ms=10, latency_dist="uniform")) for _ in range(500)]
    assert all(0 <= x <= 0.02 for x in uniform)
    expo = [
        dice.latency(FakeConfig(latency_ms=10, latency_dist="exponential")) for _ in range(5000)
    ]
    assert sum(expo) / len(expo) == pytest.approx(0.01, rel=0.1)
