"""Benchmark section ``shadow``: production throughput with shadow at 20 % against without.

One backlog is read twice, each in its own group, against the same fake (L = 200 ms,
exponential) at concurrency 64: once without shadow, once with ``MODSTREAM_SHADOW_SHARE=0.2``
and a candidate model (the default budget share, 0.2). Throughput is the steady-state rate of
the production verdicts written (see the method above); the shadow run's shadow verdicts are
counted too. Target: production with shadow within 5 % of production without.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tests.benchmarks.infra import create_topics, fake_server, produce_backlog, read_records

if TYPE_CHECKING:
    from tests.benchmarks.sections import Bench

CONCURRENCY = 64
SHARE = 0.2
CANDIDATE = "gpt-4.1-mini"
TARGET = 0.95  # msg/s with shadow / msg/s without


async def shadow(bench: Bench) -> dict[str, Any]:
    """Without shadow, then with shadow at 20 %, on the same backlog and fake."""
    opts = bench.options
    ideal = CONCURRENCY / (opts.latency_ms / 1000)
    count = math.ceil(ideal * (opts.point_s + 8) * 1.25)  # cannot run dry at C/L
    topic = "shadow.in"
    await create_topics(bench.broker.bootstrap, {topic: 6})
    await produce_backlog(bench.broker.bootstrap, topic, count, 6)
    bench.say(f"produced {count:,} messages to {topic}")
    runs: dict[str, Any] = {}
    with fake_server(latency_ms=opts.latency_ms, latency_dist="exponential") as fake:
        for mode, share in (("without", 0.0), ("with", SHARE)):
            name = f"shadow-{mode}"
            if share:
                await create_topics(
                    bench.broker.bootstrap,
                    {f"{name}.verdicts.shadow": 3, f"{name}.verdicts.shadow.usage": 3},
                )
            m = await bench.modstream(
                name,
                topic,
                fake,
                run_for=opts.point_s,
                concurrency=CONCURRENCY,
                shadow_share=share,
                shadow_model=CANDIDATE,
            )
            runs[mode] = m.public()
            if share:
                shadows = await read_records(
                    bench.broker.bootstrap, f"{name}.verdicts.shadow", values=False
                )
                runs[mode]["shadow_verdicts"] = len(shadows)
            bench.say(f"shadow {mode}: {m.rate:.1f} msg/s ({m.in_window} in window)")
    ratio = runs["with"]["rate"] / runs["without"]["rate"] if runs["without"]["rate"] else 0.0
    bench.say(f"with / without shadow: {ratio:.3f}")
    return {
        "concurrency": CONCURRENCY,
        "share": SHARE,
        "latency_ms": opts.latency_ms,
        "backlog": count,
        "ideal": ideal,
        "runs": runs,
        "ratio": ratio,
    }


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The report's summary row: production throughput with shadow against without."""
    found = results.get("shadow")
    if not found:
        return []
    on, off = found["runs"]["with"], found["runs"]["without"]
    return [
        (
            f"9. production msg/s with shadow at {found['share']:.0%} / without "
            f"(C = {found['concurrency']}, L = {found['latency_ms']:.0f} ms)",
            f"{found['ratio']:.3f} ({on['rate']:.0f} vs {off['rate']:.0f} msg/s)",
            f">= {TARGET}",
            "met" if found["ratio"] >= TARGET else "**missed**",
        )
    ]


def markdown(results: dict[str, Any]) -> list[str]:
    """The report's section."""
    found = results.get("shadow")
    if not found:
        return []
    out = [
        "## 9. Shadow evaluation: production throughput with a candidate beside it",
        "",
        f"One backlog of {found['backlog']:,} requests, read twice, each in its own group, "
        f"against the same fake (L = {found['latency_ms']:.0f} ms, exponential) at concurrency "
        f"{found['concurrency']} (C/L = {found['ideal']:.0f} msg/s), each for a fixed time "
        f"after its first verdict: without shadow, then with `MODSTREAM_SHADOW_SHARE="
        f"{found['share']}` and `MODSTREAM_SHADOW_MODEL={CANDIDATE}` (the candidate on its own "
        "limiter, 20 % of the concurrency). `tests/benchmarks/shadow.py`.",
        "",
        "| shadow | production msg/s | of C/L | verdicts in window | window s | "
        "modstream CPU us/msg | shadow verdicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("without", "with"):
        r = found["runs"][mode]
        cpu = r["cpu_us"].get("self")
        out.append(
            f"| {mode} | {r['rate']:.1f} | {r['rate'] / found['ideal']:.3f} | "
            f"{r['in_window']:,} | {r['window_s']:.1f} | "
            f"{'n/a' if cpu is None else f'{cpu:.0f}'} | {r.get('shadow_verdicts', '-')} |"
        )
    out += ["", f"Ratio with / without: **{found['ratio']:.3f}**.", ""]
    return out
