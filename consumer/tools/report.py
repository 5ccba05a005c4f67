"""Read the output topics back and summarise them: verdicts, dead letters, tokens and cost.

It reads each topic from the beginning to the end offsets it saw at the start
(:mod:`consumer.kafka.ranges`), so it never joins (or moves) a consumer group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from consumer.kafka.client import kafka_options
from consumer.kafka.ranges import read_topics
from consumer.settings import Settings
from schemas import DeadLetter, UsageEvent, Verdict

T = TypeVar("T", bound=BaseModel)


@dataclass
class Summary:
    """What the output topics hold."""

    verdicts: list[Verdict] = field(default_factory=list)
    usage: list[UsageEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unreadable: int = 0


async def read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every record value of ``topic`` up to its end offsets at call time.

    Committed records only: the outputs of aborted exactly-once transactions are never counted.
    """
    records = read_topics(kafka_options(settings), [topic])
    return [r.value async for r in records if r.value is not None]


def _parse(values: list[bytes], model: type[T]) -> tuple[list[T], int]:
    parsed: list[T] = []
    bad = 0
    for value in values:
        try:
            parsed.append(model.model_validate_json(value))
        except ValidationError:
            bad += 1
    return parsed, bad


async def read_events(settings: Settings, topic: str, model: type[T]) -> list[T]:
    """The records of ``topic`` that parse as ``model`` (others are skipped)."""
    return _parse(await read_topic(settings, topic), model)[0]


async def summarise(settings: Settings) -> Summary:
    """Read the verdict, usage and dead-letter topics."""
    verdicts, bad_v = _parse(await read_topic(settings, settings.verdict_topic), Verdict)
    usage, bad_u = _parse(await read_topic(settings, settings.usage_topic), UsageEvent)
    dead, bad_d = _parse(await read_topic(settings, settings.dlq_topic), DeadLetter)
    return Summary(verdicts, usage, dead, bad_v + bad_u + bad_d)


def render(summary: Summary, console: Console | None = None) -> None:
    """Print the summary as tables a person can read at a glance."""
    console = console or Console()
    actions = Counter(v.action.value for v in summary.verdicts)
    table = Table(title=f"Verdicts ({len(summary.verdicts)})")
    table.add_column("action")
    table.add_column("count", justify="right")
    for action in ("allow", "review", "block"):
        table.add_row(action, str(actions.get(action, 0)))
    console.print(table)

    flagged = Counter(
        name for v in summary.verdicts for name, c in v.categories.items() if c.flagged
    )
    cats = Table(title="Flagged categories")
    cats.add_column("category")
    cats.add_column("verdicts", justify="right")
    for name, n in flagged.most_common():
        cats.add_row(name, str(n))
    console.print(cats)

    by_reason: dict[tuple[str, str], list[DeadLetter]] = {}
    for d in summary.dead_letters:
        by_reason.setdefault((d.stage, d.error_message), []).append(d)
    dead = Table(title=f"Dead letters ({len(summary.dead_letters)})")
    dead.add_column("stage")
    dead.add_column("reason")
    dead.add_column("count", justify="right")
    dead.add_column("e.g. partition/offset")
    for (stage, reason), letters in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        examples = ", ".join(f"{d.source.partition}/{d.source.offset}" for d in letters[:3])
        dead.add_row(stage, reason[:100], str(len(letters)), examples)
    console.print(dead)

    prompt = sum(u.prompt_tokens for u in summary.usage)
    completion = sum(u.completion_tokens for u in summary.usage)
    cached = sum(u.cached_tokens for u in summary.usage)
    cost = sum(u.cost_usd or 0.0 for u in summary.usage)
    outcomes = Counter(u.outcome.value for u in summary.usage)
    usage = Table(title=f"Model calls ({len(summary.usage)})")
    usage.add_column("prompt tokens", justify="right")
    usage.add_column("completion tokens", justify="right")
    usage.add_column("cached", justify="right")
    usage.add_column("cost (USD)", justify="right")
    usage.add_column("outcomes")
    usage.add_row(
        f"{prompt:,}",
        f"{completion:,}",
        f"{cached:,}",
        f"{cost:.5f}",
        ", ".join(f"{k}: {n}" for k, n in outcomes.most_common()),
    )
    console.print(usage)
    if summary.unreadable:
        console.print(f"[yellow]{summary.unreadable} output records did not match the schemas")
