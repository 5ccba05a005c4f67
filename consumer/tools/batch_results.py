"""A finished batch's output and error files mapped back to the inputs, by custom id.

A line is OpenAI's ``{id, custom_id, response: {status_code, request_id, body}, error}``. A
2xx line's body is a chat completion; any other status, a line whose ``error`` is set (the
batch expired or was cancelled before it ran), or a line that is not valid JSON, is that
input's error in our terms (:mod:`consumer.errors`). Neither file keeps the input order, so
every line is matched by its ``custom_id`` (:func:`match`): each input asked for gets exactly
one answer, an input no line answers gets a "missing" error, and lines for no input asked for
(or a second line for one) are counted and ignored, never attached to another input.

Pure functions: text in, answers out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from consumer.errors import (
    ModstreamError,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
)
from consumer.model.chat_client import Completion

__all__ = ["Answer", "Matched", "answer_of", "match", "read_lines"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the batch answered for one input: a completion, or an error."""

    completion: Completion | None = None
    error: ModstreamError | None = None


@dataclass
class Matched:
    """Every input's answer, and what could not be attached to one."""

    answers: dict[str, Answer]
    #: Lines whose custom id was not asked for (or not readable), and second answers.
    unknown: int = 0
    duplicates: int = 0
    #: Inputs no line answered.
    missing: list[str] = field(default_factory=list)


def read_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a result file; a line that is not one becomes ``{}`` (it answers
    no input and is counted as unknown)."""
    lines: list[dict[str, Any]] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        lines.append(value if isinstance(value, dict) else {})
    return lines


def _status_error(status: int, body: Any) -> ModstreamError:
    detail = body.get("error") if isinstance(body, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    text = f"the batch answered {status}: {message or body!r}"
    if status == 429:
        return RateLimited(text)
    if 400 <= status < 500:
        return RequestRejected(text)
    return ProviderUnavailable(text)


def answer_of(line: dict[str, Any]) -> Answer:
    """One result line as an answer."""
    error = line.get("error")
    if error:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        return Answer(error=ProviderUnavailable(f"the batch did not run it: {code}: {message}"))
    response = line.get("response")
    if not isinstance(response, dict):
        return Answer(error=ProviderUnavailable("the batch's line has no response"))
    status = response.get("status_code")
    body = response.get("body")
    if not isinstance(status, int) or not 200 <= status < 300:
        return Answer(error=_status_error(status if isinstance(status, int) else 0, body))
    try:
        return Answer(Completion.model_validate(body))
    except pydantic.ValidationError:
        return Answer(error=ProviderUnavailable("the 200 body is not a chat completion"))


def match(asked: Sequence[str], lines: Iterable[dict[str, Any]]) -> Matched:
    """Each custom id of ``asked`` with its answer from ``lines`` (the output and error files'
    lines, in any order): exactly one per input, the first line for it if several."""
    wanted = set(asked)
    answers: dict[str, Answer] = {}
    matched = Matched(answers)
    for line in lines:
        cid = line.get("custom_id")
        if not isinstance(cid, str) or cid not in wanted:
            matched.unknown += 1
        elif cid in answers:
            matched.duplicates += 1
        else:
            answers[cid] = answer_of(line)
    for cid in asked:
        if cid not in answers:
            matched.missing.append(cid)
            answers[cid] = Answer(error=ProviderUnavailable("no line of the batch answered it"))
    return matched
