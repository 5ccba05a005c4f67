"""``modstream top``: a running consumer's metrics as a small dashboard, refreshed every second.

It scrapes the consumer's operations port (``MODSTREAM_METRICS_PORT``, see
:mod:`consumer.ops.scrape`) and shows what a person watching a run asks first: how fast, how
far behind (lag per partition), how much is in flight, whether the provider circuit is open,
retries and dead letters, and what it costs per minute. Rates are the difference between two
scrapes; ``--once`` takes two, a second apart, prints one frame and exits (for scripts and
tests). A first scrape that fails is an error (exit 2); once running, a failed scrape is shown
in the frame and retried, so a restarting consumer does not end the view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from consumer.errors import ConfigError
from consumer.ops.scrape import Snapshot, metrics_url, scrape

#: Seconds between scrapes (and between the two of ``--once``).
REFRESH_S = 1.0
#: Partitions shown; the rest are summed in one row (a topic may have hundreds).
MAX_PARTITIONS = 24


@dataclass(frozen=True)
class Rates:
    """What changed per unit of time between two scrapes."""

    messages_per_s: float
    cost_per_min: float

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, elapsed_s: float) -> Rates | None:
        """The rates from ``before`` to ``after``; None without a usable interval, or when a
        counter went back (the consumer restarted between them)."""
        done = after.processed - before.processed
        spent = after.cost_usd - before.cost_usd
        if elapsed_s <= 0 or done < 0 or spent < 0:
            return None
        return cls(done / elapsed_s, spent / elapsed_s * 60)


def _circuit(snapshot: Snapshot) -> Text:
    states = snapshot.circuit
    if not states:
        return Text("n/a", style="dim")
    if len(states) == 1:
        (state,) = states
        return Text(state, style="green" if state == "closed" else "bold red")
    parts = ", ".join(f"{state} x{n}" for state, n in sorted(states.items()))
    return Text(parts, style="bold red" if states.get("open") else "yellow")


def _reasons(counts: dict[str, float]) -> str:
    shown = {k: v for k, v in counts.items() if v}
    return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(shown.items())) or "none"


def render(
    snapshot: Snapshot, rates: Rates | None, *, url: str, problem: str | None = None
) -> RenderableType:
    """One frame: the figures, then lag per partition; ``problem``: the last scrape failed."""
    model = snapshot.info.get("model", "?")
    title = Text.assemble(
        ("modstream top", "bold"),
        f"  {url}  model {model}  version {snapshot.info.get('version', '?')}",
    )
    figures = Table.grid(padding=(0, 2))
    figures.add_column(style="bold")
    figures.add_column()
    rate = "n/a" if rates is None else f"{rates.messages_per_s:,.1f} msg/s"
    cost = "n/a" if rates is None else f"${rates.cost_per_min:,.4f}/min"
    broker = {None: "n/a", 1.0: "up"}.get(snapshot.broker_up, "DOWN")
    figures.add_row("rate", rate)
    figures.add_row(
        "processed",
        f"{snapshot.processed:,.0f} ({snapshot.verdicts:,.0f} verdicts, "
        f"{snapshot.dead_letters:,.0f} dead letters)",
    )
    figures.add_row("in flight", f"{snapshot.in_flight:,.0f}")
    figures.add_row("lag", f"{sum(snapshot.lag.values()):,.0f}")
    figures.add_row("circuit", _circuit(snapshot))
    figures.add_row("retries", _reasons(snapshot.retries))
    figures.add_row("dead letters", _reasons(snapshot.dead_letter_reasons))
    figures.add_row("cost", f"{cost}  (${snapshot.cost_usd:,.4f} so far)")
    figures.add_row("partitions", f"{snapshot.assigned:,.0f} assigned, broker {broker}")
    parts: list[RenderableType] = [title, figures, _lag_table(snapshot)]
    if problem is not None:
        parts.append(Text(f"last scrape failed: {problem}", style="bold red"))
    return Group(*parts)


def _lag_table(snapshot: Snapshot) -> RenderableType:
    if not snapshot.lag:
        return Text("lag per partition: none reported yet", style="dim")
    table = Table("topic", "partition", "lag", title="lag per partition", title_justify="left")
    rows = list(snapshot.lag.items())
    for (topic, partition), lag in rows[:MAX_PARTITIONS]:
        table.add_row(topic, str(partition), f"{lag:,.0f}")
    rest = rows[MAX_PARTITIONS:]
    if rest:
        table.add_row("...", f"{len(rest)} more", f"{sum(v for _, v in rest):,.0f}")
    return table


def run_top(
    url: str,
    *,
    once: bool = False,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Show the dashboard of the consumer at ``url`` until Ctrl-C (or one frame, ``once``)."""
    url = metrics_url(url)
    console = console or Console()
    before, then = scrape(url), time.monotonic()  # fails here, with one line, if unreachable
    if once:
        sleep(REFRESH_S)
        after, now = scrape(url), time.monotonic()
        console.print(render(after, Rates.between(before, after, now - then), url=url))
        return
    rates: Rates | None = None
    problem: str | None = None
    try:
        with Live(render(before, None, url=url), console=console, auto_refresh=False) as live:
            while True:
                sleep(REFRESH_S)
                try:
                    after, now = scrape(url), time.monotonic()
                except ConfigError as exc:
                    problem = str(exc)
                else:
                    rates, problem = Rates.between(before, after, now - then), None
                    before, then = after, now
                live.update(render(before, rates, url=url, problem=problem), refresh=True)
    except KeyboardInterrupt:
        return
