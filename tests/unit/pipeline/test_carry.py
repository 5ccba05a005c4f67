"""Input headers carried onto the outputs: exactly the allow-listed ones present, after ours,
in order, never in place of ours; the trace context always, and re-injected with tracing on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.pipeline.admit import Admitted
from consumer.pipeline.carry import OWN_HEADERS, carried, carry_names
from consumer.pipeline.publish import Publisher, Topics
from consumer.pipeline.source import Envelope
from schemas import ModerationRequest
from tests.unit.kafka_fakes import FakeProducer, usage_for, verdict_for

pytestmark = pytest.mark.timeout(120)

TOPICS = Topics("verdicts", "usage", "dlq")
PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NAMES = ["tenant", "request-id", "traceparent", "tracestate", "x", *sorted(OWN_HEADERS)]

headers_strategy = st.lists(
    st.tuples(st.sampled_from(NAMES), st.none() | st.binary(max_size=8)), max_size=12
).map(tuple)
allowed_strategy = st.frozensets(st.sampled_from(NAMES))


def envelope(headers: tuple[tuple[str, bytes | None], ...]) -> Envelope:
    return Envelope("in", 0, 7, b"k", b"{}", headers, 1_700_000_000_000)


def outputs(publisher: Publisher, env: Envelope) -> list[list[tuple[str, bytes]]]:
    admitted = Admitted(ModerationRequest(id="m7", text="hi"), "hi", None, False, 1)
    usage = [usage_for(env.source, "m7", 1)]
    records = publisher.records(env, verdict=verdict_for(admitted, env.source), usage=usage)
    return [r.headers for r in records]


@given(headers_strategy, allowed_strategy)
def test_carried_headers_are_exactly_the_allowed_ones_present_in_order(
    headers: tuple[tuple[str, bytes | None], ...], allowed: frozenset[str]
) -> None:
    names = carry_names(allowed)
    expected = [
        (k, v)
        for k, v in headers
        if (k in allowed or k in ("traceparent", "tracestate"))
        and k not in OWN_HEADERS
        and v is not None
    ]
    assert carried(headers, names) == expected
    for output in outputs(Publisher(FakeProducer(), TOPICS, carry=allowed), envelope(headers)):
        own, extra = output[:3], output[3:]
        assert [k for k, _ in own] == ["content-type", "modstream-schema", "modstream-event-id"]
        assert extra == expected  # after ours, in input order, duplicates kept
        assert not {k for k, _ in extra} & OWN_HEADERS  # ours are never given twice


def test_without_a_carry_list_nothing_is_carried_not_even_the_trace_context() -> None:
    env = envelope((("traceparent", PARENT), ("tenant", b"t1")))
    for output in outputs(Publisher(FakeProducer(), TOPICS), env):
        assert [k for k, _ in output] == [
            "content-type",
            "modstream-schema",
            "modstream-event-id",
        ]


def test_the_trace_context_is_carried_unchanged_with_an_empty_allow_list() -> None:
    env = envelope((("tenant", b"t1"), ("traceparent", PARENT), ("tracestate", b"a=1")))
    for output in outputs(Publisher(FakeProducer(), TOPICS, carry=()), env):
        assert output[3:] == [("traceparent", PARENT), ("tracestate", b"a=1")]


def test_an_injector_writes_into_the_carried_headers_once_for_every_output() -> None:
    calls: list[list[tuple[str, bytes]]] = []

    def inject(headers: list[tuple[str, bytes]]) -> None:
        calls.append(headers)
        headers[:] = [(k, b"new" if k == "traceparent" else v) for k, v in headers]

    env = envelope((("tenant", b"t1"), ("traceparent", PARENT)))
    publisher = Publisher(FakeProducer(), TOPICS, carry=["tenant"], inject=inject)
    for output in outputs(publisher, env):
        assert output[3:] == [("tenant", b"t1"), ("traceparent", b"new")]
    assert len(calls) == 1
