"""The two yardsticks modstream is measured against, each run as its own process.

``sequential``: the consumer a seed project shows, one message at a time: read, one
``chat.completions.create`` with modstream's own prompt and reply schema, publish the verdict
with ``send_and_wait``, commit. Its throughput is 1 / (model latency + overheads).

``passthrough``: the raw Kafka ceiling: consume -> produce with no model call at all, the same
durability promise as modstream (idempotent ``acks=all`` producer, offsets committed only after
the outputs of a fetched batch are acknowledged).

    python -m tests.benchmarks.baselines sequential  --bootstrap B --input T --output O
        --group G --base-url URL [--idle 3]
    python -m tests.benchmarks.baselines passthrough --bootstrap B --input T --output O
        --group G [--idle 3]

Both stop once nothing arrived for ``--idle`` seconds (after the first record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from openai import AsyncOpenAI

from consumer.model.policy import PromptBuilder, load_policy, load_prompt


def _consumer(args: argparse.Namespace, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **extra,
    )


def _idle(last: float | None, idle: float) -> bool:
    return last is not None and time.monotonic() - last >= idle


async def sequential(args: argparse.Namespace) -> int:
    """One message at a time, as the seed writes it."""
    builder = PromptBuilder(load_policy(None), load_prompt(None))
    response_format: Any = builder.policy.response_format
    client = AsyncOpenAI(base_url=args.base_url, api_key="sk-bench-not-a-real-key")
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    consumer = _consumer(args, max_poll_records=1)
    done = 0
    last: float | None = None
    async with client, producer, consumer:
        while not _idle(last, args.idle):
            batch = await consumer.getmany(timeout_ms=200, max_records=1)
            for records in batch.values():
                for record in records:
                    request = json.loads(record.value or b"{}")
                    completion = await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=builder.messages(request["text"], request.get("context")),  # type: ignore[arg-type]
                        response_format=response_format,
                        max_tokens=400,
                        temperature=0.0,
                    )
                    verdict = {
                        "id": request["id"],
                        "partition": record.partition,
                        "offset": record.offset,
                        "reply": json.loads(completion.choices[0].message.content or "{}"),
                        "usage": completion.usage.model_dump() if completion.usage else None,
                    }
                    await producer.send_and_wait(args.output, json.dumps(verdict).encode())
                    await consumer.commit()
                    done += 1
                    last = time.monotonic()
    print(f"sequential: {done} messages")
    return 0


async def passthrough(args: argparse.Namespace) -> int:
    """Consume -> produce, no model call: the most any consumer here can do."""
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    consumer = _consumer(args)
    done = 0
    last: float | None = None
    async with producer, consumer:
        while not _idle(last, args.idle):
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                continue
            futures = [
                await producer.send(args.output, record.value, key=record.key)
                for records in batch.values()
                for record in records
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
            last = time.monotonic()
    print(f"passthrough: {done} messages")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.baselines")
    parser.add_argument("kind", choices=["sequential", "passthrough"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--base-url")
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args(argv)
    run = sequential if args.kind == "sequential" else passthrough
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
