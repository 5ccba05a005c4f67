"""Tracing end to end: the real broker, the fake model over HTTP, modstream in-process.

A producer writes requests, most with a ``traceparent`` (each its own trace and span id) and a
``tracestate``, some without; all with a ``tenant`` header (allow-listed), an ``x-other`` one
(not) and a ``content-type`` (never carried over ours). The policy has a first tier, so a
message makes one moderation call and, when the moderation scores are unsure, chat calls; the
fake fails some calls with a 500, so some are retried.

Traced (``MODSTREAM_TRACING=on``, spans to an in-memory exporter through the tracing module's
test hook): one trace per input, continued from the producer's span; one model-call span per
usage event; every verdict and usage record's ``traceparent`` names that trace's publish span.
Off: no span at all, and an output's ``traceparent`` is the input's, byte for byte, or absent.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from consumer.app import serve
from consumer.kafka.ranges import Record, read_topics
from consumer.ops.tracing import export_to
from consumer.tools.sample import CLEAN, HARMFUL
from tests.e2e.harness import Run, assert_nothing_lost, new_run
from tests.e2e.test_tiering import tiered_policy
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

MESSAGES = 40
#: Every fourth input has no traceparent (nor tracestate).
UNTRACED = {i for i in range(MESSAGES) if i % 4 == 3}


def trace_id(i: int) -> str:
    return f"{i + 1:032x}"


def span_id(i: int) -> str:
    return f"{0xA000 + i:016x}"


def traceparent(i: int) -> bytes:
    return f"00-{trace_id(i)}-{span_id(i)}-01".encode()


def headers(i: int) -> list[tuple[str, bytes]]:
    out = [("tenant", f"t{i % 3}".encode()), ("x-other", b"no"), ("content-type", b"text/x")]
    if i not in UNTRACED:
        out += [("traceparent", traceparent(i)), ("tracestate", f"vendor=v{i}".encode())]
    return out


async def produce(run: Run) -> None:
    """Every fifth input harmful (the chat model is asked too), each with its headers."""
    producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, acks="all", linger_ms=10)
    async with producer:
        futures = []
        for i in range(MESSAGES):
            text = HARMFUL[i % len(HARMFUL)][1] if i % 5 == 0 else CLEAN[i % len(CLEAN)]
            value = json.dumps({"id": f"m{i}", "text": f"{text} (#{i})"}).encode()
            futures.append(
                await producer.send(
                    run.input_topic,
                    value,
                    key=f"k{i}".encode(),
                    partition=i % run.partitions,
                    headers=headers(i),
                )
            )
        await asyncio.gather(*futures)


async def outputs(run: Run) -> tuple[list[Record], list[Record]]:
    """The verdict and usage records, headers and all."""
    options = {"bootstrap_servers": run.bootstrap}
    verdicts = [r async for r in read_topics(options, [f"{run.name}.verdicts"])]
    usage = [r async for r in read_topics(options, [f"{run.name}.usage"])]
    return verdicts, usage


def index_of(record: Record) -> int:
    """The input index of an output record (its content id is ``m<i>``)."""
    content_id = json.loads(record.value)["content_id"]
    assert isinstance(content_id, str)
    return int(content_id.removeprefix("m"))


def names(record: Record) -> list[str]:
    return [k for k, _ in record.headers]


def header(record: Record, name: str) -> bytes | None:
    values = [v for k, v in record.headers if k == name]
    assert len(values) <= 1, (name, record.headers)
    return values[0] if values else None


async def run_traced(kafka_bootstrap: str, url: str, tmp_path: Path, tracing: str) -> Run:
    run = new_run(kafka_bootstrap, url, partitions=3)
    await run.create_topics()
    await produce(run)
    settings = run.settings(
        concurrency=8,
        tracing=tracing,
        carry_headers="tenant, missing",
        policy_file=tiered_policy(tmp_path),
    )
    await serve(settings, exit_when_idle=2)
    await assert_nothing_lost(run)  # one verdict per input, committed to the end
    return run


def assert_carried(record: Record, i: int, *, traced: bool) -> None:
    """Ours first and once each, then tenant, then the trace context; never x-other. Traced,
    an input with no traceparent gets one (its new trace's) after what it carries."""
    carried = ["tenant"] + ([] if i in UNTRACED else ["traceparent", "tracestate"])
    if traced and i in UNTRACED:
        carried.append("traceparent")
    assert names(record) == ["content-type", "modstream-schema", "modstream-event-id", *carried]
    assert header(record, "content-type") == b"application/json"
    assert header(record, "tenant") == f"t{i % 3}".encode()
    if i not in UNTRACED:
        assert header(record, "tracestate") == f"vendor=v{i}".encode()


async def test_each_input_is_one_trace_continued_from_its_producers_span(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    with fake_openai_server(latency_ms=5, seed=18, p_500=0.15) as url, export_to(exporter):
        run = await run_traced(kafka_bootstrap, url, tmp_path, "on")
    verdicts, usage = await outputs(run)
    spans = exporter.get_finished_spans()

    by_trace: dict[str, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        by_trace[f"{span.context.trace_id:032x}"].append(span)
    assert len(by_trace) == MESSAGES  # one trace per input, no stray spans

    # The record's span: a child of the producer's span, in the producer's trace.
    trace_of: dict[int, str] = {}
    publish_of: dict[str, str] = {}
    model_calls: Counter[str] = Counter()
    for trace, members in by_trace.items():
        [record] = [s for s in members if s.name == f"process {run.input_topic}"]
        [classify] = [s for s in members if s.name == "classify"]
        [publish] = [s for s in members if s.name == "publish"]
        calls = [s for s in members if s.kind is SpanKind.CLIENT]
        assert len(members) == 3 + len(calls)
        assert record.kind is SpanKind.CONSUMER and record.attributes is not None
        # Input i went to partition i % partitions, at offset i // partitions.
        partition = int(str(record.attributes["messaging.destination.partition.id"]))
        offset = record.attributes["messaging.kafka.offset"]
        assert isinstance(offset, int)
        i = offset * run.partitions + partition
        trace_of[i] = trace
        if i in UNTRACED:
            assert record.parent is None  # a trace of its own
        else:
            assert trace == trace_id(i)
            assert record.parent is not None and record.parent.is_remote
            assert f"{record.parent.span_id:016x}" == span_id(i)
            assert record.context.trace_state.get("vendor") == f"v{i}"
        for child in (classify, publish):
            assert child.parent is not None and child.parent.span_id == record.context.span_id
        for call in calls:
            assert call.parent is not None and call.parent.span_id == classify.context.span_id
        model_calls[trace] = len(calls)
        # Flags as the span has them (a new root trace also says its id is random: 03).
        flags = int(publish.context.trace_flags)
        publish_of[trace] = f"00-{trace}-{publish.context.span_id:016x}-{flags:02x}"
    assert len(trace_of) == MESSAGES

    # Every verdict and usage record continues its input's trace under the publish span.
    assert len(verdicts) == MESSAGES
    usage_per_trace: Counter[str] = Counter()
    for record in [*verdicts, *usage]:
        i = index_of(record)
        assert_carried(record, i, traced=True)
        trace = trace_of[i]
        parent = header(record, "traceparent")
        assert parent == publish_of[trace].encode(), (i, parent)
        if i not in UNTRACED:
            assert parent.endswith(b"-01")  # the producer's flags: sampled
        if record.topic.endswith(".usage"):
            usage_per_trace[trace] += 1
    # One model-call span per usage event (no failure was folded: at most 3 per message).
    assert all(json.loads(r.value)["calls"] == 1 for r in usage)
    assert usage_per_trace == model_calls
    kinds = Counter(s.name.split(" ")[0] for s in spans if s.kind is SpanKind.CLIENT)
    assert kinds["moderation"] >= MESSAGES  # the first tier saw every message
    assert kinds["chat"] >= MESSAGES // 5  # the chat model the unsure ones
    retried = [s for s in spans if s.attributes and s.attributes.get("modstream.attempt") != 1]
    retried = [s for s in retried if s.kind is SpanKind.CLIENT]
    assert retried, "the fake's 500s should have made some calls retry"
    for span in spans:  # no text without MODSTREAM_LOG_CONTENT, never a key
        attributes = json.dumps(dict(span.attributes or {}))
        assert "modstream.content" not in attributes and "sk-test" not in attributes


async def test_tracing_off_makes_no_span_and_carries_the_traceparent_unchanged(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    with fake_openai_server(latency_ms=5, seed=18) as url, export_to(exporter):
        run = await run_traced(kafka_bootstrap, url, tmp_path, "off")
    verdicts, usage = await outputs(run)
    assert exporter.get_finished_spans() == ()
    assert len(verdicts) == MESSAGES and usage
    for record in [*verdicts, *usage]:
        i = index_of(record)
        assert_carried(record, i, traced=False)
        assert header(record, "traceparent") == (None if i in UNTRACED else traceparent(i))
