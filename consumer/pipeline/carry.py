"""Input headers carried onto the outputs: the allow-listed ones and the trace context.

``MODSTREAM_CARRY_HEADERS`` names input headers (a request id, a tenant) that downstream wants
on the verdict, usage and dead-letter records too; ``traceparent`` and ``tracestate`` always
come along, so a trace goes on through modstream even with tracing off here. A carried header
never replaces one of modstream's own (``content-type``, ``modstream-schema``,
``modstream-event-id``); they keep their input order, duplicates included; a header with no
value is not carried (an output header always has one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from consumer.ops.trace_headers import TRACE_HEADERS

__all__ = ["OWN_HEADERS", "carried", "carry_names"]

#: The headers modstream sets on every output itself.
OWN_HEADERS = frozenset({"content-type", "modstream-schema", "modstream-event-id"})


def carry_names(allowed: Iterable[str]) -> frozenset[str]:
    """The header names to carry: ``allowed``, the trace context's, never our own."""
    return frozenset({*allowed, *TRACE_HEADERS}) - OWN_HEADERS


def carried(
    headers: Sequence[tuple[str, bytes | None]], names: frozenset[str]
) -> list[tuple[str, bytes]]:
    """The input ``headers`` named in ``names`` (from :func:`carry_names`), in order."""
    return [(k, v) for k, v in headers if k in names and v is not None]
