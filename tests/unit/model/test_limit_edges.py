"""Limiter edges that mutation testing showed unpinned: messages, the default floor, headers."""

from __future__ import annotations

import pytest

from consumer.model.limit import AdaptiveConcurrency, Limiter, TokenBucket


def test_bad_bounds_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^per_minute must be positive$"):
        TokenBucket(0)
    with pytest.raises(ValueError, match=r"^need 1 <= floor <= ceiling$"):
        AdaptiveConcurrency(2, floor=3)


def test_the_default_floor_lets_concurrency_fall_to_one() -> None:
    now = [0.0]
    limiter = Limiter(8, clock=lambda: now[0])
    for _ in range(5):
        limiter.concurrency.on_overload()
        now[0] += 1.0
    assert limiter.concurrency.limit == 1
    assert limiter.concurrency.floor == 1


def test_an_unreadable_requests_header_does_not_stop_the_tokens_header() -> None:
    now = [0.0]
    limiter = Limiter(4, rpm=100, tpm=10_000, clock=lambda: now[0])
    limiter.observe_headers(
        {"x-ratelimit-remaining-requests": "soon", "x-ratelimit-remaining-tokens": "5"}
    )
    assert limiter.rpm is not None and limiter.rpm.level == 100
    assert limiter.tpm is not None and limiter.tpm.level == 5
