"""Retries that cost nothing until a call fails.

A tenacity loop costs tens of microseconds per call even when the first attempt succeeds
(the retrying object, its call state, the iteration protocol), and on the hot path nearly
every call does succeed. :func:`retried` makes the first attempt plainly and builds the
tenacity loop only after a retriable failure, replaying that failure as the loop's first
attempt, so the waits, the ``before_sleep`` logs and the attempt numbers are what the loop
alone would have given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying

__all__ = ["retried"]

T = TypeVar("T")


async def retried(
    attempt: Callable[[], Awaitable[T]],
    retrying: Callable[[], AsyncRetrying],
    retriable: Callable[[BaseException], bool],
) -> T:
    """``attempt()``; after a failure ``retriable`` accepts, again under ``retrying()``.

    ``retrying`` builds the tenacity loop (its ``retry`` should accept what ``retriable``
    does); a failure ``retriable`` refuses is raised at once.
    """
    try:
        return await attempt()
    except Exception as exc:
        if not retriable(exc):
            raise
        failed: Exception | None = exc
    async for state in retrying():
        with state:
            if failed is not None:  # the first attempt, replayed
                first, failed = failed, None
                raise first
            return await attempt()
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
