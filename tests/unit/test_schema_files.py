"""The event contracts: checked-in JSON Schema files match the models; outputs are strict."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel, ValidationError

from schemas import (
    SCHEMA_VERSION,
    Action,
    CategoryScore,
    DeadLetter,
    ImageData,
    ImageUrl,
    ModerationRequest,
    Source,
    UsageEvent,
    UsageOutcome,
    Verdict,
    make_event_id,
)
from schemas.avro import avro_schema
from schemas.export import JSON_DIR, MODELS, OUTPUT_MODELS, schema_files

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
Build = Callable[..., Verdict | UsageEvent | DeadLetter]
SOURCE = Source(topic="moderation.requests", partition=2, offset=41, key="k", timestamp=NOW)


def test_checked_in_schema_files_match_the_models() -> None:
    expected = schema_files()
    on_disk = {
        p.relative_to(JSON_DIR).as_posix(): p.read_text()
        for p in JSON_DIR.rglob("*")
        if p.is_file()
    }
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/json is out of date with schemas/events.py (changed or missing: {stale}; "
        f"no longer generated: {extra}). Run `make schema` and commit the result; bump "
        f"SCHEMA_VERSION if the change is incompatible."
    )


def test_one_schema_file_per_public_model_with_version_and_id() -> None:
    files = schema_files()
    assert len(files) == len(MODELS) + len(OUTPUT_MODELS) == 7
    for model in OUTPUT_MODELS:
        avro = json.loads(files[f"avro/{model.__name__}.v{SCHEMA_VERSION}.avsc"])
        assert (avro["type"], avro["name"]) == ("record", model.__name__)
    for model in MODELS:
        name = f"{model.__name__}.v{SCHEMA_VERSION}.schema.json"
        schema = json.loads(files[name])
        assert schema["$id"].endswith(f"/{model.__name__}.v{SCHEMA_VERSION}.json")
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["title"] == model.__name__


def test_output_schemas_forbid_additional_properties() -> None:
    files = schema_files()
    for model in (Verdict, UsageEvent, DeadLetter):
        schema = json.loads(files[f"{model.__name__}.v{SCHEMA_VERSION}.schema.json"])
        assert schema.get("additionalProperties") is False, model.__name__


def _verdict(**changes: object) -> Verdict:
    fields: dict[str, object] = {
        "event_id": make_event_id(SOURCE, "policy-1", "verdict"),
        "source": SOURCE,
        "content_id": "c-1",
        "content_sha256": "0" * 64,
        "flagged": True,
        "action": Action.BLOCK,
        "categories": {"harassment": CategoryScore(score=0.9, flagged=True)},
        "rationale": "threatens a named person",
        "model": "gpt-4o-mini",
        "policy_version": "policy-1",
        "prompt_version": "prompt-1",
        "truncated": False,
        "latency_ms": 12.5,
        "created_at": NOW,
    }
    fields.update(changes)
    return Verdict.model_validate(fields)


def _usage(**changes: object) -> UsageEvent:
    fields: dict[str, object] = {
        "event_id": make_event_id(SOURCE, "policy-1", "usage", attempt=1),
        "source": SOURCE,
        "content_id": "c-1",
        "model": "gpt-4o-mini",
        "attempt": 1,
        "outcome": UsageOutcome.OK,
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "latency_ms": 80.0,
        "created_at": NOW,
    }
    fields.update(changes)
    return UsageEvent.model_validate(fields)


def _dead_letter(**changes: object) -> DeadLetter:
    fields: dict[str, object] = {
        "event_id": make_event_id(SOURCE, "policy-1", "dead_letter"),
        "source": SOURCE,
        "stage": "decode",
        "error_class": "DecodeError",
        "error_message": "not JSON",
        "attempts": 0,
        "payload_b64": "AAE=",
        "payload_sha256": "1" * 64,
        "created_at": NOW,
    }
    fields.update(changes)
    return DeadLetter.model_validate(fields)


@pytest.mark.parametrize("build", [_verdict, _usage, _dead_letter])
def test_output_models_reject_unknown_fields(build: Build) -> None:
    event = build()
    assert event.schema_version == SCHEMA_VERSION
    with pytest.raises(ValidationError, match="surprise"):
        build(surprise=1)


@pytest.mark.parametrize("build", [_verdict, _usage, _dead_letter])
def test_output_models_are_frozen_and_round_trip(build: Build) -> None:
    event = build()
    with pytest.raises(ValidationError, match="frozen"):
        event.event_id = "changed"  # type: ignore[misc]
    again = type(event).model_validate_json(event.model_dump_json())
    assert again == event


def test_source_rejects_unknown_fields_and_negative_offsets() -> None:
    with pytest.raises(ValidationError):
        Source(topic="t", partition=0, offset=-1)
    with pytest.raises(ValidationError):
        Source.model_validate({"topic": "t", "partition": 0, "offset": 0, "extra": True})


def test_request_ignores_unknown_fields_but_needs_id_and_text() -> None:
    request = ModerationRequest.model_validate({"id": "a", "text": "hi", "producer_field": 1})
    assert request.text == "hi"
    assert not hasattr(request, "producer_field")
    with pytest.raises(ValidationError):
        ModerationRequest.model_validate({"id": "a", "text": ""})
    with pytest.raises(ValidationError):
        ModerationRequest.model_validate({"text": "hi"})


def test_event_id_is_deterministic() -> None:
    same_source = Source(topic=SOURCE.topic, partition=SOURCE.partition, offset=SOURCE.offset)
    first = make_event_id(SOURCE, "policy-1", "verdict")
    assert first == make_event_id(same_source, "policy-1", "verdict")
    assert first == make_event_id(SOURCE, "policy-1", "verdict")
    assert len(first) == 32
    int(first, 16)  # hex


def test_event_id_differs_by_offset_partition_topic_policy_kind_and_attempt() -> None:
    base = make_event_id(SOURCE, "policy-1", "verdict")
    variants = {
        "offset": make_event_id(SOURCE.model_copy(update={"offset": 42}), "policy-1", "verdict"),
        "partition": make_event_id(
            SOURCE.model_copy(update={"partition": 3}), "policy-1", "verdict"
        ),
        "topic": make_event_id(SOURCE.model_copy(update={"topic": "other"}), "policy-1", "verdict"),
        "policy": make_event_id(SOURCE, "policy-2", "verdict"),
        "kind": make_event_id(SOURCE, "policy-1", "usage"),
        "attempt": make_event_id(SOURCE, "policy-1", "usage", attempt=2),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)
    # Fields are separated, so (topic "a1", partition 2) never collides with ("a", 12).
    a = make_event_id(Source(topic="a1", partition=2, offset=0), "p", "verdict")
    b = make_event_id(Source(topic="a", partition=12, offset=0), "p", "verdict")
    assert a != b


def test_request_images_are_an_optional_discriminated_union() -> None:
    old = ModerationRequest.model_validate({"id": "a", "text": "hi"})
    assert old.images == ()
    request = ModerationRequest.model_validate(
        {
            "id": "a",
            "text": "hi",
            "images": [
                {"url": "https://example.com/a.png"},
                {"data": "iVBORw0KGgo=", "mime_type": "image/png"},
            ],
        }
    )
    url, data = request.images
    assert isinstance(url, ImageUrl)
    assert isinstance(data, ImageData)
    assert data.mime_type == "image/png"
    with pytest.raises(ValidationError, match="frozen"):
        data.mime_type = "image/gif"  # type: ignore[misc]
    again = ModerationRequest.model_validate_json(request.model_dump_json())
    assert again == request


@pytest.mark.parametrize(
    "image",
    [
        {"url": "http://example.com/a.png"},  # not https
        {"url": "https://example.com/a b.png"},  # a space
        {"data": "AAAA", "mime_type": "image/bmp"},  # not a supported type
        {"data": "AAAA"},  # no type
        {"data": "AAAA", "mime_type": "image/png", "url": "https://x/y"},  # both
        {"url": "https://x/y", "detail": "low"},  # an unknown field
        "https://example.com/a.png",  # not an object
    ],
    ids=repr,
)
def test_bad_image_inputs_are_rejected(image: object) -> None:
    with pytest.raises(ValidationError):
        ModerationRequest.model_validate({"id": "a", "text": "hi", "images": [image]})


def test_request_schema_offers_both_image_forms_and_verdict_has_category_inputs() -> None:
    files = schema_files()
    request = json.loads(files[f"ModerationRequest.v{SCHEMA_VERSION}.schema.json"])
    assert "images" not in request.get("required", [])
    members = request["properties"]["images"]["items"]["oneOf"]
    assert [m["$ref"] for m in members] == ["#/$defs/ImageUrl", "#/$defs/ImageData"]
    assert request["$defs"]["ImageData"]["properties"]["mime_type"]["enum"] == [
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
    ]
    verdict = json.loads(files[f"Verdict.v{SCHEMA_VERSION}.schema.json"])
    assert "category_inputs" not in verdict["required"]
    assert _verdict().category_inputs == {}


@pytest.mark.parametrize("model", OUTPUT_MODELS, ids=lambda m: m.__name__)
def test_avro_schemas_carry_every_field_and_every_default_of_the_model(
    model: type[BaseModel],
) -> None:
    schema = avro_schema(model)
    fastavro.parse_schema(schema)  # valid Avro
    fields = {f["name"]: f for f in schema["fields"]}
    assert list(fields) == list(model.model_fields)  # all of them, in the model's order
    for name, info in model.model_fields.items():
        if not info.is_required():
            # A reader of a newer version fills it in for records written without it.
            assert "default" in fields[name], name
            default = info.get_default(call_default_factory=True)
            assert fields[name]["default"] == (
                default.value if hasattr(default, "value") else default
            )


def test_a_json_schema_node_with_no_avro_type_is_refused_by_name() -> None:
    class Odd(BaseModel):
        anything: Any  # a JSON Schema node with no type to map

    with pytest.raises(
        ValueError,
        match=r"no Avro type for the JSON Schema node \{'title': 'Anything'\} \(at OddAnything\)",
    ):
        avro_schema(Odd)
