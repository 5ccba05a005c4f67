"""consumer.pipeline.encode: JSON, and registry-framed Avro / JSON output values."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import fastavro
import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from consumer.errors import DecodeError, PublishRejected
from consumer.pipeline.dead_letter import dead_letter
from consumer.pipeline.encode import JsonEncoder, RegistryEncoder, TopicSchema, frame
from consumer.pipeline.publish import RECORD_OVERHEAD_BYTES
from consumer.pipeline.source import Envelope
from schemas import CategoryScore, DeadLetter, UsageEvent, Verdict
from schemas.avro import avro_schema
from schemas.export import json_schema_text
from tests import output_events

MODELS: list[type[BaseModel]] = [Verdict, UsageEvent, DeadLetter]
SAMPLES = {
    Verdict: output_events.verdict(),
    UsageEvent: output_events.usage(),
    DeadLetter: output_events.dead_letter(),
}
AVRO = RegistryEncoder(
    {
        m.__name__: TopicSchema(7 + i, fastavro.parse_schema(avro_schema(m)))
        for i, m in enumerate(MODELS)
    },
    avro=True,
)


def read_avro(value: bytes, model: type[BaseModel]) -> tuple[int, Any]:
    """The schema id and the event, read the way any Avro consumer reads the wire format."""
    assert value[0] == 0
    schema = fastavro.parse_schema(avro_schema(model))
    record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, schema)
    return int.from_bytes(value[1:5], "big"), model.model_validate(record)


def test_json_is_the_events_own_json() -> None:
    event = SAMPLES[Verdict]
    assert JsonEncoder().encode("t", event) == event.model_dump_json().encode()
    assert JsonEncoder.content_type == b"application/json"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_avro_values_are_framed_with_the_topics_schema_id_and_read_back_equal(
    model: type[BaseModel],
) -> None:
    value = AVRO.encode(model.__name__, SAMPLES[model])
    schema_id, event = read_avro(value, model)
    assert schema_id == AVRO.schemas[model.__name__].schema_id
    assert event == SAMPLES[model]
    # Binary, not JSON: smaller than the event's JSON.
    assert len(value) < len(SAMPLES[model].model_dump_json())


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)


@given(
    metadata=st.dictionaries(st.text(max_size=10), scalars, max_size=6),
    scores=st.dictionaries(
        st.text(min_size=1, max_size=10), st.floats(min_value=0.0, max_value=1.0), max_size=4
    ),
    rationale=st.text(max_size=200),
    refusal=st.none() | st.text(max_size=20),
    key=st.none() | st.text(max_size=20),
)
def test_any_verdict_round_trips_through_avro(
    metadata: dict[str, Any],
    scores: dict[str, float],
    rationale: str,
    refusal: str | None,
    key: str | None,
) -> None:
    source = output_events.SOURCE.model_copy(update={"key": key})
    verdict = output_events.verdict(
        metadata=metadata,
        categories={k: CategoryScore(score=v, flagged=v > 0.5) for k, v in scores.items()},
        rationale=rationale,
        refusal=refusal,
        source=source,
    )
    _, back = read_avro(AVRO.encode("Verdict", verdict), Verdict)
    assert back == verdict
    # The types survive too: True stays a bool, 1 an int (Avro's union keeps them apart).
    assert [type(v) for v in back.metadata.values()] == [type(v) for v in metadata.values()]


def test_a_value_avro_cannot_hold_is_a_publish_rejection_naming_topic_and_schema() -> None:
    verdict = output_events.verdict(metadata={"huge": 2**64})
    with pytest.raises(
        PublishRejected,
        match=r"topic 'Verdict' does not fit its Avro schema \(id 7\).*metadata\['huge'\]",
    ):
        AVRO.encode("Verdict", verdict)


def test_json_schema_values_are_framed_json_valid_under_the_registered_schema() -> None:
    encoder = RegistryEncoder({"v": TopicSchema(3)}, avro=False)
    value = encoder.encode("v", SAMPLES[Verdict])
    assert value[:5] == frame(3, b"")
    jsonschema.validate(json.loads(value[5:]), json.loads(json_schema_text(Verdict)))
    assert Verdict.model_validate_json(value[5:]) == SAMPLES[Verdict]
    assert encoder.content_type == b"application/json"


def test_a_topic_without_a_registered_schema_is_a_wiring_bug_not_a_dead_letter() -> None:
    with pytest.raises(RuntimeError, match="no registered schema for output topic 'other'"):
        AVRO.encode("other", SAMPLES[Verdict])


@pytest.mark.parametrize("size", [999_000, 2_000_000])
def test_a_dead_letter_cut_to_the_topics_limit_still_fits_once_framed_as_avro(size: int) -> None:
    # Dead letters are cut by their JSON size (consumer.pipeline.dead_letter.fit); Avro must
    # never be the larger, or a dead letter near the 1 MB limit would be refused by the broker.
    limit = 1_000_000 - 2 * RECORD_OVERHEAD_BYTES
    value = random.Random(size).randbytes(size)
    envelope = Envelope("in", 0, 7, b"k", value, (("traceparent", b"00-ab-cd-01"),), 1)
    dead = dead_letter(
        envelope, DecodeError("not JSON"), stage="decode", policy_version="p1", max_bytes=limit
    )
    json_size = len(dead.model_dump_json().encode())
    assert limit - 4096 <= json_size <= limit  # near the limit, as the real record would be
    avro = AVRO.encode("DeadLetter", dead)
    assert len(avro) <= json_size
    _, back = read_avro(avro, DeadLetter)
    assert back == dead
