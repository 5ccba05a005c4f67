"""The Batches API's store and state machine.

A batch's fate is decided when it is created: its input file is validated and, when valid,
every line is answered then (by the caller's ``answer``, the handlers' own steps). The clock
only reveals it: ``validating`` for the first half of ``batch_delay_s``, then ``failed`` (an
invalid input, ``errors`` set) or ``in_progress``, and ``completed`` once the whole delay has
passed, with its output and error files. A cancelled batch is ``cancelling`` for half the delay,
then ``cancelled``, every line in its error file as ``batch_cancelled`` (the fake answers a
batch all at once, so none had been run).

Status is worked out when a batch is read (:meth:`BatchStore.get`), from the delay in force
then: no task runs per batch, none is left behind at shutdown, and a test may shorten the delay
of a waiting batch with ``PATCH /_fake/config``. Status only ever moves forward.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumer.testing.fake_openai.batch_input import Line, Parsed
from consumer.testing.fake_openai.batch_output import (
    Result,
    cancelled_lines,
    jsonl,
    result_lines,
    usage,
)
from consumer.testing.fake_openai.files import FileStore
from consumer.testing.fake_openai.reply import new_id

#: What answers one line: (url, body) -> (status, body).
Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]

#: The statuses a valid batch reaches with time, in order (an invalid one goes from
#: ``validating`` to ``failed``, which is terminal).
PROGRESS = ("validating", "in_progress", "completed")
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})

#: A batch must finish within 24 hours at OpenAI; the fake reports the deadline, never expires.
WINDOW_S = 24 * 3600


def phase(elapsed: float, delay: float, *, valid: bool) -> str:
    """The status a batch has ``elapsed`` seconds after its creation, with ``delay``."""
    if elapsed < delay / 2:
        return "validating"
    if not valid:
        return "failed"
    return "in_progress" if elapsed < delay else "completed"


@dataclass(slots=True)
class Batch:
    """One batch: its request, what its lines got, and how far the clock has revealed it."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    seed: str
    parsed: Parsed
    results: list[Result]
    status: str = "validating"
    stamps: dict[str, int] = field(default_factory=dict)
    cancel_asked: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: tuple[int, int, int] = (0, 0, 0)
    """total, completed, failed."""

    @property
    def lines(self) -> list[Line]:
        """The requests of a valid input (empty for an invalid one)."""
        return [] if self.parsed.errors else self.parsed.lines

    def document(self) -> dict[str, Any]:
        """The ``Batch`` object."""
        total, completed, failed = self.counts
        errors = None
        if self.status == "failed":
            errors = {"object": "list", "data": self.parsed.errors}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.parsed.model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "expires_at": int(self.created) + WINDOW_S,
            **{
                f"{name}_at": self.stamps.get(name)
                for name in (
                    "in_progress",
                    "finalizing",
                    "completed",
                    "failed",
                    "expired",
                    "cancelling",
                    "cancelled",
                )
            },
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": usage(self.results) if self.status == "completed" else None,
            "metadata": self.metadata,
        }


class BatchStore:
    """Batches by id, in creation order; the files they write go to ``files``."""

    def __init__(self, files: FileStore, clock: Callable[[], float] = time.time) -> None:
        self.files = files
        self.clock = clock
        self.batches: dict[str, Batch] = {}
        self._created = 0

    def create(
        self,
        parsed: Parsed,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        seed: int | None,
        answer: Answer,
    ) -> Batch:
        """A new batch of ``parsed``, its lines answered now when it is valid."""
        self._created += 1
        results = []
        if not parsed.errors:
            results = [
                Result(line.custom_id, *answer(endpoint, line.body)) for line in parsed.lines
            ]
        batch = Batch(
            id=new_id("batch"),
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            metadata=metadata,
            created=self.clock(),
            # Per batch, so two batches of one seeded run shuffle differently; None: the OS.
            seed="" if seed is None else f"{seed}/{self._created}",
            parsed=parsed,
            results=results,
        )
        self.batches[batch.id] = batch
        return batch

    def get(self, batch_id: str, delay: float) -> Batch | None:
        """The batch as it stands now, or None."""
        batch = self.batches.get(batch_id)
        if batch is not None:
            self.advance(batch, delay)
        return batch

    def page(self, after: str | None, limit: int, delay: float) -> tuple[list[Batch], bool]:
        """Up to ``limit`` batches, newest first, after the one with id ``after``; and
        whether there are more."""
        newest = list(reversed(self.batches.values()))
        ids = [b.id for b in newest]
        start = ids.index(after) + 1 if after in ids else 0
        chosen = newest[start : start + limit]
        for batch in chosen:
            self.advance(batch, delay)
        return chosen, start + limit < len(newest)

    def cancel(self, batch: Batch, delay: float) -> bool:
        """Start cancelling ``batch``; False when it has already finished."""
        self.advance(batch, delay)
        if batch.status in TERMINAL:
            return False
        if batch.status != "cancelling":
            batch.status, batch.cancel_asked = "cancelling", self.clock()
            batch.stamps["cancelling"] = int(batch.cancel_asked)
        return True

    def advance(self, batch: Batch, delay: float) -> None:
        """Move ``batch`` to the status its age gives it (never backwards)."""
        now = self.clock()
        if batch.status == "cancelling" and batch.cancel_asked is not None:
            if now - batch.cancel_asked >= delay / 2:
                self._cancelled(batch, now)
            return
        if batch.status in TERMINAL:
            return
        target = phase(now - batch.created, delay, valid=not batch.parsed.errors)
        if target == "failed":
            batch.status, batch.stamps["failed"] = "failed", int(now)
            return
        if PROGRESS.index(target) <= PROGRESS.index(batch.status):
            return
        if batch.status == "validating":
            batch.status, batch.stamps["in_progress"] = "in_progress", int(now)
            batch.counts = (len(batch.lines), 0, 0)
        if target == "completed":
            self._completed(batch, now)

    def _completed(self, batch: Batch, now: float) -> None:
        rng = random.Random(batch.seed or None)  # simulation, not security
        output, errors = result_lines(batch.results, rng)
        batch.output_file_id = self._write(batch, "output", output)
        batch.error_file_id = self._write(batch, "error", errors)
        batch.counts = (len(batch.results), len(output), len(errors))
        batch.stamps["finalizing"] = batch.stamps["completed"] = int(now)
        batch.status = "completed"

    def _cancelled(self, batch: Batch, now: float) -> None:
        lines = cancelled_lines(line.custom_id for line in batch.lines)
        batch.error_file_id = self._write(batch, "error", lines)
        batch.counts = (len(lines), 0, len(lines))
        batch.stamps["cancelled"] = int(now)
        batch.status = "cancelled"

    def _write(self, batch: Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        # No file for no lines: OpenAI leaves output_file_id null when every request failed.
        if not lines:
            return None
        name = f"{batch.id}_{kind}.jsonl"
        return self.files.add(jsonl(lines), filename=name, purpose="batch_output").id

    def clear(self) -> None:
        """Forget every batch (their files are the file store's to forget)."""
        self.batches.clear()
        self._created = 0
