"""Benchmark section ``ordering``: key-ordered throughput against unordered, same C and latency.

One backlog of requests with 50 distinct keys (the producer's default partitioner puts each key
on one partition) is read twice, each in its own group, against the same fake (latency 200 ms,
exponential): ``MODSTREAM_ORDERING=unordered`` and ``MODSTREAM_ORDERING=key``, both at
concurrency 32, each for a fixed time after its first verdict. Throughput is the steady-state
rate of the verdicts written (see the method above). The key run's verdicts are also checked
for order: every key's verdicts must sit in offset order in the output. Target: key order
within 20 % of unordered.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from consumer.tools.sample import corpus
from tests.benchmarks.infra import create_topics, fake_server, read_records

if TYPE_CHECKING:
    from tests.benchmarks.sections import Bench

KEYS = 50
CONCURRENCY = 32
PARTITIONS = 6
TARGET = 0.8  # key-ordered msg/s / unordered msg/s


async def produce_keyed(bootstrap: str, topic: str, count: int) -> None:
    """``count`` short requests keyed ``user-0`` … ``user-49`` in turn (partition by key)."""
    values = [r.value for r in corpus(count, seed=5, poison_share=0.0)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50)
    async with producer:
        futures = [
            await producer.send(topic, value, key=f"user-{i % KEYS}".encode())
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*futures)


async def ordering(bench: Bench) -> dict[str, Any]:
    """Unordered, then key-ordered, on the same keyed backlog and fake."""
    opts = bench.options
    ideal = CONCURRENCY / (opts.latency_ms / 1000)
    count = math.ceil(ideal * (opts.point_s + 8) * 1.25)  # cannot run dry at C/L
    topic = "order.in"
    await create_topics(bench.broker.bootstrap, {topic: PARTITIONS})
    await produce_keyed(bench.broker.bootstrap, topic, count)
    bench.say(f"produced {count:,} messages with {KEYS} keys to {topic}")
    runs: dict[str, Any] = {}
    with fake_server(latency_ms=opts.latency_ms, latency_dist="exponential") as fake:
        for mode in ("unordered", "key"):
            name = f"order-{mode}"
            m = await bench.modstream(
                name,
                topic,
                fake,
                run_for=opts.point_s,
                concurrency=CONCURRENCY,
                ordering=mode,
            )
            runs[mode] = {**m.public(), "out_of_order_keys": None}
            bench.say(f"ordering={mode}: {m.rate:.1f} msg/s ({m.in_window} in window)")
    runs["key"]["out_of_order_keys"] = await _out_of_order(bench, "order-key")
    ratio = runs["key"]["rate"] / runs["unordered"]["rate"] if runs["unordered"]["rate"] else 0.0
    bench.say(f"key / unordered: {ratio:.3f}")
    return {
        "keys": KEYS,
        "concurrency": CONCURRENCY,
        "latency_ms": opts.latency_ms,
        "backlog": count,
        "ideal": ideal,
        "runs": runs,
        "ratio": ratio,
    }


async def _out_of_order(bench: Bench, name: str) -> int:
    """Keys whose verdicts are not in offset order in the output (0 is right)."""
    offsets: dict[tuple[int, str | None], list[int]] = defaultdict(list)
    for _, value in await read_records(bench.broker.bootstrap, f"{name}.verdicts"):
        if value is None:
            continue
        source = json.loads(value)["source"]
        offsets[(source["partition"], source["key"])].append(source["offset"])
    # Each key's verdicts share an output partition (keyed by the input key), read in order.
    bad = sum(1 for seen in offsets.values() if seen != sorted(seen))
    if len(offsets) < KEYS:
        bench.failures.append(f"{name}: verdicts of only {len(offsets)} keys")
    if bad:
        bench.failures.append(f"{name}: {bad} keys published out of offset order")
    return bad


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The report's summary row: key-ordered throughput against unordered."""
    order = results.get("ordering")
    if not order:
        return []
    key, free = order["runs"]["key"], order["runs"]["unordered"]
    return [
        (
            f"7. msg/s with MODSTREAM_ORDERING=key / unordered ({order['keys']} keys, "
            f"C = {order['concurrency']}, L = {order['latency_ms']:.0f} ms)",
            f"{order['ratio']:.3f} ({key['rate']:.0f} vs {free['rate']:.0f} msg/s; "
            f"{key['out_of_order_keys']} keys out of order)",
            f">= {TARGET}",
            "met" if order["ratio"] >= TARGET and key["out_of_order_keys"] == 0 else "**missed**",
        )
    ]


def markdown(results: dict[str, Any]) -> list[str]:
    """The report's section."""
    order = results.get("ordering")
    if not order:
        return []
    out = [
        "## 7. Key-ordered mode against unordered",
        "",
        f"One backlog of {order['backlog']:,} requests with {order['keys']} keys (partitioned "
        "by key over 6 partitions), read by each mode in its own group against the same fake "
        f"(L = {order['latency_ms']:.0f} ms, exponential), concurrency {order['concurrency']} "
        "(C/L = "
        f"{order['ideal']:.0f} msg/s), each for a fixed time after its first verdict. In `key` "
        "mode a key's next message starts only once the previous one's outputs are "
        "acknowledged; different keys run concurrently. `tests/benchmarks/ordering.py`.",
        "",
        "| ordering | msg/s | of C/L | verdicts in window | window s | modstream CPU us/msg | "
        "keys out of offset order |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("unordered", "key"):
        r = order["runs"][mode]
        bad = "-" if r["out_of_order_keys"] is None else str(r["out_of_order_keys"])
        cpu = r["cpu_us"].get("self")
        out.append(
            f"| {mode} | {r['rate']:.1f} | {r['rate'] / order['ideal']:.3f} | "
            f"{r['in_window']:,} | {r['window_s']:.1f} | "
            f"{'n/a' if cpu is None else f'{cpu:.0f}'} | {bad} |"
        )
    out += ["", f"Ratio key / unordered: **{order['ratio']:.3f}**.", ""]
    return out
