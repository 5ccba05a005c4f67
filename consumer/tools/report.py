"""Read the output topics back and summarise them: verdicts, dead letters, tokens and cost.

It reads each topic from the beginning to the end offsets it saw at the start
(:mod:`consumer.kafka.ranges`), so it never joins (or moves) a consumer group. Which topics:
the service's outputs by default, or those a person names (:meth:`ReportTopics.choose`); a
topic that does not exist is an error that names it, not an empty table.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from consumer.errors import ConfigError, DecodeError
from consumer.kafka.client import admin_client, kafka_options
from consumer.kafka.ranges import read_topics
from consumer.kafka.registry_outputs import OutputReader
from consumer.kafka.topics import missing_topics
from consumer.settings import Settings
from schemas import DeadLetter, UsageEvent, Verdict

T = TypeVar("T", bound=BaseModel)

#: The longest dead-letter reason shown; a longer one is cut at a word, with an ellipsis.
REASON_WIDTH = 100


@dataclass(frozen=True)
class Source:
    """A topic to read, and what named it (an option or a setting), for the messages."""

    topic: str
    named_by: str


@dataclass(frozen=True)
class ReportTopics:
    """The verdict, usage and dead-letter topics a report reads; ``None``: not read."""

    verdicts: Source | None
    usage: Source | None
    dead_letters: Source | None

    @classmethod
    def choose(
        cls,
        settings: Settings,
        *,
        verdicts: str | None = None,
        usage: str | None = None,
        dead_letters: str | None = None,
    ) -> ReportTopics:
        """The topics from the options given (``""`` reads none), the rest by default.

        With no ``verdicts``: the service's own topics (``MODSTREAM_VERDICT_TOPIC``,
        ``MODSTREAM_USAGE_TOPIC``, ``MODSTREAM_DLQ_TOPIC``). With ``verdicts=X``: the topics a
        replay writes (``--to-topic X``) and ``eval`` reads, ``X`` and ``X.usage``, and no
        dead letters unless named.
        """
        defaults: tuple[Source, Source, Source | None]
        if verdicts is None:
            defaults = (
                Source(settings.verdict_topic, "MODSTREAM_VERDICT_TOPIC"),
                Source(settings.usage_topic, "MODSTREAM_USAGE_TOPIC"),
                Source(settings.dlq_topic, "MODSTREAM_DLQ_TOPIC"),
            )
        else:
            defaults = (
                Source(verdicts, "--verdicts"),
                Source(f"{verdicts}.usage", "--usage, by default --verdicts + .usage"),
                None,
            )

        def given(value: str | None, option: str, default: Source | None) -> Source | None:
            if value is None:
                return default
            return Source(value, option) if value else None

        return cls(
            given(verdicts, "--verdicts", defaults[0]),
            given(usage, "--usage", defaults[1]),
            given(dead_letters, "--dead-letters", defaults[2]),
        )

    def sources(self) -> list[Source]:
        """The topics read, in the report's order."""
        return [s for s in (self.verdicts, self.usage, self.dead_letters) if s is not None]


@dataclass
class Summary:
    """What the output topics hold."""

    verdicts: list[Verdict] = field(default_factory=list)
    usage: list[UsageEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unreadable: int = 0
    #: The topics read (``None``: the service's three); only their tables are shown.
    read: ReportTopics | None = None


#: What to do about a missing topic an option named: most are a replay's outputs.
OPTION_HINT = "check the name (`modstream replay --to-topic X` writes X and X.usage)"


async def read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every record value of ``topic`` up to its end offsets at call time.

    Committed records only: the outputs of aborted exactly-once transactions are never counted.
    """
    records = read_topics(kafka_options(settings), [topic])
    return [r.value async for r in records if r.value is not None]


async def _parse(settings: Settings, values: list[bytes], model: type[T]) -> tuple[list[T], int]:
    parsed: list[T] = []
    bad = 0
    # JSON, or Avro / JSON Schema outputs read under the registry's schemas.
    async with OutputReader(settings) as reader:
        for value in values:
            try:
                parsed.append(await reader.read(value, model))
            except (ValidationError, DecodeError):
                bad += 1
    return parsed, bad


async def read_events(settings: Settings, topic: str, model: type[T]) -> list[T]:
    """The records of ``topic`` that parse as ``model`` (others are skipped)."""
    return (await _parse(settings, await read_topic(settings, topic), model))[0]


async def summarise(settings: Settings, topics: ReportTopics | None = None) -> Summary:
    """Read the verdict, usage and dead-letter topics (``topics``, default the service's).

    Every topic to read must exist: one that does not is a ConfigError naming it and what
    named it (a typo in an option, or outputs not written yet), checked before reading.
    """
    topics = topics or ReportTopics.choose(settings)
    await _require(settings, topics)

    async def parsed(source: Source | None, model: type[T]) -> tuple[list[T], int]:
        if source is None:
            return [], 0
        return await _parse(settings, await read_topic(settings, source.topic), model)

    verdicts, bad_v = await parsed(topics.verdicts, Verdict)
    usage, bad_u = await parsed(topics.usage, UsageEvent)
    dead, bad_d = await parsed(topics.dead_letters, DeadLetter)
    return Summary(verdicts, usage, dead, bad_v + bad_u + bad_d, read=topics)


async def _require(settings: Settings, topics: ReportTopics) -> None:
    sources = topics.sources()
    if not sources:
        raise ConfigError("nothing to report: --verdicts, --usage and --dead-letters are all ''")
    async with admin_client(kafka_options(settings)) as admin:
        existing = set(await admin.list_topics())
    named = {s.named_by: s.topic for s in sources}
    by_option = any(s.named_by.startswith("--") for s in sources if s.topic not in existing)
    hint = OPTION_HINT if by_option else "check the name, or create it with `modstream topics`"
    if (problem := missing_topics(named, existing, hint=hint)) is not None:
        raise problem


def shorten(text: str, width: int = REASON_WIDTH) -> str:
    """``text`` on one line, cut at a word boundary with an ellipsis when over ``width``."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = textwrap.shorten(line, width, placeholder=" …")
    return cut if cut != "…" else line[: width - 1] + "…"  # one word longer than width


def render(summary: Summary, console: Console | None = None) -> None:
    """Print the summary as tables a person can read at a glance: those of the topics read."""
    console = console or Console()
    read = summary.read
    if read is not None:
        console.print("read " + ", ".join(s.topic for s in read.sources()), style="dim")
    if read is None or read.verdicts is not None:
        _verdict_tables(summary, console)
    if read is None or read.dead_letters is not None:
        _dead_letter_table(summary, console)
    if read is None or read.usage is not None:
        _usage_table(summary, console)
    if summary.unreadable:
        console.print(f"[yellow]{summary.unreadable} output records did not match the schemas")


def _verdict_tables(summary: Summary, console: Console) -> None:
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


def _dead_letter_table(summary: Summary, console: Console) -> None:
    by_reason: dict[tuple[str, str], list[DeadLetter]] = {}
    for d in summary.dead_letters:
        by_reason.setdefault((d.stage, shorten(d.error_message)), []).append(d)
    dead = Table(title=f"Dead letters ({len(summary.dead_letters)})")
    dead.add_column("stage")
    dead.add_column("reason")  # rich wraps it at words when the terminal is narrow
    dead.add_column("count", justify="right")
    dead.add_column("e.g. partition/offset")
    for (stage, reason), letters in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        examples = ", ".join(f"{d.source.partition}/{d.source.offset}" for d in letters[:3])
        dead.add_row(stage, reason, str(len(letters)), examples)
    console.print(dead)


def _usage_table(summary: Summary, console: Console) -> None:
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
