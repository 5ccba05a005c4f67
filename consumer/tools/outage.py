"""When a replay gives up on the model: unreachable, with nothing answered, for too long.

The service waits out an outage (the circuit stops intake, lag grows, an alert fires); a replay
is a batch job someone is waiting for, so it stops instead, once no call has succeeded for
``--max-outage`` seconds since one failed as unreachable (5xx, timeout, refused connection).
A pure class: failures and the breaker's count of successes in, a decision out; the clock is
given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from consumer.errors import ModstreamError, ProviderUnavailable

__all__ = ["OutageWatch"]


class OutageWatch:
    """How long the model has failed as unreachable with no success since."""

    def __init__(self, limit_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        #: The last unreachable error of the current run of failures.
        self.last_error: ModstreamError | None = None
        self._since: float | None = None
        self._successes = 0

    def failed(self, error: ModstreamError, successes: int) -> None:
        """A call failed; ``successes``: the breaker's count of answers so far."""
        if not isinstance(error, ProviderUnavailable):
            return  # a 429 is an answer: the model is there, only busy
        if self._since is None or successes != self._successes:
            self._since = self._clock()
            self._successes = successes
        self.last_error = error

    def expired(self, successes: int) -> bool:
        """No call succeeded for ``limit_s`` since the first failure of the current run."""
        if self._since is None or successes != self._successes:
            return False
        return self._clock() - self._since >= self.limit_s
