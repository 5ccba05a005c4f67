"""Schema files for the event contracts (JSON Schema, and Avro for the outputs), for consumers
that don't use Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.avro import avro_schema
from schemas.events import SCHEMA_VERSION, DeadLetter, ModerationRequest, UsageEvent, Verdict

MODELS: tuple[type[BaseModel], ...] = (ModerationRequest, Verdict, UsageEvent, DeadLetter)
#: The events modstream writes (``MODSTREAM_OUTPUT_FORMAT=avro`` writes them under these schemas).
OUTPUT_MODELS: tuple[type[BaseModel], ...] = (Verdict, UsageEvent, DeadLetter)

#: Where the checked-in schema files live.
JSON_DIR = Path(__file__).parent / "json"


def json_schema_text(model: type[BaseModel]) -> str:
    """``model``'s JSON Schema, as checked in and as registered for ``json_schema`` output."""
    schema: dict[str, Any] = model.model_json_schema(mode="serialization")
    schema["$id"] = f"https://modstream.dev/schemas/{model.__name__}.v{SCHEMA_VERSION}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def schema_files() -> dict[str, str]:
    """File name -> schema text, one per public model, named with the schema version: the JSON
    Schema of every model, and the Avro schema of each output event (``avro/``)."""
    out: dict[str, str] = {}
    for model in MODELS:
        out[f"{model.__name__}.v{SCHEMA_VERSION}.schema.json"] = json_schema_text(model)
    for model in OUTPUT_MODELS:
        text = json.dumps(avro_schema(model), indent=2, sort_keys=True) + "\n"
        out[f"avro/{model.__name__}.v{SCHEMA_VERSION}.avsc"] = text
    return out


def write_schema_files(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
