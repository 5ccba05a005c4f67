"""Tracing: when it is on, the spans of one record (parent from its headers, model calls timed
from their usage events), what goes into them, and the lifespan that flushes them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumer.errors import ConfigError
from consumer.model.classify import Classified
from consumer.model.ledger import MODERATION_PRICE_SOURCE
from consumer.ops.tracing import OFF, Classify, Tracing, export_to, tracing, tracing_on
from consumer.pipeline.admit import Admitted
from consumer.pipeline.source import Envelope
from consumer.settings import Settings, TracingMode
from schemas import ModerationRequest, Source, UsageEvent, UsageOutcome
from tests.unit.kafka_fakes import usage_for

pytestmark = pytest.mark.timeout(60)

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
PARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01".encode()


def envelope(
    headers: tuple[tuple[str, bytes | None], ...] = (("traceparent", PARENT),),
) -> Envelope:
    return Envelope("in", 2, 41, b"k", b"{}", headers, 1_700_000_000_000)


@pytest.mark.parametrize(
    ("mode", "environ", "on"),
    [
        (TracingMode.OFF, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, False),
        (TracingMode.ON, {}, True),
        (TracingMode.AUTO, {}, False),
        (TracingMode.AUTO, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, True),
        (TracingMode.AUTO, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://j/v1/traces"}, True),
        (TracingMode.AUTO, {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        (TracingMode.AUTO, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (TracingMode.AUTO, {"OTEL_TRACES_EXPORTER": "none"}, False),
        (TracingMode.AUTO, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_configured(
    mode: TracingMode, environ: dict[str, str], on: bool
) -> None:
    assert tracing_on(mode, environ) is on


async def test_off_makes_no_span_wraps_nothing_and_injects_nothing() -> None:
    exporter = InMemorySpanExporter()
    with export_to(exporter):
        async with tracing(Settings(tracing="off"), {}) as traces:
            assert traces is OFF and not traces.enabled and traces.injector is None
            stage = classify_with([])
            assert traces.classify(stage) is stage  # the stage itself: no cost per message
            assert traces.wrap("publish", stage) is stage
            with traces.record(envelope(), "e1"):
                traces.model_calls([usage_for(envelope().source, "m1")])
                traces.note(error="x", flagged=True)
                traces.content("text")
    assert exporter.get_finished_spans() == ()


def classify_with(usage: list[UsageEvent]) -> Classify:
    async def classify(admitted: Admitted, source: Source) -> Classified:
        return Classified(None, None, usage)

    return classify


ADMITTED = Admitted(ModerationRequest(id="m1", text="secret text"), "secret text", None, False, 3)


async def test_a_records_spans_continue_its_producers_trace() -> None:
    exporter = InMemorySpanExporter()
    env = envelope((("traceparent", PARENT), ("tracestate", b"vendor=v1")))
    ended = datetime.now(UTC)
    chat = usage_for(env.source, "m1", 2).model_copy(
        update={"latency_ms": 250.0, "created_at": ended, "cost_usd": 0.001}
    )
    moderation = usage_for(env.source, "m1", 1).model_copy(
        update={
            "model": "omni-moderation-latest",
            "price_source": MODERATION_PRICE_SOURCE,
            "outcome": UsageOutcome.PROVIDER_UNAVAILABLE,
            "created_at": ended - timedelta(seconds=1),
        }
    )
    headers: list[tuple[str, bytes]] = []
    with export_to(exporter):
        async with tracing(Settings(tracing="on", group_id="g1"), {}) as traces:
            assert traces.enabled and traces.injector is not None
            inject = traces.injector

            async def send() -> None:
                inject(headers)

            with traces.record(env, "e1"):
                # MODSTREAM_LOG_CONTENT is off: the text stays out.
                result = await traces.classify(classify_with([moderation, chat]))(
                    ADMITTED, env.source
                )
                assert result.usage == [moderation, chat]
                await traces.wrap("publish", send, kind=SpanKind.PRODUCER)()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {
        "process in",
        "classify",
        "moderation omni-moderation-latest",
        f"chat {chat.model}",
        "publish",
    }
    record = spans["process in"]
    assert record.kind is SpanKind.CONSUMER
    assert record.parent is not None and record.parent.span_id == SPAN_ID
    assert record.parent.is_remote
    assert all(span.context.trace_id == TRACE_ID for span in spans.values())
    assert record.context.trace_state.get("vendor") == "v1"
    assert record.attributes is not None
    assert record.attributes["messaging.kafka.offset"] == 41
    assert record.attributes["messaging.destination.partition.id"] == "2"
    assert record.attributes["messaging.consumer.group.name"] == "g1"
    classify = spans["classify"]
    assert classify.parent is not None and classify.parent.span_id == record.context.span_id
    assert "modstream.content" not in (classify.attributes or {})
    call = spans[f"chat {chat.model}"]
    assert call.kind is SpanKind.CLIENT
    assert call.parent is not None and call.parent.span_id == classify.context.span_id
    assert call.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": chat.model,
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "modstream.outcome": "ok",
        "modstream.attempt": 2,
        "modstream.calls": 1,
        "modstream.cached_tokens": 0,
        "modstream.reasoning_tokens": 0,
        "modstream.estimated": False,
        "modstream.cost_usd": 0.001,
    }
    assert call.end_time == int(ended.timestamp() * 1e9)
    assert call.start_time is not None and call.end_time - call.start_time == 250_000_000
    failed = spans["moderation omni-moderation-latest"]
    assert failed.status.status_code is StatusCode.ERROR
    assert call.status.status_code is StatusCode.UNSET
    # The outputs' traceparent names the publish span, in the producer's trace.
    publish = spans["publish"]
    assert dict(headers)["traceparent"] == (
        f"00-{TRACE_ID:032x}-{publish.context.span_id:016x}-01".encode()
    )


async def test_content_goes_into_a_span_only_with_log_content() -> None:
    exporter = InMemorySpanExporter()
    with export_to(exporter):
        async with tracing(Settings(tracing="on", log_content=True), {}) as traces:
            await traces.classify(classify_with([]))(ADMITTED, envelope().source)
    [span] = exporter.get_finished_spans()
    assert span.attributes == {"modstream.content": "secret text"}


async def test_a_record_without_a_traceparent_starts_a_trace_of_its_own() -> None:
    exporter = InMemorySpanExporter()
    with export_to(exporter):
        async with tracing(Settings(tracing="on"), {}) as traces:
            with traces.record(envelope(()), "e1"):
                traces.note(error="dead letter: decode", dead_letter="decode")
    [span] = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["modstream.dead_letter"] == "decode"


def test_tracing_without_a_tracer_is_the_off_value() -> None:
    assert not Tracing(None).enabled


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
    ],
)
async def test_an_exporter_modstream_does_not_ship_is_a_configuration_error(
    environ: dict[str, str],
) -> None:
    with pytest.raises(ConfigError, match=r"otlp|http/protobuf"):
        async with tracing(Settings(tracing="on"), environ):
            pass


async def test_the_otlp_and_console_exporters_are_built_and_shut_down() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
    async with tracing(Settings(tracing="auto"), environ) as traces:
        assert traces.enabled  # no span made: shutting down posts nothing


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector of one test: keeps each request's path and body."""

    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_spans_reach_an_otlp_http_collector_when_the_lifespan_ends() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}/"}
        async with tracing(Settings(), environ) as traces:  # auto: on, for the endpoint
            with traces.record(envelope(), "e1"):
                pass
    finally:
        server.shutdown()
        thread.join()
    [(path, body)] = _Collector.received
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "modstream"
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "process in"
    assert span.trace_id == TRACE_ID.to_bytes(16, "big")
    assert span.parent_span_id == SPAN_ID.to_bytes(8, "big")
