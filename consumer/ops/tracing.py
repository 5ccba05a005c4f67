"""Tracing with OpenTelemetry: one trace per input record, continued from its producer's.

Each record gets a ``process <topic>`` span (kind CONSUMER) whose parent is the trace context
of the record's ``traceparent`` / ``tracestate`` headers (:mod:`consumer.ops.trace_headers`);
under it a ``classify`` span, with one span per model call (``chat <model>``, ``moderation
<model>``: kind CLIENT; model, tokens, outcome, attempt), and a ``publish`` span, whose context
goes into every output record's headers. Text goes into a span (``modstream.content``) only
with ``MODSTREAM_LOG_CONTENT``; no credential ever does.

The model-call spans are made from the call's usage event (:meth:`Tracing.model_calls`), which
says when the call ended and how long it took: every call is recorded there once already (the
ledger's one place), so the model package needs no tracing of its own, and a span per usage
event is exactly one per call (failures past the first few fold into one event, and one span,
with ``modstream.calls``).

Off unless configured (:func:`tracing_on`): ``MODSTREAM_TRACING=on``, or ``auto`` (the default)
with the standard variables naming an exporter (``OTEL_TRACES_EXPORTER``) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Off, :data:`OFF`
makes no span and no context, and wraps nothing (:meth:`Tracing.classify` and
:meth:`Tracing.wrap` hand the stage back as it is): a record costs one attribute check. The
tracer provider is our own (not the process-global one), built and shut down (its batch
flushed) by :func:`tracing`, entered first in the app's lifespan.

The exporters come from ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, over HTTP/protobuf;
``console``; ``none``), each configured by its own ``OTEL_*`` variables (endpoint, headers,
timeout, batch sizes, sampler: the SDK reads them). Tests swap the exporters for one of their
own with :func:`export_to`.

Not used, and why: ``opentelemetry-instrumentation-aiokafka`` patches aiokafka's classes
process-wide (replay's and the tools' consumers too). Its ``getmany`` wrapper makes a span per
record that ends as ``getmany`` returns, before the record is processed: it cannot parent our
work, which waits in the window, behind earlier records of its key and for the limiter, and
would only add a short sibling per record. Its ``send`` wrapper makes one more span per output
(and looks up the partition for it) and injects that span's context; ours injects the record's
``publish`` context once per input. The OpenAI instrumentation (``openai-v2``) wraps the SDK's
``chat.completions.create``: the default lean sender (:mod:`consumer.model.chat_client`) posts
over aiohttp without it, so it would see no chat call at all, and the attempt, the folding and
our outcomes (the retry layer is ours: the SDK's retries are off) are not its to know. Both
would use the global tracer provider unless handed ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Any, ParamSpec, TypeVar

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from consumer import __version__
from consumer.errors import ConfigError
from consumer.model.classify import Classified
from consumer.model.folding import FAILED_OUTCOMES
from consumer.model.ledger import MODERATION_PRICE_SOURCE
from consumer.ops.trace_headers import extract, inject
from consumer.pipeline.admit import Admitted
from consumer.pipeline.source import Envelope
from consumer.settings import Settings, TracingMode
from schemas import Source, UsageEvent

__all__ = ["OFF", "Tracing", "export_to", "tracing", "tracing_on"]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: The classify stage (as :mod:`consumer.pipeline.stages` names it).
Classify = Callable[[Admitted, Source], Awaitable[Classified]]

#: What a stage's span is when tracing is off: one shared, reusable no-op.
_NO_SPAN: AbstractContextManager[None] = nullcontext()

#: The exporters of :func:`export_to` (a test's), used instead of the OTEL_* ones while set.
_test_exporters: list[SpanExporter] = []

#: The OTEL_* variables that, set, turn ``MODSTREAM_TRACING=auto`` on.
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Tracing:
    """The spans of one consumer: a tracer, or none at all (:data:`OFF`)."""

    def __init__(
        self, tracer: Tracer | None, *, group: str = "", log_content: bool = False
    ) -> None:
        self.tracer = tracer
        self.group = group
        self.log_content = log_content

    @property
    def enabled(self) -> bool:
        """Whether spans are made."""
        return self.tracer is not None

    @property
    def injector(self) -> Callable[[list[tuple[str, bytes]]], None] | None:
        """What writes the current trace context into an output's headers (None: off)."""
        return inject if self.tracer is not None else None

    def record(self, envelope: Envelope, event_id: str) -> AbstractContextManager[Any]:
        """The record's span, current while it runs; parented by the record's headers."""
        if self.tracer is None:
            return _NO_SPAN
        return self.tracer.start_as_current_span(
            f"process {envelope.topic}",
            context=extract(envelope.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": envelope.topic,
                "messaging.destination.partition.id": str(envelope.partition),
                "messaging.kafka.offset": envelope.offset,
                "messaging.consumer.group.name": self.group,
                "modstream.event_id": event_id,
            },
        )

    def wrap(
        self, name: str, stage: Callable[P, Awaitable[T]], *, kind: SpanKind = SpanKind.INTERNAL
    ) -> Callable[P, Awaitable[T]]:
        """``stage`` run in a span ``name`` of its own; off, ``stage`` itself."""
        tracer = self.tracer
        if tracer is None:
            return stage

        async def traced(*args: P.args, **kwargs: P.kwargs) -> T:
            with tracer.start_as_current_span(name, kind=kind):
                return await stage(*args, **kwargs)

        return traced

    def classify(self, classify: Classify) -> Classify:
        """``classify`` in a ``classify`` span, with a child per model call and the verdict's
        action; off, ``classify`` itself."""
        tracer = self.tracer
        if tracer is None:
            return classify

        async def traced(admitted: Admitted, source: Source) -> Classified:
            with tracer.start_as_current_span("classify"):
                self.content(admitted.text)
                result = await classify(admitted, source)
                self.model_calls(result.usage)
                if result.verdict is not None:
                    self.note(action=result.verdict.action, flagged=result.verdict.flagged)
                return result

        return traced

    def note(self, *, error: str | None = None, **attributes: str | int | float | bool) -> None:
        """Attributes on the current span (``error``: its status is ERROR, with that reason)."""
        if self.tracer is None:
            return
        span = trace.get_current_span()
        span.set_attributes({f"modstream.{k}": v for k, v in attributes.items()})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))

    def content(self, text: str) -> None:
        """The message text on the current span, only with ``MODSTREAM_LOG_CONTENT``."""
        if self.tracer is not None and self.log_content:
            trace.get_current_span().set_attribute("modstream.content", text)

    def model_calls(self, usage: Sequence[UsageEvent]) -> None:
        """One span per model call of ``usage``, children of the current span, timed as the
        calls were (each event says when its call ended and how long it took)."""
        if self.tracer is None:
            return
        for event in usage:
            end = int(event.created_at.timestamp() * 1e9)
            operation = "moderation" if event.price_source == MODERATION_PRICE_SOURCE else "chat"
            attributes: dict[str, str | int | float | bool] = {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": event.model,
                "gen_ai.usage.input_tokens": event.prompt_tokens,
                "gen_ai.usage.output_tokens": event.completion_tokens,
                "modstream.outcome": event.outcome.value,
                "modstream.attempt": event.attempt,
                "modstream.calls": event.calls,
                "modstream.cached_tokens": event.cached_tokens,
                "modstream.reasoning_tokens": event.reasoning_tokens,
                "modstream.estimated": event.estimated,
            }
            if event.cost_usd is not None:
                attributes["modstream.cost_usd"] = event.cost_usd
            if event.batch_id is not None:
                attributes["modstream.batch_id"] = event.batch_id
                attributes["modstream.batch_size"] = event.batch_size
            span = self.tracer.start_span(
                f"{operation} {event.model}",
                kind=SpanKind.CLIENT,
                attributes=attributes,
                start_time=end - int(event.latency_ms * 1e6),
            )
            if event.outcome in FAILED_OUTCOMES:
                span.set_status(Status(StatusCode.ERROR, event.outcome.value))
            span.end(end_time=end)


#: Tracing off: no tracer, no spans.
OFF = Tracing(None)


def tracing_on(mode: TracingMode, environ: Mapping[str, str]) -> bool:
    """Whether ``MODSTREAM_TRACING`` (``mode``) and the OTEL_* variables turn tracing on."""
    if mode is not TracingMode.AUTO:
        return mode is TracingMode.ON
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return bool(exporters and exporters != "none") or any(
        environ.get(name, "").strip() for name in _ENDPOINT_VARIABLES
    )


@asynccontextmanager
async def tracing(
    settings: Settings, environ: Mapping[str, str] = os.environ
) -> AsyncIterator[Tracing]:
    """The consumer's :class:`Tracing` (:data:`OFF` unless configured); on exit the tracer
    provider is shut down, which exports the spans still batched."""
    if not tracing_on(settings.tracing, environ):
        yield OFF
        return
    provider = TracerProvider(resource=_resource())
    names = _add_processors(provider, environ)
    log.info(
        "tracing on",
        exporters=names,
        # The endpoint only: OTEL_EXPORTER_OTLP_HEADERS may hold a token, never logged.
        endpoint=environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    try:
        yield Tracing(
            provider.get_tracer("modstream", __version__),
            group=settings.group_id,
            log_content=settings.log_content,
        )
    finally:
        # A blocking flush (the OTLP exporter posts with requests): off the event loop.
        await asyncio.to_thread(provider.shutdown)


@contextlib.contextmanager
def export_to(exporter: SpanExporter) -> Iterator[SpanExporter]:
    """Test hook: while entered, a traced consumer exports to ``exporter`` only, each span as
    it ends (an ``InMemorySpanExporter`` then holds every span by the time ``serve`` returns)."""
    _test_exporters.append(exporter)
    try:
        yield exporter
    finally:
        _test_exporters.remove(exporter)


def _add_processors(provider: TracerProvider, environ: Mapping[str, str]) -> list[str]:
    """Add the exporters OTEL_TRACES_EXPORTER names (default ``otlp``); return their names."""
    if _test_exporters:
        for exporter in _test_exporters:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        return ["test"]
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    for name in names:
        if name == "none":
            continue
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
        else:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r}: modstream exports traces with otlp "
                "(HTTP/protobuf), console or none"
            )
    return names


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise ConfigError(
            f"OTLP protocol {protocol!r}: modstream ships the http/protobuf exporter only "
            "(OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, port 4318)"
        )
    # Imported only when used: it brings requests and protobuf, which tracing off never needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    # The endpoint as ``environ`` says (the SDK would read os.environ's); headers, timeout,
    # compression and certificates the SDK reads from OTEL_* itself.
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint and base:
        endpoint = base.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint or None)


def _resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES as given; service.name ``modstream`` when
    they name none."""
    resource = Resource.create({SERVICE_VERSION: __version__})
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "modstream"}))
    return resource
