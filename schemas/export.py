"""JSON Schema files for the event contracts, for consumers that don't use Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.events import SCHEMA_VERSION, DeadLetter, ModerationRequest, UsageEvent, Verdict

MODELS: tuple[type[BaseModel], ...] = (ModerationRequest, Verdict, UsageEvent, DeadLetter)

#: Where the checked-in schema files live.
JSON_DIR = Path(__file__).parent / "json"


def schema_files() -> dict[str, str]:
    """File name -> JSON text, one per public model, named with the schema version."""
    out: dict[str, str] = {}
    for model in MODELS:
        schema: dict[str, Any] = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://modstream.dev/schemas/{model.__name__}.v{SCHEMA_VERSION}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        name = f"{model.__name__}.v{SCHEMA_VERSION}.schema.json"
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schema_files(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
