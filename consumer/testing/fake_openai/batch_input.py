"""A batch input file read and validated: JSONL lines of ``{custom_id, method, url, body}``.

OpenAI validates the whole file before running any request and fails the batch with one error
per bad line (1-based ``line``); so does :func:`parse`. A batch names one model: lines asking for
different models fail it (``mismatched_model``), as at OpenAI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: The batch endpoints the fake answers (OpenAI's others get a 400 at batch creation).
ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/moderations"})


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a valid input file."""

    custom_id: str
    body: dict[str, Any]


@dataclass(slots=True)
class Parsed:
    """The requests of an input file, or why it is not a valid one (``errors`` non-empty)."""

    lines: list[Line] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None

    def fail(self, number: int | None, code: str, message: str, param: str | None = None) -> None:
        """Record a ``BatchError``."""
        self.errors.append({"code": code, "line": number, "message": message, "param": param})


def parse(content: bytes, endpoint: str) -> Parsed:
    """Every request of ``content`` for ``endpoint``, or the errors that fail the batch.

    Blank lines are skipped (a trailing newline is no request).
    """
    parsed = Parsed()
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:  # UnicodeDecodeError is a ValueError too
            item = None
        if not isinstance(item, dict):
            parsed.fail(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        line = _line(parsed, number, item, endpoint)
        if line is None:
            continue
        if line.custom_id in seen:
            parsed.fail(
                number,
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The "
                "custom_id parameter must be unique for each request in a batch.",
                "custom_id",
            )
            continue
        seen.add(line.custom_id)
        if isinstance(line.body.get("model"), str):
            models.add(line.body["model"])
        parsed.lines.append(line)
    if len(models) > 1:
        parsed.fail(
            None,
            "mismatched_model",
            f"The batch input file contains requests for more than one model: "
            f"{', '.join(sorted(models))}. Each batch must use a single model.",
            "body.model",
        )
    if not parsed.lines and not parsed.errors:
        parsed.fail(None, "empty_file", "The batch input file is empty.")
    parsed.model = next(iter(models)) if len(models) == 1 else None
    return parsed


def _line(parsed: Parsed, number: int, item: dict[str, Any], endpoint: str) -> Line | None:
    """The request of one parsed line, or None after recording what is wrong with it."""
    custom_id, method, url, body = (item.get(k) for k in ("custom_id", "method", "url", "body"))
    for name, value in (("custom_id", custom_id), ("method", method), ("url", url)):
        if not isinstance(value, str) or not value:
            parsed.fail(
                number,
                "missing_required_parameter",
                f"Missing required parameter: '{name}' (a non-empty string).",
                name,
            )
            return None
    if method != "POST":
        parsed.fail(number, "invalid_value", f"Invalid method {method!r}: only POST.", "method")
        return None
    if url != endpoint:
        parsed.fail(
            number,
            "mismatched_endpoint",
            f"The url {url!r} does not match the batch's endpoint {endpoint!r}.",
            "url",
        )
        return None
    if not isinstance(body, dict):
        parsed.fail(
            number,
            "missing_required_parameter",
            "Missing required parameter: 'body' (a JSON object).",
            "body",
        )
        return None
    return Line(str(custom_id), body)
