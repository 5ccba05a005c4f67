"""How the reply's JSON shape is asked for: the response-format ladder, and its one-way downgrade.

``MODSTREAM_RESPONSE_FORMAT`` is ``json_schema`` (strict structured output), ``json_object``
(JSON mode, the schema written into the system prompt), ``text`` (no ``response_format`` at
all; the schema in the prompt, the reply parsed as JSON) or ``auto``: :class:`ResponseFormats`
starts at ``json_schema`` and, when the server rejects the format with a 400 (or 422) before it
ever accepted it, moves one step down the ladder for good, logged at WARNING; the chat call then
raises :class:`~consumer.errors.FormatDowngraded`, a transient error, so the rejected request is
sent again in the new mode (no dead letter, no poison count). The mode is read when a request
goes out, so requests queued for a limiter slot meanwhile go out in the new mode.
:class:`ReplyFormat` holds one reply schema in each mode's shape.

Apart from :mod:`consumer.model.request_params` (the other parameters of a request, from the
model family table) because the two change for different reasons: the family table with the
providers' model line-ups, the ladder with what a server's structured-output support is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

import openai
import structlog

from consumer.model.messages import Message

log = structlog.get_logger(__name__)

__all__ = ["ReplyFormat", "ReplyMode", "ResponseFormats", "rejects_response_format"]


class ReplyMode(StrEnum):
    """How the reply's JSON shape is asked for, strictest first."""

    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    TEXT = "text"


#: ``auto`` walks down this ladder, one step per rejection, never back up.
_LADDER: Final = (ReplyMode.JSON_SCHEMA, ReplyMode.JSON_OBJECT, ReplyMode.TEXT)

#: The schema as the system prompt states it in json_object and text mode.
_SCHEMA_NOTE = (
    "\n\nReply with one JSON object and nothing else (no code fence, no text before or after "
    "it). It must match this JSON Schema:\n"
)


@dataclass(frozen=True, slots=True)
class ReplyFormat:
    """One reply schema, ready for each mode: built once per schema, not per message."""

    #: The strict ``json_schema`` response_format.
    json_schema: MappingProxyType[str, Any]
    #: Appended to the system message in json_object and text mode.
    instructions: str

    @classmethod
    def of(cls, response_format: dict[str, Any]) -> ReplyFormat:
        """From a strict ``{"type": "json_schema", "json_schema": {...}}`` response_format."""
        schema = response_format["json_schema"]["schema"]
        text = _SCHEMA_NOTE + json.dumps(schema, separators=(",", ":"))
        return cls(MappingProxyType(response_format), text)

    def shaped(
        self, messages: list[Message], mode: ReplyMode
    ) -> tuple[list[Message], dict[str, Any] | None]:
        """``messages`` and the ``response_format`` to send in ``mode`` (None: send none)."""
        return self.messages(messages, mode), self.response_format(mode)

    def messages(self, messages: list[Message], mode: ReplyMode) -> list[Message]:
        """``messages`` as sent in ``mode``: the schema stated in the system message, unless
        the ``json_schema`` response_format carries it."""
        if mode is ReplyMode.JSON_SCHEMA:
            return messages
        first = messages[0] if messages else None
        if first is not None and first.get("role") == "system":
            system = {"role": "system", "content": first["content"] + self.instructions}
            return [system, *messages[1:]]
        return [{"role": "system", "content": self.instructions.lstrip()}, *messages]

    def response_format(self, mode: ReplyMode) -> dict[str, Any] | None:
        """The ``response_format`` sent in ``mode`` (None: text mode sends none)."""
        if mode is ReplyMode.JSON_SCHEMA:
            return dict(self.json_schema)
        return {"type": "json_object"} if mode is ReplyMode.JSON_OBJECT else None


def rejects_response_format(error: BaseException) -> bool:
    """Whether ``error`` (openai's, or ours translated from it) is a 400/422 about the
    response format."""
    cause = error if isinstance(error, openai.APIStatusError) else error.__cause__
    if not isinstance(cause, openai.APIStatusError) or cause.status_code not in (400, 422):
        return False
    if (cause.param or "").startswith("response_format"):
        return True
    text = f"{cause.message} {cause.body}".lower()
    return "response_format" in text or "json_schema" in text


class ResponseFormats:
    """The response-format mode in use by one Classifier; in ``auto``, its one-way downgrade."""

    def __init__(self, setting: str = "auto", *, where: str = "the provider") -> None:
        self.auto = setting == "auto"
        try:
            self.mode = ReplyMode.JSON_SCHEMA if self.auto else ReplyMode(setting)
        except ValueError:
            raise ValueError(
                f"MODSTREAM_RESPONSE_FORMAT: {setting!r} is not one of auto, " + ", ".join(_LADDER)
            ) from None
        self.where = where
        #: The server answered a request in the current mode: it supports it.
        self._accepted = False

    def accepted(self, mode: ReplyMode) -> None:
        """A request sent in ``mode`` got a 200."""
        if mode is self.mode:
            self._accepted = True

    def downgrade(self, mode: ReplyMode, error: BaseException) -> bool:
        """Whether a request sent in ``mode`` and rejected with ``error`` is to be sent again
        (in :attr:`mode`, which this may just have lowered): only in ``auto``, only for a
        rejection of the response format, and only while the server never accepted the mode
        (a format it took before is not the problem)."""
        if not self.auto or not rejects_response_format(error):
            return False
        if mode is not self.mode:
            return _LADDER.index(self.mode) > _LADDER.index(mode)  # moved on meanwhile
        if self._accepted or mode is ReplyMode.TEXT:
            return False
        self.mode = _LADDER[_LADDER.index(mode) + 1]
        log.warning(
            "the provider rejects the response format: switching",
            rejected=mode.value,
            now=self.mode.value,
            provider=self.where,
            error=str(getattr(error, "message", error))[:300],
        )
        return True
