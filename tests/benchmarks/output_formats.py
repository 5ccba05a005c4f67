"""What each output format costs: ``python -m tests.benchmarks.output_formats [N]``.

N verdicts and N usage events (every field set, as ``tests.output_events`` builds them)
through the real encoders of :mod:`consumer.pipeline.encode`: JSON, Avro (the schemas of
``schemas/avro.py``, parsed by fastavro) and JSON Schema (framed JSON). Best of five rounds;
reports the CPU time per event and the bytes per record value. No broker, no registry: the
schema ids are fixed, as they are once start-up has registered them.
"""

from __future__ import annotations

import sys
import time

import fastavro
from pydantic import BaseModel

from consumer.pipeline.encode import Encoder, JsonEncoder, RegistryEncoder, TopicSchema
from schemas import UsageEvent, Verdict
from schemas.avro import avro_schema
from tests import output_events


def encoders() -> dict[str, Encoder]:
    avro = {
        "v": TopicSchema(1, fastavro.parse_schema(avro_schema(Verdict))),
        "u": TopicSchema(2, fastavro.parse_schema(avro_schema(UsageEvent))),
    }
    return {
        "json": JsonEncoder(),
        "avro": RegistryEncoder(avro, avro=True),
        "json_schema": RegistryEncoder({"v": TopicSchema(1), "u": TopicSchema(2)}, avro=False),
    }


def measure(encoder: Encoder, events: list[tuple[str, BaseModel]]) -> tuple[float, float]:
    """Best-of-five microseconds per event, and mean bytes per value."""
    best = float("inf")
    size = 0
    for _ in range(5):
        started = time.perf_counter()
        size = sum(len(encoder.encode(topic, event)) for topic, event in events)
        best = min(best, time.perf_counter() - started)
    return best / len(events) * 1e6, size / len(events)


def main(n: int) -> None:
    events: list[tuple[str, BaseModel]] = []
    for i in range(n):
        events.append(("v", output_events.verdict(content_id=f"post-{i}")))
        events.append(("u", output_events.usage(content_id=f"post-{i}")))
    print(f"{n} verdicts + {n} usage events, best of 5 rounds")
    print("| format | µs per event | bytes per value |")
    print("|---|---:|---:|")
    for name, encoder in encoders().items():
        micros, size = measure(encoder, events)
        print(f"| {name} | {micros:.1f} | {size:.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
