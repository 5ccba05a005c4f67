"""structlog set-up: JSON lines in production, a readable console in a terminal.

Secrets never reach a log line: the settings hold them as ``SecretStr`` (which renders as
``**********``), and a last processor masks any value whose key looks like a credential, in
case one is ever passed by mistake.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from consumer.settings import LogFormat, Settings

_SECRET_KEY = re.compile(r"(api_?key|password|secret|token$|authorization)", re.IGNORECASE)


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if _SECRET_KEY.search(key):
            event[key] = "**********"
    return event


def configure_logging(settings: Settings) -> None:
    """Route structlog (and the stdlib loggers of aiokafka and openai) to stderr."""
    level = getattr(logging, settings.log_level)
    as_json = settings.log_format == LogFormat.JSON or (
        settings.log_format == LogFormat.AUTO and not sys.stderr.isatty()
    )
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Third-party stdlib loggers: warnings and above only, on the same stream.
    logging.basicConfig(stream=sys.stderr, level=max(level, logging.WARNING), force=True)
