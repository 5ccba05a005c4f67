"""What a replay reports, and what every way of replaying shares: the range read, the result
(counts, tokens, cost, why and where it stopped), and the progress it tells.

:mod:`consumer.tools.replayer` (synchronous calls) and :mod:`consumer.tools.batch_replay`
(the Batch API) both fill a :class:`ReplayResult`; :mod:`consumer.tools.replay_view` shows it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from aiokafka import TopicPartition

__all__ = ["MAX_OUTAGE_S", "Quiet", "Range", "ReplayProgress", "ReplayResult", "StopReason"]

#: Default of ``--max-outage``: seconds with the model unreachable before a replay gives up.
MAX_OUTAGE_S = 60.0


class StopReason(StrEnum):
    """Why a replay ended before its range did."""

    BUDGET = "budget"
    MODEL_UNREACHABLE = "model unreachable"


@dataclass
class ReplayResult:
    """What a replay did, for the summary and the tests."""

    messages: int = 0
    verdicts: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False
    stopped_at: dict[int, int] | None = None  # partition -> first offset not replayed
    #: Why the replay stopped early (None: it read its whole range).
    stopped: StopReason | None = None
    #: Offsets of the range not replayed (records, less any compacted away).
    left: int = 0
    #: For a stop on an unreachable model: the URL and the last error, in one line.
    outage: str | None = None
    #: ``--batch-api``: the provider's batch, and whether it was found (a resumed replay)
    #: rather than submitted by this run.
    batch_id: str | None = None
    batch_resumed: bool = False

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class ReplayProgress(Protocol):
    """What a replay tells whoever shows its progress (the CLI's bar)."""

    def started(self, total: int) -> None:
        """The range holds about ``total`` records (fewer if some were compacted away)."""

    def advanced(self, result: ReplayResult) -> None:
        """One more record done; ``result`` so far."""

    def stopped(self, reason: StopReason | None) -> None:
        """The replay ended: ``reason`` when it stopped early, None when done (or failed)."""


class Quiet:
    """No progress shown: tests and scripts."""

    def started(self, total: int) -> None:
        """Nothing to show."""

    def advanced(self, result: ReplayResult) -> None:
        """Nothing to show."""

    def stopped(self, reason: StopReason | None) -> None:
        """Nothing to show."""


@dataclass(frozen=True)
class Range:
    """Per partition, the first offset to read and the end (exclusive)."""

    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        """Offsets in the range (records, less any compacted away)."""
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.start)
