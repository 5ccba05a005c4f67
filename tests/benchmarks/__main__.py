"""``python -m tests.benchmarks``: run the benchmarks, write BENCHMARKS.md and the plot.

A full run (no ``--quick``, no ``--only``) writes ``BENCHMARKS.md`` and
``docs/bench-throughput.png`` at the repository root; other runs write to ``.run/bench/``
unless ``--output`` says otherwise, so a smoke run never replaces the published figures.
Raw results go to ``.run/bench/results.json``; logs of every process to ``.run/bench/*.log``.
Exit status 1 when a run failed (a process crashed, outputs went missing), not when a figure
misses its target: that is what the report is for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks import report
from tests.benchmarks.infra import (
    BENCH_PORT,
    ROOT,
    RUN_DIR,
    broker,
    load_average,
    machine,
    use_snapshot,
)
from tests.benchmarks.sections import SECTIONS, Bench, Options, run_sections


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run (default all): {','.join(SECTIONS)}",
    )
    parser.add_argument("--output", type=Path, help="the Markdown report (see above)")
    parser.add_argument("--plot", type=Path, help="the PNG plot (see above)")
    parser.add_argument(
        "--big-backlog",
        type=int,
        help="messages in the large memory backlog (default: the largest that fits, <= 500k)",
    )
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="measure the working tree as it is (default: a snapshot of HEAD, so that other "
        "people's unsaved edits in a shared tree cannot break or skew the run)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: write the report and plot again from .run/bench/results.json",
    )
    parser.add_argument("--port", type=int, default=BENCH_PORT, help="the broker's port")
    parser.add_argument("--bootstrap", help="use this running broker instead of starting one")
    return parser.parse_args(argv)


def _public(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if not k.startswith("_")}


async def _run(bench: Bench, sections: list[str]) -> None:
    await run_sections(bench, sections)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        return 2
    sections = [s for s in SECTIONS if s in sections]  # memory last: it sizes by time left
    options = Options.quick_run() if args.quick else Options()
    if args.big_backlog:
        options.memory_big = args.big_backlog
    published = not args.quick and not args.only

    if args.report_only:
        saved = json.loads((RUN_DIR / "results.json").read_text())
        published = not saved["run"]["quick"] and saved["run"]["sections"] == list(SECTIONS)
        return write(saved["results"], saved["machine"], saved["run"], args, published)

    started = time.monotonic()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if not args.worktree:
        use_snapshot()
    load_start = load_average()
    about = machine()
    print(f"benchmarks: {', '.join(sections)}{' (quick)' if args.quick else ''}", flush=True)
    with broker(args.port, args.bootstrap) as kafka:
        print(f"broker {kafka.bootstrap} up in {kafka.started_in_s:.1f}s", flush=True)
        bench = Bench(kafka, options)
        asyncio.run(_run(bench, sections))
    wall = time.monotonic() - started
    results = _public(bench.results)
    command = "python -m tests.benchmarks" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
    run = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": wall,
        "quick": args.quick,
        "sections": sections,
        "load_start": load_start,
        "load_end": load_average(),
        "failures": bench.failures,
        "section_s": bench.results.get("_section_s", {}),
        "broker_s": kafka.started_in_s,
    }
    run["command"] = command
    (RUN_DIR / "results.json").write_text(
        json.dumps({"run": run, "machine": about, "results": results}, indent=2, default=str)
    )
    write(results, about, run, args, published)
    print(f"whole run: {wall / 60:.1f} min")
    for failure in bench.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if bench.failures else 0


def write(
    results: dict[str, Any],
    about: dict[str, str],
    run: dict[str, Any],
    args: argparse.Namespace,
    published: bool,
) -> int:
    """BENCHMARKS.md and the plot, from one run's results."""
    output = args.output or (ROOT / "BENCHMARKS.md" if published else RUN_DIR / "BENCHMARKS.md")
    plot_path = args.plot or (
        ROOT / "docs" / "bench-throughput.png" if published else RUN_DIR / "bench-throughput.png"
    )
    plotted = report.plot(results, plot_path)
    link = None
    if plotted:
        try:
            link = plot_path.resolve().relative_to(output.resolve().parent).as_posix()
        except ValueError:
            link = plot_path.resolve().as_posix()
    command = run.get("command", "python -m tests.benchmarks")
    output.write_text(
        report.markdown(results, command=command, machine=about, run=run, plot_link=link)
    )
    print(f"\nwrote {output}" + (f" and {plot_path}" if plotted else ""))
    for figure, measured, target, met in report.summary_rows(results):
        print(f"  {figure}: {measured}  [target {target}] {met.strip('*')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
