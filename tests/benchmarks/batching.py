"""Benchmark section ``batching``: tokens per verdict at MODSTREAM_BATCH_SIZE 1, 8 and 32.

One backlog of short requests (the benchmark corpus, ~110-byte JSON, ~20 tokens of content)
is drained to the end three times, each run in its own consumer group against the same fake
(reset before each run), at batch sizes 1 (off), 8 and 32. Tokens come from the usage events the
run wrote (prompt + completion; a batch call's tokens are split over its messages, so the sum
is the provider's count) and are checked against the tokens the fake says it served; chat calls
are counted at the fake. The target: at 8, at most half the tokens per verdict of size 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from consumer.testing.fake_openai.admin import FakeAdmin
from tests.benchmarks.infra import fake_server, read_records

if TYPE_CHECKING:
    from tests.benchmarks.sections import Bench

SIZES = (1, 8, 32)
LATENCY_MS = 50.0
CONCURRENCY = 32
LINGER_MS = 20
TARGET = 0.5  # tokens per verdict at 8 / at 1


async def batching(bench: Bench) -> dict[str, Any]:
    """Drain one short backlog at each batch size; tokens, calls and cost per verdict."""
    count = 400 if bench.options.quick else 3000
    topic = "batch.in"
    await bench.backlog(topic, count)
    runs = []
    # The full fake: the check below needs its token statistics.
    with fake_server(latency_ms=LATENCY_MS, latency_dist="exponential", benchmark=False) as fake:
        async with FakeAdmin(fake.url) as admin:
            for size in SIZES:
                await admin.reset()
                name = f"batch-{size}"
                m = await bench.modstream(
                    name,
                    topic,
                    fake,
                    concurrency=CONCURRENCY,
                    batch_size=size,
                    batch_linger_ms=LINGER_MS,
                )
                stats = await admin.stats()
                usage = [
                    json.loads(value)
                    for _, value in await read_records(bench.broker.bootstrap, f"{name}.usage")
                    if value is not None
                ]
                run = _figures(size, m.outputs, usage, stats)
                run["rate"] = m.rate
                if run["usage_tokens"] != run["served_tokens"]:
                    bench.failures.append(
                        f"{name}: usage events say {run['usage_tokens']} tokens, the fake "
                        f"served {run['served_tokens']}"
                    )
                if m.outputs != count:
                    bench.failures.append(f"{name}: {m.outputs} verdicts for {count} inputs")
                bench.say(
                    f"batch size {size}: {run['tokens_per_verdict']:.0f} tokens/verdict, "
                    f"{run['chat_calls']} chat calls for {m.outputs} verdicts, "
                    f"{m.rate:.0f} msg/s"
                )
                runs.append(run)
    base = runs[0]["tokens_per_verdict"] or float("nan")
    for run in runs:
        run["of_size_1"] = run["tokens_per_verdict"] / base
    return {
        "messages": count,
        "latency_ms": LATENCY_MS,
        "concurrency": CONCURRENCY,
        "linger_ms": LINGER_MS,
        "runs": runs,
    }


def _figures(
    size: int, verdicts: int, usage: list[dict[str, Any]], stats: dict[str, Any]
) -> dict[str, Any]:
    prompt = sum(u["prompt_tokens"] for u in usage)
    completion = sum(u["completion_tokens"] for u in usage)
    cached = sum(u["cached_tokens"] for u in usage)
    cost = sum(u["cost_usd"] or 0.0 for u in usage)
    batches = {u["batch_id"] for u in usage if u.get("batch_id")}
    per = max(verdicts, 1)
    served = stats.get("tokens", {})
    calls = stats.get("by_path", {}).get("/v1/chat/completions", 0)
    return {
        "batch_size": size,
        "verdicts": verdicts,
        "usage_events": len(usage),
        "chat_calls": calls,
        "batched_calls": len(batches),
        "messages_per_call": verdicts / max(calls, 1),
        "prompt_per_verdict": prompt / per,
        "completion_per_verdict": completion / per,
        "cached_per_verdict": cached / per,
        "tokens_per_verdict": (prompt + completion) / per,
        "usd_per_1k": cost / per * 1000,
        "usage_tokens": [prompt, completion],
        "served_tokens": [served.get("prompt"), served.get("completion")],
    }


def _at(results: dict[str, Any], size: int) -> dict[str, Any] | None:
    return next((r for r in results["runs"] if r["batch_size"] == size), None)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The report's summary row: tokens per verdict at 8 against size 1."""
    bat = results.get("batching")
    if not bat or not (one := _at(bat, 1)) or not (eight := _at(bat, 8)):
        return []
    ratio = eight["of_size_1"]
    return [
        (
            "6. tokens per verdict, batch size 8 / batch size 1 (short messages)",
            f"{ratio:.3f} ({eight['tokens_per_verdict']:.0f} vs {one['tokens_per_verdict']:.0f})",
            f"<= {TARGET}",
            "met" if ratio <= TARGET else "**missed**",
        )
    ]


def markdown(results: dict[str, Any]) -> list[str]:
    """The report's section."""
    bat = results.get("batching")
    if not bat:
        return []
    out = [
        "## 6. Micro-batching: tokens per verdict on short messages",
        "",
        f"One backlog of {bat['messages']:,} short requests (the corpus above, ~20 tokens of "
        "content each) drained to the end at each `MODSTREAM_BATCH_SIZE`, each run in its own "
        f"group; `MODSTREAM_BATCH_LINGER_MS={bat['linger_ms']}`, concurrency "
        f"{bat['concurrency']}, fake latency {bat['latency_ms']:.0f} ms (exponential). Tokens are "
        "summed from the run's usage events (a batch call's tokens are split over its messages, "
        "adding up to the provider's count) and equal the tokens the fake served; chat calls "
        "are counted at the fake. `tests/benchmarks/batching.py`.",
        "",
        "| batch size | verdicts | chat calls | messages/call | prompt tokens/verdict | "
        "completion tokens/verdict | tokens/verdict | of size 1 | USD per 1k verdicts | "
        "msg/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bat["runs"]:
        out.append(
            f"| {r['batch_size']} | {r['verdicts']:,} | {r['chat_calls']:,} | "
            f"{r['messages_per_call']:.1f} | {r['prompt_per_verdict']:.0f} | "
            f"{r['completion_per_verdict']:.0f} | **{r['tokens_per_verdict']:.0f}** | "
            f"{r['of_size_1']:.3f} | {r['usd_per_1k']:.4f} | {r['rate']:.0f} |"
        )
    out += [
        "",
        "The system prompt and the policy's category list (about 500 tokens) are paid once per "
        "call, so they shrink per verdict with the batch; the reply (13 scores and a rationale "
        "per message) does not. The fake's prefix cache reports no cached tokens here (its "
        "threshold, like OpenAI's, is 1,024 tokens of identical prefix); with a real "
        "provider's caching the unbatched prompt would be partly discounted.",
        "",
    ]
    return out
