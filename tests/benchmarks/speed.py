"""Benchmark section ``speed``: modstream's own CPU per message, and where it goes.

Every run reads one backlog, each in its own consumer group, against the fake in benchmark mode
with latency 0, so the model is never the bound and modstream's CPU is: single calls on the
openai SDK's path (``MODSTREAM_CHAT_CLIENT=sdk``) and on the lean one (the default), the lean
path at ``MODSTREAM_BATCH_SIZE`` 8 and 32, and ``--workers 2`` against one worker (its CPU and
RSS are the process tree's: the supervisor and both workers). Then pyinstrument profiles of the
SDK path, the lean path and the lean path at batch size 8 on the same backlog, side by side.

The profiles run on the stdlib event loop (``MODSTREAM_EVENT_LOOP=asyncio``): pyinstrument tells
idle time by the ``epoll.poll`` frame, which uvloop's C loop does not show.
"""

from __future__ import annotations

import contextlib
import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tests.benchmarks.infra import RUN_DIR, fake_server
from tests.benchmarks.profile import analyse

if TYPE_CHECKING:
    from pathlib import Path

    from tests.benchmarks.sections import Bench, Measured

#: (key, what it is, settings)
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("sdk", "single calls, openai SDK path", {"chat_client": "sdk"}),
    ("lean", "single calls, lean path (default)", {}),
    ("batch8", "lean path, batch size 8", {"batch_size": 8}),
    ("batch32", "lean path, batch size 32", {"batch_size": 32}),
    ("workers2", "lean path, --workers 2", {"workers": 2}),
)
#: (key, column title, settings) of the profiled runs
PROFILES: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("sdk", "SDK path", {"chat_client": "sdk"}),
    ("lean", "lean path", {}),
    ("batch8", "lean, batch 8", {"batch_size": 8}),
)
SETTLE_S = 8.0  # extra run time for --workers 2 (see ``_settled``)
TARGETS = {"single_us": 400.0, "batch8_us": 200.0, "workers": 1.8, "fake_us": 100.0}


async def speed(bench: Bench) -> dict[str, Any]:
    """CPU per message by call path, batch size and worker count; two profiles."""
    opts = bench.options
    topic = "spd.in"
    await bench.backlog(topic, opts.overhead_backlog)
    runs: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    with fake_server() as fake:
        for key, label, settings in RUNS:
            workers = int(str(settings.get("workers", 1)))
            # Workers join the group one after the other: give the group time to settle.
            run_for = opts.overhead_s + (SETTLE_S if workers > 1 else 0)
            m = await bench.modstream(f"spd-{key}", topic, fake, run_for=run_for, **settings)
            if workers > 1:
                m = _settled(m)
            runs[key] = {"label": label, "settings": settings, **m.public()}
            bench.say(
                f"{label}: {m.rate:,.0f} msg/s, {m.cpu_us.get('self', math.nan):,.0f} us CPU/msg "
                f"(fake {m.cpu_us.get('fake', math.nan):,.0f}, "
                f"broker {m.cpu_us.get('broker', math.nan):,.0f})"
            )
        for key, _, settings in PROFILES:
            profiles[key] = await _profile(bench, fake, topic, key, settings)
    one, two = (runs.get(key, {}).get("rate", math.nan) for key in ("lean", "workers2"))
    return {
        "backlog": opts.overhead_backlog,
        "run_s": opts.overhead_s,
        "runs": runs,
        "workers_ratio": two / one if one else math.nan,
        "profiles": profiles,
    }


def _settled(m: Measured) -> Measured:
    """``m`` measured again from the group's last assignment on: the first worker up takes
    every partition and the rebalance that hands half to the next stalls both for a few
    seconds, which says nothing about how fast two workers go once settled."""
    from tests.benchmarks.sections import measure  # noqa: PLC0415  (sections imports us)

    if m.run is None:
        return m
    assigned = [
        datetime.fromisoformat(line["timestamp"]).timestamp()
        for line in _json_lines(m.run.log)
        if line.get("event") == "partitions assigned"
    ]
    if not assigned:
        return m
    settled = max(assigned)
    return measure(m.run, [s for s in m.stamps if s / 1000 >= settled])


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(line := json.loads(text), dict):
                lines.append(line)
    return lines


async def _profile(
    bench: Bench, fake: Any, topic: str, key: str, settings: dict[str, Any]
) -> dict[str, Any]:
    session: Path = RUN_DIR / f"profile-{key}.pyisession"
    session.unlink(missing_ok=True)
    m: Measured = await bench.modstream(
        f"spd-prof-{key}",
        topic,
        fake,
        run_for=bench.options.profile_s,
        profile=session,
        event_loop="asyncio",
        **settings,
    )
    if not session.exists():
        bench.failures.append(f"speed: pyinstrument wrote no session for {key}")
        return {}
    p = analyse(session)
    text_path = RUN_DIR / f"profile-{key}.txt"
    text_path.write_text(p.text)
    # Per message: the steady-state busy time spread over the verdicts of the run.
    per_msg = p.busy / max(m.outputs, 1) * 1e6
    return {
        "verdicts": m.outputs,
        "rate_under_profiler": m.rate,
        "duration_s": p.duration,
        "cpu_time_s": p.cpu_time,
        "idle_s": p.idle,
        "startup_s": p.startup,
        "busy_s": p.busy,
        "busy_us_per_msg": per_msg,
        "top_functions": [(k, v / p.busy) for k, v in p.top_functions(15)],
        "top_libraries": [(k, v / p.busy) for k, v in p.top_libraries(12)],
        "call_outs": dict(
            sorted(((k, v / p.busy) for k, v in p.call_outs.items()), key=lambda kv: -kv[1])
        ),
        "text_path": str(text_path.relative_to(RUN_DIR.parents[1])),
        "tree_head": "\n".join(p.text.splitlines()[:60]),
    }


def _us(run: dict[str, Any], who: str = "self") -> float:
    return float(run["cpu_us"].get(who, math.nan))


def _met(passed: bool) -> str:
    return "met" if passed else "**missed**"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The report's summary rows: CPU per message, worker scaling, the fake's own CPU."""
    spd = results.get("speed")
    if not spd:
        return []
    runs = spd["runs"]
    lean, sdk, b8, b32 = runs["lean"], runs["sdk"], runs["batch8"], runs["batch32"]
    fake = _us(lean, "fake")
    return [
        (
            "8. CPU per message in modstream's process, single calls (latency 0)",
            f"{_us(lean):,.0f} us (SDK path {_us(sdk):,.0f} us)",
            f"<= {TARGETS['single_us']:.0f} us",
            _met(_us(lean) <= TARGETS["single_us"]),
        ),
        (
            "8. CPU per message, batch size 8",
            f"{_us(b8):,.0f} us",
            f"<= {TARGETS['batch8_us']:.0f} us",
            _met(_us(b8) <= TARGETS["batch8_us"]),
        ),
        ("8. CPU per message, batch size 32", f"{_us(b32):,.0f} us", "(reported)", ""),
        (
            "8. msg/s, --workers 2 / one worker (latency 0)",
            f"{spd['workers_ratio']:.2f}x ({runs['workers2']['rate']:,.0f} vs "
            f"{lean['rate']:,.0f} msg/s)",
            f">= {TARGETS['workers']}x",
            _met(spd["workers_ratio"] >= TARGETS["workers"]),
        ),
        (
            "8. the fake's CPU per request, benchmark mode (single calls)",
            f"{fake:,.0f} us",
            f"< {TARGETS['fake_us']:.0f} us",
            _met(fake < TARGETS["fake_us"]),
        ),
        (
            "8. the broker's CPU per message (single calls)",
            f"{_us(lean, 'broker'):,.0f} us",
            "(reported)",
            "",
        ),
    ]


def _cores(cores: dict[str, float]) -> str:
    order = ("self", "fake", "broker", "others", "machine")
    return ", ".join(f"{k} {cores[k]:.2f}" for k in order if k in cores)


def markdown(results: dict[str, Any]) -> list[str]:
    """The report's section."""
    spd = results.get("speed")
    if not spd:
        return []
    out = [
        "## 8. Speed: modstream's own CPU per message",
        "",
        f"One backlog of {spd['backlog']:,} messages; each run reads it in its own group for "
        f"{spd['run_s']:.0f} s after its first verdict, against the fake in benchmark mode "
        "(`MODSTREAM_FAKE_BENCHMARK=true`) with latency 0, so the model is never the bound. "
        "Concurrency 32 (per worker), the other settings at their defaults, uvloop installed. "
        "CPU per message is per verdict, in the run's steady-state window; for `--workers 2` "
        "it is the whole process tree's (supervisor and workers), and its window starts at "
        "the group's last partition assignment (the first worker up takes every partition "
        "until the second joins; that rebalance's stall is start-up, not speed). "
        "`tests/benchmarks/speed.py`.",
        "",
        "| run | msg/s | modstream CPU us/msg | fake CPU us/msg | broker CPU us/msg | "
        "cores busy | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in spd["runs"].values():
        out.append(
            f"| {run['label']} | {run['rate']:,.0f} | **{_us(run):,.0f}** | "
            f"{_us(run, 'fake'):,.0f} | {_us(run, 'broker'):,.0f} | {_cores(run['cores'])} | "
            f"{run['maxrss_mb']:.0f} |"
        )
    out += [
        "",
        f"`--workers 2` against one worker: **{spd['workers_ratio']:.2f}x**. The machine's "
        "cores are shared with the broker and the fake (the 'cores busy' column): two "
        "workers can only go as fast as the cores the other two leave them.",
        "",
    ]
    out += _profiles(spd.get("profiles", {}))
    return out


def _profiles(profiles: dict[str, Any]) -> list[str]:
    shown = [(title, profiles[key]) for key, title, _ in PROFILES if profiles.get(key)]
    if not shown:
        return []
    titles = " | ".join(title for title, _ in shown)
    rule = "|---" * (len(shown) + 1) + "|"
    out = [
        "### Where the time goes: SDK path, lean path, lean at batch 8 (pyinstrument)",
        "",
        "`python -m pyinstrument -r pyisession -o .run/bench/profile-<run>.pyisession -m "
        "consumer consume --exit-when-idle 3` on the same backlog, stdlib event loop. Shares "
        "are of the steady-state busy time (start-up and `epoll` idle left out); us/msg is "
        "that share of the busy time spread over the run's verdicts, so it includes the "
        "profiler's own overhead and reads higher than the CPU figures above.",
        "",
        f"| | {titles} |",
        rule,
    ]
    for field, text in (
        ("verdicts", "verdicts"),
        ("rate_under_profiler", "msg/s under the profiler"),
        ("busy_s", "busy s"),
        ("idle_s", "idle s"),
        ("busy_us_per_msg", "busy us/msg"),
    ):
        out.append(f"| {text} | " + " | ".join(f"{p[field]:,.1f}" for _, p in shown) + " |")
    out += [
        "",
        "Inclusive time of named calls (outermost call only): share of busy time (us/msg).",
        "",
        f"| call | {titles} |",
        rule,
    ]

    def cell(p: dict[str, Any], name: str) -> str:
        share = p["call_outs"].get(name)
        return "-" if share is None else f"{share:.1%} ({share * p['busy_us_per_msg']:,.0f})"

    names = list(dict.fromkeys(name for _, p in shown for name in p["call_outs"]))
    for name in names:
        if max(p["call_outs"].get(name, 0) for _, p in shown) >= 0.005:
            out.append(f"| {name} | " + " | ".join(cell(p, name) for _, p in shown) + " |")
    for title, p in shown:
        out += ["", f"Self time by library, {title}:", "", "| library | share |", "|---|---|"]
        out += [f"| {k} | {v:.1%} |" for k, v in p["top_libraries"]]
        out += ["", f"Self time by function, {title}:", "", "| function | share |", "|---|---|"]
        out += [f"| `{k}` | {v:.1%} |" for k, v in p["top_functions"]]
        out += [
            "",
            f"<details><summary>Call tree (head), {title}; full tree: `{p['text_path']}`</summary>",
            "",
            "```",
            p["tree_head"],
            "```",
            "</details>",
        ]
    out.append("")
    return out
