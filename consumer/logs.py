"""structlog set-up: JSON lines in production, a readable console in a terminal.

Every line goes to stderr through the same processors, structlog's own and the stdlib loggers'
of aiokafka, openai and aiohttp alike (``ProcessorFormatter``), so production logs are JSON
throughout and the redaction below applies to all of them:

- **Secrets never.** The settings hold them as ``SecretStr`` (rendered ``**********``); a value
  whose key looks like a credential is masked; and the configured secret values themselves
  (the API key, the SASL password), and any ``Bearer`` token, are masked wherever they appear
  in a line, exception tracebacks included.
- **Content only on request.** Values under content keys (``text``, ``content``, ``context``,
  ``reply``) are replaced by their length unless ``MODSTREAM_LOG_CONTENT=true``.
- **Context per message.** The pipeline binds partition, offset and event id with
  ``structlog.contextvars``; every line logged while a message is processed carries them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from structlog.typing import Processor

from consumer.settings import LogFormat, Settings

MASK = "**********"
_SECRET_KEY = re.compile(r"(api_?key|password|secret|token$|authorization)", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE)
#: Event keys whose values are message content.
CONTENT_KEYS = frozenset({"text", "content", "context", "reply"})
#: Shorter secret values are not masked by value (masking "x" everywhere would shred the log).
_MIN_SECRET_LEN = 6


def _mask_secret_keys(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if _SECRET_KEY.search(key):
            event[key] = MASK
    return event


class _MaskSecretValues:
    """Mask known secret values and bearer tokens in every string of the event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            if self._pattern is not None:
                value = self._pattern.sub(MASK, value)
            return _BEARER.sub(r"\g<1>" + MASK, value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self._clean(str(value))  # an exception or any object: as it would render

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self._clean(value)
        return event


def _hide_content(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in CONTENT_KEYS.intersection(event):
        value = event[key]
        if value is not None:
            event[key] = f"[{len(str(value))} chars hidden; MODSTREAM_LOG_CONTENT=true shows them]"
    return event


def secret_values(settings: Settings) -> list[str]:
    """The configured secrets, as they must never appear in a log line."""
    secrets = [settings.openai_api_key.get_secret_value()]
    for optional in (settings.sasl_password, settings.ssl_key_password):
        if optional is not None:
            secrets.append(optional.get_secret_value())
    return [s for s in secrets if s]


def configure_logging(settings: Settings) -> None:
    """Route structlog and the stdlib loggers (aiokafka, openai, aiohttp) to stderr."""
    level = getattr(logging, settings.log_level)
    as_json = settings.log_format == LogFormat.JSON or (
        settings.log_format == LogFormat.AUTO and not sys.stderr.isatty()
    )
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    redact: list[Processor] = [] if settings.log_content else [_hide_content]
    redact += [_mask_secret_keys, _MaskSecretValues(secret_values(settings))]
    stamp: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamp,
            structlog.processors.format_exc_info,
            *redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Third-party stdlib loggers: warnings and above only, same stream, same processors.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                *stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)  # Python warnings too: one line format on stderr
