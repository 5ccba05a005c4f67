"""Shadow: the candidate's best-effort second opinion on a delivered production verdict.

:meth:`Shadow.offer` is called by the classify stage once a production verdict is delivered; it
never waits and never raises. A sampled input is classified by the candidate in a task of its
own, bounded in number and in time, and its verdict and usage are published to the shadow
topics. Every input offered and not classified is counted by why
(``modstream_shadow_dropped_total``):

    full          MODSTREAM_MAX_IN_FLIGHT shadow classifications are running (or waiting for
                  the candidate's limiter) already
    shed          production's limiter is below its ceiling: it met 429s, so shadow waits
    rate_limited  the candidate's own call met a 429 (never retried: production goes first)
    unavailable   the candidate's provider failed or timed out (never retried either)
    deadline      not done within MODSTREAM_SHADOW_DEADLINE_S
    failed        the candidate gave no usable verdict, or its config is wrong (then shadow
                  turns itself off, with one WARNING)
    publish       Kafka did not take the shadow verdict
    stopped       still running one commit interval after the consumer began to stop
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import structlog

from consumer.errors import FatalError, ModstreamError, PermanentError, RateLimited
from consumer.model.classify import Classifier
from consumer.model.limit import Limiter
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitter, admit_off_loop
from consumer.pipeline.publish import Publisher
from consumer.pipeline.source import Envelope
from consumer.shadow.compare import compare
from consumer.shadow.sample import in_share
from schemas import ModerationRequest, UsageEvent, Verdict

__all__ = ["Shadow"]

log = structlog.get_logger(__name__)


class _GaveUp(Exception):
    """Raised where the candidate's call would retry: a shadow call is never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def give_up(error: ModstreamError) -> None:
    """The candidate classifier's ``on_retry``: end the shadow call instead of retrying."""
    raise _GaveUp("rate_limited" if isinstance(error, RateLimited) else "unavailable")


@dataclass(frozen=True, slots=True)
class Candidate:
    """What classifies in shadow, and where its verdicts go."""

    classifier: Classifier
    admitter: Admitter
    publisher: Publisher


class Shadow:
    """Runs the candidate on the sampled share, never in production's way (module docstring)."""

    def __init__(
        self,
        candidate: Candidate,
        *,
        share: float,
        deadline_s: float,
        drain_s: float,
        capacity: int,
        production: Limiter,
        metrics: Metrics,
    ) -> None:
        """``production``: production's limiter, whose concurrency below its ceiling means it
        met 429s; ``drain_s``: how long the work still running at the stop may finish;
        ``capacity``: the most shadow classifications at once (memory stays bounded by it)."""
        self.candidate = candidate
        self.share = share
        self.deadline_s = deadline_s
        self.drain_s = drain_s
        self.production = production
        self.metrics = metrics
        self.capacity = capacity
        self.enabled = True
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Shadow classifications started and not finished."""
        return len(self._tasks)

    def offer(self, envelope: Envelope, request: ModerationRequest, verdict: Verdict) -> None:
        """Classify ``request`` in shadow too, if it is in the share and there is room."""
        if not self.enabled or not in_share(request.id, self.share):
            return
        concurrency = self.production.concurrency
        if concurrency.limit < concurrency.ceiling:
            self.metrics.shadow_dropped("shed")
        elif len(self._tasks) >= self.capacity:
            self.metrics.shadow_dropped("full")
        else:
            task = asyncio.create_task(self._classify(envelope, request, verdict))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _classify(
        self, envelope: Envelope, request: ModerationRequest, production: Verdict
    ) -> None:
        candidate = self.candidate
        try:
            async with asyncio.timeout(self.deadline_s):
                # Off the loop when large, as production's admit: shadow must not stall it.
                admitted = await admit_off_loop(candidate.admitter, request)
                result = await candidate.classifier.classify(admitted, envelope.source)
        except TimeoutError:
            self.metrics.shadow_dropped("deadline")
            return
        except _GaveUp as exc:
            self.metrics.shadow_dropped(exc.reason)
            return
        except (PermanentError, FatalError) as exc:
            self._failed(exc)
            return
        except Exception:
            # A fault of the shadow's own must never reach production: logged, counted.
            log.exception("shadow classification failed")
            self.metrics.shadow_dropped("failed")
            return
        if result.verdict is None:
            # The candidate's usage is published all the same: its cost is real.
            if await self._publish(envelope, None, result.usage):
                self.metrics.shadow_dropped("failed")
            return
        verdict = result.verdict.model_copy(update={"shadow_of": production.event_id})
        if await self._publish(envelope, verdict, result.usage):
            seen = compare(production, verdict)
            self.metrics.shadow_verdict(
                agrees=seen.agrees,
                flagged=seen.flagged,
                unflagged=seen.unflagged,
            )

    async def _publish(
        self, envelope: Envelope, verdict: Verdict | None, usage: Sequence[UsageEvent]
    ) -> bool:
        try:
            records = self.candidate.publisher.records(envelope, verdict=verdict, usage=usage)
            await self.candidate.publisher.publish(records)
        except ModstreamError as exc:
            log.debug("shadow verdict not published", error=exc.message)
            self.metrics.shadow_dropped("publish")
            return False
        self.metrics.shadow_cost(sum(u.cost_usd or 0.0 for u in usage))
        return True

    def _failed(self, error: ModstreamError) -> None:
        self.metrics.shadow_dropped("failed")
        if isinstance(error, FatalError) and self.enabled:
            # Every call would fail the same way (an unknown model, a rejected parameter):
            # stop offering, say so once, and leave production as it is.
            self.enabled = False
            log.warning(
                "shadow turned off: the candidate cannot work",
                model=self.candidate.classifier.model,
                error=error.message,
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Give the work still running ``drain_s`` to finish, then drop it (counted)."""
        self.enabled = False
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_s)
        for task in pending:
            task.cancel()
            self.metrics.shadow_dropped("stopped")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
