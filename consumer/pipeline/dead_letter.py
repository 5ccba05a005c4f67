"""Dead letters: an input that can never succeed, with its bytes and reason, cut to fit its topic.

A dead letter carries the input record as it came (payload base64, headers, coordinates), the
stage that gave up and why. Its topic has a size limit like any other, and an input that was
refused for being too large would be refused again inside its dead letter: :func:`fit` cuts it
until it fits, payload first, so the pipeline never loses an input for want of room.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Literal

from consumer.errors import BrokerRejected, InvalidReply, ModstreamError
from consumer.pipeline.source import Envelope
from schemas import DeadLetter, Header, make_event_id

__all__ = ["Stage", "dead_letter", "fit"]

#: The stage that gave up on an input (``DeadLetter.stage``).
Stage = Literal["decode", "admit", "classify", "publish"]

#: An error message or reply longer than this is cut when a dead letter must shrink.
_SHRUNK_TEXT_CHARS = 2000


def dead_letter(
    envelope: Envelope,
    error: ModstreamError,
    *,
    stage: Stage,
    policy_version: str,
    attempts: int = 0,
    redact: bool = False,
    max_bytes: int | None = None,
) -> DeadLetter:
    """The dead letter for an input that can never succeed, carrying its bytes and reason.

    With ``max_bytes``, the serialized dead letter is cut to at most that size (see
    :func:`fit`), so it always fits the dead-letter topic.
    """
    value = envelope.value or b""
    dead = DeadLetter(
        event_id=make_event_id(envelope.source, policy_version, "dead_letter"),
        source=envelope.source,
        stage=stage,
        error_class=type(error).__name__,
        error_message=error.message,
        attempts=attempts,
        payload_b64=None if redact else base64.b64encode(value).decode(),
        payload_sha256=hashlib.sha256(value).hexdigest(),
        payload_redacted=redact,
        payload_length=None if envelope.value is None else len(value),
        headers=[
            Header(key=k, value_b64=None if v is None else base64.b64encode(v).decode())
            for k, v in envelope.headers
        ],
        reply=error.reply if isinstance(error, InvalidReply) and not redact else None,
        created_at=datetime.now(UTC),
    )
    return dead if max_bytes is None else fit(dead, value, max_bytes)


def _size(dead: DeadLetter) -> int:
    return len(dead.model_dump_json().encode())


def _upper_bound(dead: DeadLetter) -> int:
    """More than the serialized size can be: JSON escapes a control character to 6 bytes,
    and UTF-8 takes at most 4; base64 is ASCII."""
    texts = len(dead.error_message) + len(dead.reply or "") + len(dead.error_class)
    texts += sum(len(h.key) for h in dead.headers) + len(dead.source.key or "")
    texts += len(dead.source.topic)
    encoded = len(dead.payload_b64 or "") + sum(len(h.value_b64 or "") for h in dead.headers)
    return 6 * texts + encoded + 64 * len(dead.headers) + 2048


def _shorten(dead: DeadLetter, chars: int) -> DeadLetter:
    return dead.model_copy(
        update={
            "error_message": dead.error_message[:chars],
            "reply": None if dead.reply is None else dead.reply[:chars],
        }
    )


def _without_header_values(dead: DeadLetter) -> DeadLetter:
    headers = [Header(key=h.key[:256], value_b64=None) for h in dead.headers]
    return dead.model_copy(update={"headers": headers, "headers_truncated": True})


def fit(dead: DeadLetter, value: bytes, max_bytes: int) -> DeadLetter:
    """``dead``, cut until its JSON is at most ``max_bytes``: what a dead-letter topic takes.

    The payload gives way first: it becomes the longest head slice of ``value`` that fits
    (``payload_truncated``). Only when even the rest (source, reason, headers) is too large are
    the error message and reply shortened and header values left out (keys kept,
    ``headers_truncated``). ``payload_sha256`` and ``payload_length`` always describe the whole
    original, so it can be found and compared. Raises ``BrokerRejected`` when even the
    skeleton is larger than ``max_bytes``.
    """
    if _upper_bound(dead) <= max_bytes or _size(dead) <= max_bytes:
        return dead  # most dead letters: far below the limit, serialized once more at most
    redacted = dead.payload_b64 is None
    rest = dead if redacted else dead.model_copy(update={"payload_b64": ""})
    for shrink in (
        lambda d: _shorten(d, _SHRUNK_TEXT_CHARS),
        _without_header_values,
        lambda d: _shorten(d, _SHRUNK_TEXT_CHARS // 8),
    ):
        if _size(rest) <= max_bytes:
            break
        rest = shrink(rest)
    room = max_bytes - _size(rest)
    if room < 0:
        raise BrokerRejected(
            f"a dead letter for {dead.source.topic}[{dead.source.partition}]@"
            f"{dead.source.offset} does not fit the dead-letter topic even without its payload "
            f"({max_bytes} bytes allowed): raise the topic's max.message.bytes"
        )
    if redacted:
        return rest
    head = value[: room // 4 * 3]  # base64: 4 characters per 3 bytes
    return rest.model_copy(
        update={
            "payload_b64": base64.b64encode(head).decode(),
            "payload_truncated": len(head) < len(value),
        }
    )
