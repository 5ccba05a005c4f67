"""What a person sees of a replay: the progress bar while it runs, the summary table after.

The command line's side of :mod:`consumer.tools.replay`: ``modstream replay`` hands a
:class:`ProgressBar` to :func:`~consumer.tools.replay.run_replay` (which knows it only as a
:class:`~consumer.tools.replay.ReplayProgress`) and prints :func:`render_result` at the end.
Apart from the replay so that the replay runs the same without a terminal (tests, scripts).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from consumer.tools.replay import ReplayRequest
from consumer.tools.replay_outcome import ReplayResult, StopReason

__all__ = ["BatchProgressBar", "ProgressBar", "RateColumn", "render_result"]


class RateColumn(ProgressColumn):
    """Messages per second."""

    def render(self, task: Task) -> Text:
        """The task's speed, or nothing before there is one."""
        return Text(f"{task.speed:,.0f} msg/s" if task.speed else "", style="magenta")


class ProgressBar:
    """A replay's progress on the terminal: records done, rate, tokens, cost, time left."""

    def __init__(self, console: Console | None = None) -> None:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(),
            TextColumn("[cyan]{task.fields[tokens]:,} tokens"),
            TextColumn("[green]${task.fields[cost]:.4f}"),
            TimeRemainingColumn(),
        )
        console = console or Console(stderr=True)
        self._progress = Progress(*columns, console=console, transient=False)
        self._task: TaskID | None = None

    def started(self, total: int) -> None:
        """Show the bar for ``total`` records."""
        self._progress.start()
        self._task = self._progress.add_task("replay", total=total, tokens=0, cost=0.0)

    def advanced(self, result: ReplayResult) -> None:
        """One more record done."""
        if self._task is not None:
            self._progress.update(self._task, advance=1, tokens=result.tokens, cost=result.cost_usd)

    def stopped(self, reason: StopReason | None) -> None:
        """Leave the bar as it ended: at the count replayed, saying why when it stopped early
        (the total is what the range held, so an early stop never shows 100 %)."""
        if self._task is not None and reason is not None:
            self._progress.update(self._task, description=f"stopped: {reason.value}")
        self._progress.stop()


class BatchProgressBar:
    """A Batch API replay's batch on the terminal: requests done (completed + failed) of the
    batch's total, its status, failures, and the time it has been running."""

    def __init__(self, console: Console | None = None) -> None:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("[yellow]{task.fields[status]}"),
            TextColumn("[red]{task.fields[failed]:,} failed"),
            TimeElapsedColumn(),
        )
        console = console or Console(stderr=True)
        self._progress = Progress(*columns, console=console, transient=False)
        self._task: TaskID | None = None

    def submitted(self, batch_id: str, total: int, *, resumed: bool) -> None:
        """Show the bar for the batch's ``total`` requests."""
        self._progress.start()
        verb = "resumed" if resumed else "batch"
        self._task = self._progress.add_task(
            f"{verb} {batch_id}", total=total, status="submitted", failed=0
        )

    def polled(self, status: str, completed: int, failed: int) -> None:
        """The batch as of the last poll."""
        if self._task is not None:
            self._progress.update(
                self._task, completed=completed + failed, status=status, failed=failed
            )

    def finished(self, status: str) -> None:
        """Leave the bar as the batch ended."""
        if self._task is not None:
            self._progress.update(self._task, status=status)
        self._progress.stop()


def render_result(
    result: ReplayResult, request: ReplayRequest, console: Console | None = None
) -> None:
    """The replay's summary: what ran, what it cost, and where a budget stop left off."""
    console = console or Console()
    title = (
        "Dry run (estimate, no model call)" if request.dry_run else f"Replay -> {request.to_topic}"
    )
    caption = "via the Batch API: 50% of the synchronous price" if request.batch_api else None
    table = Table(title=title, caption=caption)
    table.add_column("")
    table.add_column("", justify="right")
    rows = {
        "messages": f"{result.messages:,}",
        "verdicts": f"{result.verdicts:,}",
        "cache hits (free)": f"{result.cache_hits:,}",
        "model calls": f"{result.model_calls:,}",
        "prompt tokens": f"{result.prompt_tokens:,}",
        "completion tokens": f"{result.completion_tokens:,}",
        "cost (USD)": f"{result.cost_usd:.5f}",
        "dead letters": ", ".join(f"{k}: {n}" for k, n in result.dead_letters.items()) or "0",
    }
    if result.batch_id is not None:
        rows["batch"] = result.batch_id + (" (resumed)" if result.batch_resumed else "")
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)
    if result.stopped is None or result.stopped_at is None:
        return
    why = (
        f"by --max-cost {request.max_cost} after ${result.cost_usd:.5f}"
        if result.stopped is StopReason.BUDGET
        else "because the model was unreachable"
    )
    console.print(
        f"[yellow]stopped early {why}: {result.messages:,} replayed, "
        f"{result.left:,} offsets left, not replayed from "
        + ", ".join(f"partition {p} offset {o}" for p, o in result.stopped_at.items())
    )
    offsets = ",".join(f"{p}:{o}" for p, o in result.stopped_at.items())
    console.print(
        f"[yellow]resume: the same command with --from-offset {offsets} "
        "(in place of --from-offset/--from-time)"
    )
