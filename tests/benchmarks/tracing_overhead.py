"""What tracing costs per message: ``python -m tests.benchmarks.tracing_overhead [N]``.

One record at a time through the real :class:`~consumer.pipeline.stages.Stages` (decode,
admit, a fake classifier answering at once with one usage event, the real publisher's
serialization, a delivery that drops the records), each input with a ``traceparent`` and a
``tracestate``: tracing off (:data:`~consumer.ops.tracing.OFF`), and on (the SDK's
BatchSpanProcessor, as in production, over an exporter that drops what it is handed, so the
figure is the consumer's own cost, not a collector's). Best of five rounds of N messages each;
then, alone, the one check tracing off costs a record and the header carrying done either way.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

from aiokafka.structs import TopicPartition
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from consumer.ops.logs import configure_logging
from consumer.ops.metrics import Metrics
from consumer.ops.tracing import OFF, Tracing
from consumer.pipeline.carry import carried, carry_names
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.publish import OutRecord, Publisher, Topics
from consumer.pipeline.source import Envelope
from consumer.pipeline.stages import Stages
from consumer.settings import load_settings
from tests.unit.kafka_fakes import FakeClassifier, admitter, request_bytes

PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = (("traceparent", PARENT), ("tracestate", b"vendor=v1"))


class Dropped(SpanExporter):
    """An exporter that takes every span and sends it nowhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullDelivery:
    """Takes the records and acknowledges at once."""

    async def deliver(self, envelope: Envelope, records: Sequence[OutRecord]) -> None:
        pass

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass

    def held(self, tracker: OffsetTracker) -> int:
        return tracker.held()

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        pass


@asynccontextmanager
async def traced(on: bool) -> AsyncIterator[Tracing]:
    if not on:
        yield OFF
        return
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    try:
        yield Tracing(provider.get_tracer("bench"), group="g")
    finally:
        provider.shutdown()


async def per_message_us(n: int, *, on: bool) -> float:
    """The best of five rounds' mean time of one message through Stages.run, in µs."""
    async with traced(on) as tracing:
        classifier = FakeClassifier()
        stages = Stages(
            load_settings(),
            admitter=admitter(),
            classify=classifier.classify,
            publisher=Publisher(
                None,  # records() only: never sends
                Topics("verdicts", "usage", "dlq"),
                carry=(),
                inject=tracing.injector,
            ),
            delivery=NullDelivery(),
            metrics=Metrics(),
            policy_version=classifier.policy.version,
            tracing=tracing,
        )
        envelopes = [
            Envelope("in", 0, i, None, request_bytes(i), HEADERS, 1_700_000_000_000)
            for i in range(n)
        ]
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for envelope in envelopes:
                await stages.run(envelope)
            best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def off_calls_ns(n: int) -> tuple[float, float]:
    """With tracing off, per message, in ns: the one check Stages.run makes, and carrying the
    trace headers (item 5's work, done whether tracing is on or off)."""
    names = carry_names(())
    headers = HEADERS
    check = carry = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            if OFF.enabled:
                raise AssertionError
        check = min(check, (time.perf_counter() - started) / n)
        started = time.perf_counter()
        for _ in range(n):
            carried(headers, names)
        carry = min(carry, (time.perf_counter() - started) / n)
    return check * 1e9, carry * 1e9


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 5000
    configure_logging(load_settings(log_level="WARNING"))  # the debug lines would dominate
    off = asyncio.run(per_message_us(n, on=False))
    on = asyncio.run(per_message_us(n, on=True))
    print(f"Stages.run, {n} messages x 5 rounds, best round:")
    print(f"  tracing off: {off:8.1f} µs/message")
    print(f"  tracing on:  {on:8.1f} µs/message  (+{on - off:.1f} µs, {on / off - 1:+.0%})")
    check, carry = off_calls_ns(n * 20)
    print(f"  off: the tracing check alone {check:.0f} ns/message; carrying 2 trace headers")
    print(f"       (done on and off) {carry:.0f} ns/message")


if __name__ == "__main__":
    main(sys.argv[1:])
