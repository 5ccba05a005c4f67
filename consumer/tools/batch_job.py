"""One Batch API batch at the provider: found again by its key or submitted, polled until it
ends, its result files read.

:class:`BatchJob` is the provider's side of ``modstream replay --batch-api``
(:mod:`consumer.tools.batch_replay` decides what goes into the batch and what its answers
mean). Every SDK error is translated (:func:`consumer.model.provider.translate`); a poll that
fails transiently is polled again for up to ``max_outage_s``, since a batch runs for hours and
a provider hiccup between two polls is not its end. A batch that fails validation, expires or
is cancelled is :class:`~consumer.errors.BatchFailed`, in one line with its first errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

import openai
import structlog
from openai import AsyncOpenAI
from openai.types import Batch

from consumer.errors import BatchFailed, ModstreamError
from consumer.model.provider import translate
from consumer.tools.batch_requests import BATCH_ENDPOINT, KEY_FIELD
from consumer.tools.batch_results import read_lines
from consumer.tools.replay_outcome import MAX_OUTAGE_S

__all__ = ["BATCH_POLL_S", "BatchJob", "BatchProgress", "QuietBatch"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: Default of ``--batch-poll-s``: a batch takes minutes to hours; polling faster buys nothing.
BATCH_POLL_S = 30.0

#: Statuses a batch never leaves; only ``completed`` has results to read.
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Statuses of a batch that will never have results: not one to resume.
_DEAD = frozenset({"failed", "expired", "cancelled", "cancelling"})
#: Errors of a failed batch named in the one-line error.
_ERRORS_SHOWN = 5


class BatchProgress(Protocol):
    """What a batch replay tells whoever shows its progress (the CLI's bar)."""

    def submitted(self, batch_id: str, total: int, *, resumed: bool) -> None:
        """The batch of ``total`` requests is the provider's (``resumed``: found, not sent)."""

    def polled(self, status: str, completed: int, failed: int) -> None:
        """The batch as of the last poll."""

    def finished(self, status: str) -> None:
        """The batch reached ``status``, a terminal one (or the replay ended before it)."""


class QuietBatch:
    """No progress shown: tests and scripts."""

    def submitted(self, batch_id: str, total: int, *, resumed: bool) -> None:
        """Nothing to show."""

    def polled(self, status: str, completed: int, failed: int) -> None:
        """Nothing to show."""

    def finished(self, status: str) -> None:
        """Nothing to show."""


class BatchJob:
    """A batch's life at the provider, through ``client``; progress told to ``progress``."""

    def __init__(
        self,
        client: AsyncOpenAI,
        progress: BatchProgress,
        *,
        poll_s: float = BATCH_POLL_S,
        max_outage_s: float = MAX_OUTAGE_S,
    ) -> None:
        """``poll_s``: seconds between two looks at the batch; ``max_outage_s``: how long the
        provider may answer no poll (5xx, timeouts) before the replay gives up on it."""
        self.client = client
        self.progress = progress
        self.poll_s = poll_s
        self.max_outage_s = max_outage_s

    async def find(self, key: str) -> Batch | None:
        """The newest batch whose metadata holds ``key`` and that may still have results."""
        try:
            async for batch in self.client.batches.list(limit=100):
                if (batch.metadata or {}).get(KEY_FIELD) == key and batch.status not in _DEAD:
                    return batch
        except openai.OpenAIError as exc:
            raise translate(exc, base_url=self.client.base_url) from exc
        return None

    async def submit(
        self, key: str, content: bytes, requests: int, metadata: dict[str, str]
    ) -> Batch:
        """Upload ``content`` (JSONL of ``requests`` lines) and create its batch."""
        upload = await self._call(
            self.client.files.create(
                file=(f"modstream-replay-{key}.jsonl", content), purpose="batch"
            )
        )
        batch = await self._call(
            self.client.batches.create(
                input_file_id=upload.id,
                endpoint=BATCH_ENDPOINT,
                completion_window="24h",
                metadata=metadata,
            )
        )
        log.info("batch submitted", batch_id=batch.id, requests=requests)
        return batch

    async def wait(self, batch: Batch) -> Batch:
        """Poll ``batch`` until it ends; the completed batch, else :class:`BatchFailed`."""
        failing_since: float | None = None
        try:
            while True:
                counts = batch.request_counts
                self.progress.polled(
                    batch.status, counts.completed if counts else 0, counts.failed if counts else 0
                )
                if batch.status in _TERMINAL:
                    break
                await self._sleep()
                try:
                    batch = await self._call(self.client.batches.retrieve(batch.id))
                    failing_since = None
                except ModstreamError as exc:
                    if not exc.retriable:
                        raise
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > self.max_outage_s:
                        raise
                    log.warning("polling the batch failed; polling again", error=str(exc))
        finally:
            self.progress.finished(batch.status)
        if batch.status != "completed":
            raise BatchFailed(_failure(batch))
        return batch

    async def result_lines(self, batch: Batch) -> list[dict[str, object]]:
        """The lines of the batch's output and error files (either may be absent)."""
        lines: list[dict[str, object]] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._call(self.client.files.content(file_id))
                lines.extend(read_lines(content.content.decode()))
        return lines

    async def _sleep(self) -> None:
        await asyncio.sleep(self.poll_s)  # the poll interval: the batch's clock is the provider's

    async def _call(self, pending: Awaitable[_T]) -> _T:
        """Await an SDK call; openai's errors in our terms."""
        try:
            return await pending
        except openai.OpenAIError as exc:
            raise translate(exc, base_url=self.client.base_url) from exc


def _failure(batch: Batch) -> str:
    """A batch that ended without results, in one line with its first errors."""
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    shown = "; ".join(
        f"line {e.line}: {e.code}: {e.message}" if e.line else f"{e.code}: {e.message}"
        for e in errors[:_ERRORS_SHOWN]
    )
    more = f" (and {len(errors) - _ERRORS_SHOWN} more)" if len(errors) > _ERRORS_SHOWN else ""
    what = f": {shown}{more}" if shown else ""
    return f"batch {batch.id} {batch.status}{what}; nothing was published"
