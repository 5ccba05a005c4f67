"""structlog set-up: JSON lines in production, a readable console in a terminal.

Every line goes to stderr through the same processors, structlog's own and the stdlib loggers'
of aiokafka, openai and aiohttp alike (``ProcessorFormatter``), so production logs are JSON
throughout and the redaction below applies to all of them:

- **Secrets never.** The settings hold them as ``SecretStr`` (rendered ``**********``); a value
  whose key looks like a credential is masked; and the configured secret values themselves
  (the API key, the SASL and schema-registry passwords), and any ``Bearer`` token, are masked
  wherever they appear in a line, exception tracebacks included.
- **Content only on request.** Values under content keys (``text``, ``content``, ``context``,
  ``reply``) are replaced by their length unless ``MODSTREAM_LOG_CONTENT=true``.
- **Context per message.** The pipeline binds partition, offset and event id with
  ``structlog.contextvars``; every line logged while a message is processed carries them.
- **A flood is one line per interval.** A warning or error that repeats (same logger, same
  message once digits are collapsed: aiokafka's ``Unable connect to node with id 1`` during a
  broker outage, thousands a second) is written at most once per ``log_repeat_interval_s``;
  the first line after the interval carries ``repeated=N``, the number left out since the last
  one. See :class:`RepeatFilter`. Info and debug lines are never collapsed (they are per-message
  records such as dead letters).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO, cast

import structlog
from aiokafka.errors import CoordinatorNotAvailableError
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


#: Runs of digits (ids, ports, addresses, counts) do not make a message a different one.
_DIGITS = re.compile(r"\d+")
#: Lines of this level and above are collapsed when they repeat.
_COLLAPSE_FROM = logging.WARNING
_LEVELS = logging.getLevelNamesMapping() | {"EXCEPTION": logging.ERROR}


@dataclass(slots=True)
class _Seen:
    emitted_at: float  # when the last line of this message was written
    suppressed: int = 0  # left out since then


class RepeatFilter:
    """At most one line per message per ``interval_s``; the next one says how many were left out.

    A message is its key (the caller's: logger name, level and template); the key's digits are
    collapsed, so ``node 1``/``node 2`` or two ports are one message. The first occurrence is
    written; later ones within ``interval_s`` of the last written line are counted and dropped;
    the first one after the interval is written with the count (``repeated``). A count still
    pending when the flood stops is reported by :meth:`pending` (and never lost to a later
    line of another message). ``interval_s == 0`` writes everything. At most ``max_keys``
    messages are remembered (the least recently written is forgotten first, with its pending
    count), so a stream of distinct messages cannot grow memory.
    """

    def __init__(
        self,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._lock = threading.Lock()  # stdlib loggers may log from other threads

    @staticmethod
    def normalise(text: str) -> str:
        """The message's identity: its text with every run of digits as ``N``."""
        return _DIGITS.sub("N", text)

    def admit(self, key: str) -> int | None:
        """``None``: drop this line. Otherwise write it, with ``repeated`` = the int if above 0."""
        if self.interval_s <= 0:
            return 0
        key = self.normalise(key)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.emitted_at < self.interval_s:
                seen.suppressed += 1
                return None
            repeated = 0 if seen is None else seen.suppressed
            self._seen[key] = _Seen(now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
            return repeated

    def pending(self) -> dict[str, int]:
        """Messages whose left-out lines no written line has reported yet, with their counts."""
        with self._lock:
            return {k: s.suppressed for k, s in self._seen.items() if s.suppressed}

    def processor(
        self, _: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor: drop a repeated warning or error, count it on the next line."""
        level = _LEVELS.get(method.upper(), logging.INFO)  # "exception" and "critical" too
        if level < _COLLAPSE_FROM:
            return event
        repeated = self.admit(f"{event.get('logger', '')}|{method}|{event.get('event', '')}")
        if repeated is None:
            raise structlog.DropEvent
        if repeated:
            event["repeated"] = repeated
        return event

    def filter(self, record: logging.LogRecord) -> bool:
        """``logging.Filter`` protocol, for the stdlib loggers' handler (aiokafka, openai)."""
        if record.levelno < _COLLAPSE_FROM:
            return True
        template = record.msg if isinstance(record.msg, str) else record.getMessage()
        repeated = self.admit(f"{record.name}|{record.levelname}|{template}")
        if repeated is None:
            return False
        if repeated:
            record.repeated = repeated
        return True


class RetriedCoordinatorLookup(logging.Filter):
    """aiokafka's "Group Coordinator Request failed: ... CoordinatorNotAvailable", as info.

    A fresh broker creates ``__consumer_offsets`` on the first lookup and answers
    ``GroupCoordinatorNotAvailable`` until it has: aiokafka logs that at ERROR and retries. Said
    at ERROR, a normal start looks broken (every ``make demo`` on a new broker printed it). Any
    other lookup failure (a broker that went away: ``NodeNotReady``) stays an error, and is
    collapsed with its repeats by :class:`RepeatFilter`.

    aiokafka's WARNING "Marking the coordinator dead" is info too: it is the step that starts a
    new lookup, taken after a cause aiokafka logs on its own line (a failed send, an expired
    heartbeat session), or after a join a fresh broker answered ``NotCoordinator``.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a coordinator not yet available when the configured level is above INFO."""
        if record.name != "aiokafka.consumer.group_coordinator":
            return True
        message = str(record.msg)
        if message.startswith("Group Coordinator Request failed"):
            error = record.args[0] if isinstance(record.args, tuple) and record.args else None
            if not isinstance(error, CoordinatorNotAvailableError):
                return True
        elif not message.startswith("Marking the coordinator dead"):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return self.level <= logging.INFO


def _add_repeated(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Copy the count :meth:`RepeatFilter.filter` left on a stdlib record into its line."""
    record = event.get("_record")
    repeated = getattr(record, "repeated", None)
    if repeated:
        event["repeated"] = repeated
    return event


def secret_values(settings: Settings) -> list[str]:
    """The configured secrets, as they must never appear in a log line."""
    secrets = [settings.openai_api_key.get_secret_value()]
    for optional in (
        settings.sasl_password,
        settings.ssl_key_password,
        settings.schema_registry_password,
    ):
        if optional is not None:
            secrets.append(optional.get_secret_value())
    return [s for s in secrets if s]


class _CurrentStderr:
    """``sys.stderr`` as it is at each write, not as it was when logging was set up.

    Whoever swaps the stream later is then honoured: rich's progress bar (replay) redirects
    stderr so that log lines print above the bar, and an in-process test runner closes the
    stream it lent to a command; a logger that kept the old stream would write to a closed file.
    """

    def write(self, text: str) -> int:
        """Write ``text`` to the current stderr."""
        return sys.stderr.write(text)

    def flush(self) -> None:
        """Flush the current stderr."""
        sys.stderr.flush()


def configure_logging(settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Route structlog and the stdlib loggers (aiokafka, openai, aiohttp) to stderr.

    ``clock`` times the repeat intervals (tests inject one).
    """
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
    repeats = RepeatFilter(settings.log_repeat_interval_s, clock=clock)
    structlog.configure(
        processors=[
            repeats.processor,  # first: a dropped repeat costs nothing more
            structlog.contextvars.merge_contextvars,
            *stamp,
            structlog.processors.format_exc_info,
            *redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() per line, newline included (PrintLogger's print() makes two): lines of
        # several worker processes sharing the stream never interleave (consumer.ops.workers).
        logger_factory=structlog.WriteLoggerFactory(file=cast("TextIO", _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
    # Third-party stdlib loggers: warnings and above only, same stream, same processors.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                _add_repeated,
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
    handler.addFilter(repeats)  # before formatting: a dropped repeat is never rendered
    handler.addFilter(RetriedCoordinatorLookup(level))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)  # Python warnings too: one line format on stderr
