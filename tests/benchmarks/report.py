"""BENCHMARKS.md and the throughput plot, written from one run's results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tests.benchmarks import batching, ordering, shadow, speed

TARGETS = {
    "latency": 0.95,
    "sequential": 30.0,
    "overhead": 0.5,
    "memory_ratio": 1.2,
    "memory_mb": 300.0,
    "tpm_share": 0.90,
    "tpm_429": 0.01,
}


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


def _f(value: float, digits: int = 1) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:,.{digits}f}")
    )


def _cores(cores: dict[str, float]) -> str:
    order = ("self", "fake", "broker", "others", "machine")
    return ", ".join(f"{k} {cores[k]:.2f}" for k in order if k in cores)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, met?) for every target the run measured."""
    rows: list[tuple[str, str, str, str]] = []
    if lat := results.get("latency"):
        for p in lat["points"]:
            rows.append(
                (
                    f"1. throughput / (C/L), C = {p['concurrency']}, "
                    f"L = {lat['latency_ms']:.0f} ms",
                    f"{p['ratio']:.3f} ({p['rate']:.0f} of {p['ideal']:.0f} msg/s)",
                    f">= {TARGETS['latency']}",
                    _ok(p["ratio"] >= TARGETS["latency"]),
                )
            )
    if seq := results.get("sequential"):
        rows.append(
            (
                "2. modstream (C = 64) / sequential seed consumer",
                f"{seq['ratio']:.1f}x ({seq['modstream_c64']['rate']:.0f} vs "
                f"{seq['sequential']['rate']:.2f} msg/s)",
                f">= {TARGETS['sequential']:.0f}x",
                _ok(seq["ratio"] >= TARGETS["sequential"]),
            )
        )
    if ovh := results.get("overhead"):
        ours, raw = ovh["modstream"], ovh["passthrough"]
        rows.append(
            (
                "3. modstream / raw pass-through, latency 0",
                f"{ovh['ratio']:.4f} ({ours['rate']:.0f} vs {raw['rate']:,.0f} msg/s)",
                f">= {TARGETS['overhead']}",
                _ok(ovh["ratio"] >= TARGETS["overhead"]),
            )
        )
        rows.append(
            (
                "3. CPU per message in modstream's process",
                f"{ours['cpu_us'].get('self', math.nan):,.0f} us",
                "(reported)",
                "",
            )
        )
    if mem := results.get("memory"):
        small, big = mem["small"], mem["big"]
        rows.append(
            (
                f"4. peak RSS {big['backlog']:,} / {small['backlog']:,} backlog",
                f"{mem['ratio']:.2f} ({big['maxrss_mb']:.0f} / {small['maxrss_mb']:.0f} MB)",
                f"<= {TARGETS['memory_ratio']}",
                _ok(mem["ratio"] <= TARGETS["memory_ratio"]),
            )
        )
        worst = max(small["maxrss_mb"], big["maxrss_mb"])
        rows.append(
            (
                "4. peak RSS, absolute",
                f"{worst:.0f} MB",
                f"< {TARGETS['memory_mb']:.0f} MB",
                _ok(worst < TARGETS["memory_mb"]),
            )
        )
    if tpm := results.get("tpm"):
        if "share" in tpm:
            rows.append(
                (
                    f"5. achieved tokens/min / L (L = {tpm['limit']:,})",
                    f"{tpm['share']:.1%} ({tpm['achieved_tpm']:,.0f})",
                    f">= {TARGETS['tpm_share']:.0%}",
                    _ok(tpm["share"] >= TARGETS["tpm_share"]),
                )
            )
        rows.append(
            (
                "5. share of calls answered 429",
                f"{tpm['share_429']:.2%} ({tpm['rate_limited']} of {tpm['calls']})",
                f"< {TARGETS['tpm_429']:.0%}",
                _ok(tpm["share_429"] < TARGETS["tpm_429"]),
            )
        )
    rows += batching.summary_rows(results)
    rows += ordering.summary_rows(results)
    rows += shadow.summary_rows(results)
    rows += speed.summary_rows(results)
    return rows


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput against concurrency, with Little's law C/L; False if nothing to plot."""
    lat = results.get("latency")
    if not lat:
        return False
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    latency_s = lat["latency_ms"] / 1000
    cs = [p["concurrency"] for p in lat["points"]]
    rates = [p["rate"] for p in lat["points"]]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    line = [1, *cs, max(cs) * 1.5]
    ax.plot(line, [c / latency_s for c in line], "--", color="grey", label="C / L (Little's law)")
    ax.plot(cs, rates, "o-", color="tab:blue", lw=2, label="modstream, achieved")
    for c, r, p in zip(cs, rates, lat["points"], strict=True):
        ax.annotate(f"{p['ratio']:.2f}", (c, r), textcoords="offset points", xytext=(6, -14))
    if seq := results.get("sequential"):
        ax.plot([1], [seq["sequential"]["rate"]], "s", color="tab:red", label="sequential seed")
    if ovh := results.get("overhead"):
        ceiling = ovh["modstream"]["rate"]
        ax.axhline(ceiling, color="tab:orange", lw=1, label="modstream at latency 0 (CPU bound)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency C (model calls in flight)")
    ax.set_ylabel("messages / second")
    ax.set_title(f"modstream throughput, fake model latency L = {lat['latency_ms']:.0f} ms (exp.)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def markdown(
    results: dict[str, Any],
    *,
    command: str,
    machine: dict[str, str],
    run: dict[str, Any],
    plot_link: str | None,
) -> str:
    """The whole BENCHMARKS.md."""
    out: list[str] = ["# modstream benchmarks", ""]
    out += [
        "Generated by the benchmark itself; do not edit by hand. Figures are from one run, "
        "measured side by side on one machine.",
        "",
        f"- **Command:** `{command}` (`make bench`)",
        f"- **Date:** {run['date']}; whole run {run['wall_s'] / 60:.1f} min"
        + (" (`--quick`: smoke sizes, not for quoting)" if run["quick"] else ""),
        f"- **Sections:** {', '.join(run['sections'])}",
        f"- **Load average (1/5/15 min):** at start {run['load_start']}, at end {run['load_end']}",
        "",
        "| machine | |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    out += [
        "",
        "Everything runs on this machine at once: the broker (JVM), the fake OpenAI server, "
        "modstream and the harness share its cores. 'Cores busy' columns below say who used "
        "them during each measurement window; `others` is everything outside the benchmark "
        "(other users' jobs on a shared host).",
        "",
        "## Summary",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    out.append("")
    if plot_link:
        out += [f"![throughput versus concurrency]({plot_link})", ""]
    out += _method()
    if lat := results.get("latency"):
        out += _latency(lat, results.get("sequential"))
    if ovh := results.get("overhead"):
        out += _overhead(ovh)
    if mem := results.get("memory"):
        out += _memory(mem)
    if tpm := results.get("tpm"):
        out += _tpm(tpm)
    out += batching.markdown(results)
    out += ordering.markdown(results)
    out += shadow.markdown(results)
    out += speed.markdown(results)
    if run["failures"]:
        out += ["## Problems during the run", ""]
        out += ["```", *[f.strip() for f in run["failures"]], "```", ""]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in run["section_s"].items())
    out += [f"Section wall times: {times}; broker start {run['broker_s']:.0f} s.", ""]
    return "\n".join(out)


def _method() -> list[str]:
    return [
        "## How it is measured",
        "",
        "- A dedicated Apache Kafka broker (`deploy/kafka/kafka.sh`, port 39192, data in "
        "`.run/kafka-bench`, wiped first) and the fake OpenAI server "
        "(`python -m consumer fake-openai`) over real HTTP, in its benchmark mode "
        "(`MODSTREAM_FAKE_BENCHMARK=true`: cached reply plans, orjson, its own lean HTTP "
        "server) except in sections 5 and 6, which need its rate limits and token counts.",
        "- modstream runs as its own process, `python -m consumer consume --exit-when-idle 3`, "
        "configured by `MODSTREAM_*` variables, so its CPU and RSS are its own. Input: small "
        "JSON requests (~110 bytes, `consumer.tools.sample.corpus`, no poison), 6 partitions.",
        "- Throughput is read back from the broker: the Kafka timestamps of the verdicts a run "
        "wrote. The steady-state window runs from the 5th to the 95th percentile verdict "
        "(of those written before a timed run was stopped with SIGTERM), which leaves out "
        "start-up, group join, ramp and final drain.",
        "- CPU per message: user + system CPU of a process inside the window (sampled from "
        "`/proc/<pid>/stat` every 100 ms) divided by the verdicts in the window.",
        "- Peak RSS is the consumer's `VmHWM` (`/proc/<pid>/status`, sampled every 100 ms "
        "until it exits). Not `ru_maxrss` from `wait4`/`RUSAGE_CHILDREN`: the kernel folds "
        "the parent's RSS at fork/exec into the child's `ru_maxrss`, so a consumer spawned "
        "by a harness holding 700 MB of read-back records reported 716 MB in an early run "
        "while its own high-water mark was ~175 MB.",
        "",
    ]


def _latency(lat: dict[str, Any], seq: dict[str, Any] | None) -> list[str]:
    out = [
        f"## 1. Latency-bound: Little's law (L = {lat['latency_ms']:.0f} ms, exponential)",
        "",
        "`MODSTREAM_CONCURRENCY=C`, `MODSTREAM_MAX_IN_FLIGHT=max(256, 6C)` (a message stays "
        "in the window from fetch to commit, about L plus up to the 1 s commit interval, so "
        "C/L messages a second need about C/L x (L + 1 s) = 6C of window); each point runs "
        "for a fixed time after its first verdict on a backlog that cannot run dry at C/L.",
        "",
        "| C | C/L msg/s | achieved msg/s | ratio | verdicts in window | window s | "
        "modstream CPU us/msg | cores modstream needs at C/L | fake CPU us/msg | "
        "broker CPU us/msg | cores busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in lat["points"]:
        need = p["cpu_us"].get("self", math.nan) * p["ideal"] / 1e6
        out.append(
            f"| {p['concurrency']} | {p['ideal']:.0f} | {p['rate']:.1f} | {p['ratio']:.3f} | "
            f"{p['in_window']:,} | {p['window_s']:.1f} | {_f(p['cpu_us'].get('self'), 0)} | "
            f"{_f(need, 2)} | {_f(p['cpu_us'].get('fake'), 0)} | "
            f"{_f(p['cpu_us'].get('broker'), 0)} | {_cores(p['cores'])} |"
        )
    out += [
        "",
        "'Cores modstream needs at C/L' is its measured CPU per message times C/L. One "
        "modstream process is one event loop, so it can use at most one core: where that "
        "figure is above 1 (or above what the other processes leave free), C/L is out of "
        "reach for one process at that CPU cost per message, whatever the concurrency "
        "(`--workers N` spreads it over N processes, section 8).",
        "",
    ]
    if seq:
        s = seq["sequential"]
        out += [
            "## 2. Against the seed's one-at-a-time pattern",
            "",
            "`tests/benchmarks/baselines.py sequential`: an aiokafka consumer that, for each "
            "message, makes one `chat.completions.create` call with modstream's prompt and "
            "reply schema, publishes the verdict with `send_and_wait` and commits. Same fake, "
            "same latency.",
            "",
            "| consumer | messages | msg/s | CPU us/msg |",
            "|---|---|---|---|",
            f"| sequential seed | {seq['messages']} | {s['rate']:.2f} (1/L = "
            f"{seq['ideal_sequential']:.1f}) | {_f(s['cpu_us'].get('self'), 0)} |",
            f"| modstream, C = 64 | {seq['modstream_c64']['in_window']:,} (window) | "
            f"{seq['modstream_c64']['rate']:.1f} | "
            f"{_f(seq['modstream_c64']['cpu_us'].get('self'), 0)} |",
            "",
            f"Ratio: **{seq['ratio']:.1f}x**.",
            "",
        ]
    return out


def _overhead(ovh: dict[str, Any]) -> list[str]:
    ours, raw = ovh["modstream"], ovh["passthrough"]
    out = [
        "## 3. Overhead-bound: an instant model against the raw Kafka ceiling",
        "",
        f"Fake latency 0; one backlog of {ovh['backlog']:,} messages (produced in "
        f"{ovh['produce_s']:.1f} s), read by each consumer in its own group. modstream with "
        "its defaults (concurrency 32, max in flight 256) for a fixed time; the pass-through "
        "(`baselines.py passthrough`: consume -> idempotent `acks=all` produce of the same "
        "value, commit after the batch's acks, no model call) to the end.",
        "",
        "| consumer | msg/s | CPU us/msg (own) | fake CPU us/msg | broker CPU us/msg | "
        "cores busy | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        f"| modstream | {ours['rate']:,.0f} | {_f(ours['cpu_us'].get('self'), 0)} | "
        f"{_f(ours['cpu_us'].get('fake'), 0)} | {_f(ours['cpu_us'].get('broker'), 0)} | "
        f"{_cores(ours['cores'])} | {ours['maxrss_mb']:.0f} |",
        f"| raw pass-through | {raw['rate']:,.0f} | {_f(raw['cpu_us'].get('self'), 1)} | - | "
        f"{_f(raw['cpu_us'].get('broker'), 1)} | {_cores(raw['cores'])} | "
        f"{raw['maxrss_mb']:.0f} |",
        "",
        f"Ratio modstream / pass-through: **{ovh['ratio']:.4f}**. The pass-through's window "
        f"is short ({raw['window_s']:.1f} s for {raw['in_window']:,} records), so its "
        "figure is rough; it is two orders of magnitude away either way.",
        "",
    ]
    side = ours["cpu_us"].get("fake", math.nan) + ours["cpu_us"].get("broker", math.nan)
    cores = ovh.get("nproc") or 2
    bound = cores / side * 1e6 if side else math.nan
    out += [
        f"A bound no consumer making one model call per message can pass here: the fake "
        f"server and the broker alone spend {_f(side, 0)} us of CPU per message on the same "
        f"{cores} cores, so even a consumer costing nothing would top out near "
        f"{_f(bound, 0)} msg/s, {_f(bound / raw['rate'] if raw['rate'] else math.nan, 3)} of "
        "the pass-through.",
        "",
    ]
    out += ["Where modstream's CPU goes, on both call paths: section 8.", ""]
    return out


def _memory(mem: dict[str, Any]) -> list[str]:
    out = [
        "## 4. Memory: peak RSS while draining a backlog",
        "",
        "Fake latency 0, modstream defaults (concurrency 32, max in flight 256), each backlog "
        "drained to the end (`--exit-when-idle 3`); peak RSS is the consumer's `VmHWM`.",
        "",
    ]
    if mem.get("note"):
        out += [mem["note"], ""]
    out += [
        "| backlog | produced in s | verdicts | run s | msg/s | peak RSS MB | peak reached | "
        "RSS MB along the way |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in (mem["small"], mem["big"]):
        marks = ", ".join(
            f"after {int(k):,} verdict{'s' if int(k) > 1 else ''}: {v:.0f}"
            for k, v in run["rss_mb_after"].items()
        )
        drained = f"{run['drained']:,}" + ("" if run["complete"] else " (stopped)")
        at = "" if run["peak_at_s"] is None else f" at {run['peak_at_s']:.1f} s"
        out.append(
            f"| {run['backlog']:,} | {run['produce_s']:.1f} | {drained} | {run['drain_s']:.0f} | "
            f"{run['rate']:.0f} | {run['maxrss_mb']:.0f} | {run['peak_phase']}{at} | {marks} |"
        )
    out += ["", f"Ratio: **{mem['ratio']:.2f}**.", ""]
    return out


def _tpm(tpm: dict[str, Any]) -> list[str]:
    out = [
        "## 5. A tokens-per-minute budget",
        "",
        f"The fake enforces `tpm={tpm['limit']:,}` (it charges prompt + max_tokens at "
        "admission and refunds the unused completion); modstream gets "
        f"`MODSTREAM_TPM={tpm['limit']:,}`, concurrency 32, L = 200 ms. Tokens are "
        "prompt + completion from the usage events; the window starts 5 s after the "
        "first L tokens were used (the initial full bucket is spent) and ends when the run "
        "was stopped.",
        "",
    ]
    if "share" in tpm:
        out += [
            "| bucket spent after s | window s | calls in window | tokens/call | achieved "
            "tokens/min | of L | 429s (run) |",
            "|---|---|---|---|---|---|---|",
            f"| {tpm['bucket_spent_after_s']:.1f} | {tpm['window_s']:.1f} | "
            f"{tpm['window_calls']} | {tpm['tokens_per_call']:.0f} | "
            f"{tpm['achieved_tpm']:,.0f} | {tpm['share']:.1%} | "
            f"{tpm['rate_limited']} of {tpm['calls']} ({tpm['share_429']:.2%}) |",
            "",
        ]
    out += [f"The fake's own count of outcomes: `{tpm['fake_outcomes']}`.", ""]
    return out
