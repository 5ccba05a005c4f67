"""Every model call through the circuit breaker and the one retry layer; the witness call.

The SDK's own retries are off (``max_retries=0`` in :mod:`consumer.model.build`): tenacity here
is the one retry layer, so every retry re-acquires concurrency and token budget. Every HTTP call
(a chat call, the first tier's moderation call in :mod:`consumer.model.tier`, a batch in
:mod:`consumer.model.batch`) goes through :meth:`ModelCalls.with_retries`:

- the circuit breaker (:mod:`consumer.model.circuit`) gates each attempt, and counts each
  ``ProviderUnavailable`` failure and each answer;
- transient errors are retried with full-jitter exponential backoff, never sooner than the
  server's ``retry-after`` (capped); a 429 also cuts the limiter's concurrency (AIMD);
- a failure that looks like poison rather than an outage ends the retries with a
  ``PersistentFailure`` (the rule in :mod:`consumer.model.watches`); when no other traffic can
  tell the two apart, a witness call does (:meth:`ModelCalls._witness`).

Each failure reaches the breaker with its cause (:func:`consumer.model.provider.cause_of`: what
the call ran into, the status, a short message and the base URL, never the key), and the
retry's debug line carries it too.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_random_exponential,
)

from consumer.errors import ModstreamError, ProviderUnavailable, RateLimited, TransientError
from consumer.model.chat_call import ChatCall, ChatRequest
from consumer.model.chat_client import Completion
from consumer.model.circuit import CircuitBreaker
from consumer.model.ledger import Recorder
from consumer.model.limit import Limiter
from consumer.model.provider import cause_of
from consumer.model.watches import PoisonWatch
from consumer.retry import retried

log = structlog.get_logger(__name__)

__all__ = ["ModelCalls"]

T = TypeVar("T")

#: The longest server-requested wait we honour before retrying anyway.
_RETRY_AFTER_CAP_S = 60.0

#: How often a witness call may be made, at most (see :meth:`ModelCalls._witness`).
_WITNESS_INTERVAL_S = 1.0


def _transient(error: BaseException) -> bool:
    return isinstance(error, TransientError)


class ModelCalls:
    """Makes model calls through the breaker and the retry layer (see the module docstring)."""

    def __init__(
        self,
        chat: ChatCall,
        *,
        breaker: CircuitBreaker,
        limiter: Limiter,
        witness: ChatRequest,
        unattributed: Recorder,
        poison_attempts: int = 8,
        max_backoff_s: float = 30.0,
        on_retry: Callable[[ModstreamError], None] | None = None,
    ) -> None:
        """``witness``: the witness request; ``unattributed`` records the usage of a witness
        call made for no message in particular."""
        self.chat_call = chat
        self.breaker = breaker
        self.limiter = limiter
        self.witness_request = witness
        self.unattributed = unattributed
        self.poison_attempts = poison_attempts
        self.max_backoff_s = max_backoff_s
        self.on_retry = on_retry
        self._jitter = wait_random_exponential(multiplier=0.25, max=max_backoff_s)
        #: At most one witness call this often (see :meth:`_witness`).
        self.witness_interval_s = _WITNESS_INTERVAL_S
        self._witness_lock = asyncio.Lock()
        self._witnessed_at = -math.inf

    async def chat(
        self, request: ChatRequest, record: Recorder, witnessed: Recorder | None = None
    ) -> Completion:
        """``request`` through :meth:`with_retries`; each attempt's usage goes to ``record``."""
        return await self.with_retries(
            functools.partial(self.chat_call.send, request, record), witnessed
        )

    async def with_retries(
        self, send: Callable[[], Awaitable[T]], witnessed: Recorder | None = None
    ) -> T:
        """Make the HTTP call ``send`` makes, through the breaker and the retry layer.

        ``send`` takes its own limiter slot (so every retry re-acquires budget) and records
        the usage of each attempt; transient errors are retried, anything else is raised.
        ``ProviderUnavailable`` failures that look like poison (:mod:`consumer.model.watches`)
        end the retries with a ``PersistentFailure`` after ``poison_attempts``. ``witnessed``
        records the usage of the witness calls made on this call's behalf (see
        :meth:`_witness`); without it they go to the metrics only.
        """
        watch = PoisonWatch(self.breaker, self.poison_attempts)
        watch.record = witnessed
        return await retried(
            functools.partial(self._checked, send, watch),
            lambda: AsyncRetrying(
                retry=retry_if_exception(_transient),
                wait=self._wait,
                stop=stop_never,
                reraise=True,
                before_sleep=self._before_sleep,
            ),
            _transient,
        )

    async def _checked(self, send: Callable[[], Awaitable[T]], watch: PoisonWatch) -> T:
        """One attempt of :meth:`with_retries`: a failure counted towards poison (and a
        witness call made when only one can tell poison from an outage)."""
        try:
            return await self._attempt(send, watch)
        except ProviderUnavailable as exc:
            poison = watch.failed(exc)
            if poison is not None:
                log.warning("treating the message as poison", error=poison.message)
                raise poison from exc
            if watch.needs_witness():
                await self._witness(watch.record)
            raise

    async def _witness(self, record: Recorder | None) -> None:
        """Ask the provider one tiny, harmless question, to tell poison from an outage.

        A message failing while nothing else got an answer since its last failure proves
        nothing: it may be poison, or the provider may be down. With no other traffic (a quiet
        stream, or a window filled by the records held behind this very message) no answer
        would ever come, so the message could never be called poison and would stall its
        partition for good. This call is the other traffic: an answer counts as a success of
        the breaker (the message's next failure then counts towards poison), a failure as one
        more failure (towards opening the circuit). One at a time, at most once a second
        whoever asks; only while the circuit is closed. Its usage is recorded with the message
        it was made for (``record``), so every call the provider answered is paid for.
        """
        if not self.breaker.is_closed or self._witness_lock.locked():
            return
        async with self._witness_lock:
            if time.monotonic() - self._witnessed_at < self.witness_interval_s:
                return
            self._witnessed_at = time.monotonic()
            try:
                witness = functools.partial(self._witness_call, record)
                await self._attempt(witness, PoisonWatch(self.breaker, 1))
            except ModstreamError as exc:  # the breaker has counted it; nothing else to do
                log.debug("witness call failed", kind=exc.kind)

    async def _witness_call(self, record: Recorder | None) -> Completion:
        """The witness request; its usage goes to ``record``, or to the metrics only."""
        return await self.chat_call.send(self.witness_request, record or self.unattributed)

    def _wait(self, state: RetryCallState) -> float:
        """Full-jitter exponential backoff, but never sooner than the server asked."""
        jitter = float(self._jitter(state))
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, TransientError) else None
        if asked is None:
            return jitter
        # Honour the server, within reason: a retry-after of a day would stall a message a day.
        return max(jitter, min(asked, max(_RETRY_AFTER_CAP_S, self.max_backoff_s)))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ModstreamError):
            if self.on_retry is not None:
                self.on_retry(exc)
            if isinstance(exc, RateLimited):
                self.limiter.concurrency.on_overload()
            log.debug(
                "model call failed, retrying",
                kind=exc.kind,
                attempt=state.attempt_number,
                **self._cause(exc),
            )

    def _cause(self, error: BaseException) -> dict[str, object]:
        """What the failed call behind ``error`` ran into, as log fields (never the key)."""
        client = self.chat_call.client
        return cause_of(error, base_url=client.base_url, secret=client.api_key).fields()

    async def _attempt(self, send: Callable[[], Awaitable[T]], watch: PoisonWatch) -> T:
        """One HTTP call, gated by the circuit breaker (``send`` takes the limiter slot)."""
        deferred = watch.probe_failed
        probe = await self.breaker.admit(defer=deferred)
        watch.probe_failed = False
        if probe and deferred:
            # Nothing fresh came in to probe with (a quiet stream, or a window full of the
            # records held behind this one): probe with the witness call instead, so this
            # message's own failures cannot keep the circuit open for good.
            try:
                await self._witness_call(watch.record)
            except ProviderUnavailable as exc:
                # The witness is a caller of its own.
                self.breaker.failure(self._witness_lock, cause=self._cause(exc))
                watch.probe_failed = True
                raise
            except ModstreamError:
                self.breaker.end_probe()
                raise
            self.breaker.success()  # closed again: this message's call goes as any other
            probe = False
        try:
            completion = await send()
        except ProviderUnavailable as exc:
            self.breaker.failure(watch, cause=self._cause(exc))
            watch.probe_failed = probe  # next time, let another message probe first
            raise
        finally:
            if probe:
                self.breaker.end_probe()
        self.breaker.success()
        await self.limiter.concurrency.on_success()
        return completion
