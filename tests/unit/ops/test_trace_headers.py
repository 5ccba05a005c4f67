"""The trace context's getter and setter over aiokafka's header tuples, and a round trip
through TraceContextTextMapPropagator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace

from consumer.ops.trace_headers import HeaderGetter, HeaderSetter, extract, inject

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01".encode()

names = st.sampled_from(["traceparent", "tracestate", "Traceparent", "a", "b"])
header_lists = st.lists(st.tuples(names, st.binary(max_size=6)), max_size=8)


def test_the_getter_reads_every_value_of_a_name_and_skips_headers_without_one() -> None:
    getter = HeaderGetter()
    headers = (("a", b"1"), ("traceparent", None), ("a", b"2"), ("b", b"3"))
    assert getter.get(headers, "a") == ["1", "2"]
    assert getter.get(headers, "traceparent") is None
    assert getter.get(headers, "missing") is None
    assert getter.get(headers, "A") is None  # Kafka header names are case-sensitive
    assert getter.keys(headers) == ["a", "traceparent", "a", "b"]


@given(header_lists, names, st.text(alphabet="0123456789abcdef-", max_size=10))
def test_the_setter_leaves_one_header_of_the_name_where_the_first_was(
    headers: list[tuple[str, bytes]], key: str, value: str
) -> None:
    carrier = list(headers)
    HeaderSetter().set(carrier, key, value)
    assert [v for k, v in carrier if k == key] == [value.encode()]
    others = [(k, v) for k, v in headers if k != key]
    assert [(k, v) for k, v in carrier if k != key] == others  # the rest untouched, in order
    first = next((i for i, (k, _) in enumerate(headers) if k == key), None)
    place = next(i for i, (k, _) in enumerate(carrier) if k == key)
    assert place == (len(others) if first is None else first)


def test_extract_reads_the_producers_span_as_the_remote_parent() -> None:
    context = extract((("x", b"1"), ("traceparent", PARENT), ("tracestate", b"vendor=v1")))
    parent = trace.get_current_span(context).get_span_context()
    assert parent.is_remote and parent.is_valid
    assert format(parent.trace_id, "032x") == TRACE_ID
    assert format(parent.span_id, "016x") == SPAN_ID
    assert parent.trace_flags.sampled
    assert parent.trace_state.get("vendor") == "v1"


@pytest.mark.parametrize(
    "headers",
    [(), (("traceparent", b"not a traceparent"),), (("traceparent", None),)],
)
def test_extract_of_no_or_a_bad_traceparent_gives_no_parent(
    headers: tuple[tuple[str, bytes | None], ...],
) -> None:
    assert not trace.get_current_span(extract(headers)).get_span_context().is_valid


def test_inject_writes_the_context_and_replaces_a_carried_traceparent() -> None:
    context = extract((("traceparent", PARENT), ("tracestate", b"vendor=v1")))
    carrier = [("tenant", b"t1"), ("traceparent", b"old")]
    inject(carrier, context)
    assert carrier == [
        ("tenant", b"t1"),
        ("traceparent", PARENT),
        ("tracestate", b"vendor=v1"),
    ]
    empty: list[tuple[str, bytes]] = []
    inject(empty, extract(()))  # no span: nothing invented
    assert empty == []
