"""W3C trace context in Kafka headers: read from an input record's, written into an output's.

aiokafka hands a record's headers as ``(name, bytes | None)`` tuples and takes an output's as a
list of ``(name, bytes)``; OpenTelemetry's :class:`TraceContextTextMapPropagator` reads and
writes ``traceparent`` and ``tracestate`` through a getter and a setter of strings. These two
adapt one to the other. Names match exactly (Kafka header names are case-sensitive, and the
W3C names are lower case); a header with no value is absent.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACE_HEADERS", "HeaderGetter", "HeaderSetter", "extract", "inject"]

#: Input headers that carry the trace context.
TRACE_HEADERS = ("traceparent", "tracestate")

InHeaders = Sequence[tuple[str, bytes | None]]
OutHeaders = list[tuple[str, bytes]]

_PROPAGATOR = TraceContextTextMapPropagator()


class HeaderGetter(Getter[InHeaders]):
    """Reads a header's values (every occurrence, in order) from aiokafka's tuples."""

    def get(self, carrier: InHeaders, key: str) -> list[str] | None:
        """The values of header ``key`` as text (None: no such header with a value)."""
        values = [v.decode("ascii", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: InHeaders) -> list[str]:
        """Every header name, in order."""
        return [k for k, _ in carrier]


class HeaderSetter(Setter[OutHeaders]):
    """Sets a header on an output's list: the first of that name replaced in place (so the
    order stays), any others removed, or appended when there is none."""

    def set(self, carrier: OutHeaders, key: str, value: str) -> None:
        """``key`` = ``value`` (encoded as ASCII, as the W3C headers are)."""
        header = (key, value.encode("ascii", "replace"))
        found = [i for i, (k, _) in enumerate(carrier) if k == key]
        if not found:
            carrier.append(header)
            return
        carrier[found[0]] = header
        for i in reversed(found[1:]):
            del carrier[i]


_GETTER = HeaderGetter()
_SETTER = HeaderSetter()


def extract(headers: InHeaders) -> Context:
    """The trace context an input record's headers carry (an empty context when none)."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject(headers: OutHeaders, context: Context | None = None) -> None:
    """Write ``context`` (default: the current one) into an output's headers."""
    _PROPAGATOR.inject(headers, context=context, setter=_SETTER)
