"""modstream's own exceptions: one small tree, so decisions read one attribute.

    ModstreamError                 retriable  fatal   what happens
    ├── TransientError             True       False   retried with backoff; never dead-lettered
    │   ├── RateLimited            True       False   429; carries the server's retry-after
    │   ├── ProviderUnavailable    True       False   5xx, timeout, connection error, empty choices
    │   ├── FormatDowngraded       True       False   400 for the response format in ``auto``:
    │   │                                             sent again at once in the next mode
    │   ├── BrokerUnavailable      True       False   a retriable Kafka error (no leader, timeout)
    │   └── RegistryUnavailable    True       False   the schema registry is down, 5xx, timeout
    ├── PermanentError             False      False   the message can never succeed: dead letter
    │   ├── DecodeError                               bytes are not a valid ModerationRequest
    │   ├── AdmissionError                            over a size or token limit
    │   ├── RequestRejected                           400/422 about this message's content
    │   ├── InvalidReply                              the model's reply is unusable after repair
    │   ├── PersistentFailure                         transient-looking errors on this message
    │   │                                             alone, attempt after attempt (poison)
    │   └── PublishRejected                           Kafka refused its outputs for good (too
    │                                                 large, invalid record, not authorized)
    └── FatalError                 False      True    misconfiguration: stop intake, exit 3
        ├── ConfigError                               a setting is invalid (exit 2)
        ├── ProviderAuthError                         401/403: the key or the model is wrong
        ├── ProviderMisconfigured                     404 model not found, or one 400 repeated
        │                                             for many messages (unsupported parameter)
        ├── BrokerRejected                            Kafka refuses what we must write: not
        │                                             authorized, or a dead letter rejected
        ├── ProducerFencedError                       exactly-once: a newer instance took over
        ├── OutputSchemaRejected                      an output schema cannot be registered:
        │                                             incompatible, refused, registry down
        ├── BatchFailed                               a Batch API batch failed validation,
        │                                             expired or was cancelled
        └── RebalanceFailed                           a rebalance callback failed unexpectedly

Third-party exceptions (openai, aiokafka, the schema registry client) are translated into this
tree in exactly one place per adapter (``raise ... from exc``); everything downstream reads
``retriable`` and ``fatal``.
Each class names its ``kind`` on its ``class`` line, and no two share one. A pydantic
``ValidationError`` (settings, a policy or prices file, a model's reply) is put in words by
:func:`describe_validation_error`, the one place that does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # only its .errors() is read: no pydantic import for the error tree
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

#: Each kind and the class that has it.
_KINDS: dict[str, str] = {}


class ModstreamError(Exception):
    """Base of every error modstream raises on purpose."""

    retriable: ClassVar[bool] = False
    fatal: ClassVar[bool] = False
    #: The process's exit code when this error stops it (the CLI reads it).
    exit_code: ClassVar[int] = 1

    #: Short, stable name used in dead letters, usage outcomes and metrics labels.
    kind: ClassVar[str] = "error"

    def __init_subclass__(cls, *, kind: str, **rest: Any) -> None:
        # Required, so a new error never inherits its parent's kind and lands in the parent's
        # dead-letter reason and metric series unnoticed.
        super().__init_subclass__(**rest)
        taken = _KINDS.setdefault(kind, cls.__qualname__)
        if taken != cls.__qualname__:
            raise TypeError(f"{cls.__qualname__}: kind {kind!r} is {taken}'s already")
        cls.kind = kind

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(ModstreamError, kind="transient"):
    """Worth trying again later; the message itself is fine."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait, when it said so.
        self.retry_after = retry_after


class RateLimited(TransientError, kind="rate_limited"):
    """The provider answered 429."""


class ProviderUnavailable(TransientError, kind="provider_unavailable"):
    """5xx, timeout, dropped connection, or a reply with no choices."""


class FormatDowngraded(TransientError, kind="format_downgraded"):
    """The server rejected the response format, and ``MODSTREAM_RESPONSE_FORMAT=auto`` moved
    one step down (:class:`consumer.model.reply_format.ResponseFormats`): the same request goes
    again in the new mode. Never poison, never a circuit failure: the server answered."""


class BrokerUnavailable(TransientError, kind="broker_unavailable"):
    """A Kafka error that may succeed later (aiokafka says ``retriable``): no leader, timeout."""


class RegistryUnavailable(TransientError, kind="registry_unavailable"):
    """The schema registry is down, timed out or answered 5xx (or 408/429): retried, the record
    waits."""


class PermanentError(ModstreamError, kind="permanent"):
    """The message can never succeed; it goes to the dead-letter topic with this reason."""


class DecodeError(PermanentError, kind="decode"):
    """The record's bytes are not a valid ModerationRequest."""


class AdmissionError(PermanentError, kind="admission"):
    """The content is over a hard size or token limit."""


class RequestRejected(PermanentError, kind="request_rejected"):
    """The provider rejected the request itself (400, 404, 422)."""


class InvalidReply(PermanentError, kind="invalid_reply"):
    """The model's reply did not match the schema, even after the repair ladder's last rung."""

    def __init__(self, message: str, *, reply: str | None = None) -> None:
        super().__init__(message)
        #: The raw reply text, kept for the dead letter.
        self.reply = reply


class PersistentFailure(PermanentError, kind="persistent_failure"):
    """This message's calls keep failing while other messages succeed: poison, not an outage."""


class PublishRejected(PermanentError, kind="publish_rejected"):
    """Kafka refused an output with an error that can never succeed (``retriable=False``)."""


class FatalError(ModstreamError, kind="fatal"):
    """Nothing will work until a person fixes the configuration."""

    fatal = True
    exit_code = 3


class ConfigError(FatalError, kind="config"):
    """A setting is invalid or missing."""

    exit_code = 2


class ProviderAuthError(FatalError, kind="provider_auth"):
    """401/403 from the provider: wrong key, wrong organisation, or no access to the model."""


class ProviderMisconfigured(FatalError, kind="provider_misconfigured"):
    """Every message would fail the same way: an unknown model, a parameter the model rejects."""


class BrokerRejected(FatalError, kind="broker_rejected"):
    """Kafka refuses what modstream must write (no ACL; the dead-letter topic refuses it)."""


class OutputSchemaRejected(FatalError, kind="output_schema"):
    """An output topic's schema cannot be registered at start-up (MODSTREAM_OUTPUT_FORMAT avro
    or json_schema): it breaks the subject's readers, the registry refuses it, or never answers."""


class ProducerFencedError(FatalError, kind="producer_fenced"):
    """Exactly-once mode: another instance now owns this transactional id."""


class BatchFailed(FatalError, kind="batch_failed"):
    """A replay's Batch API batch ended without results: it failed validation (the first
    errors in the message), expired, or was cancelled."""


class RebalanceFailed(FatalError, kind="rebalance_failed"):
    """A rebalance callback failed unexpectedly; aiokafka would swallow it, so we stop."""


def first_fatal(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first fatal error in ``group``, or ``None``.

    A task group wraps what its tasks raise; a fatal error (401/403, fenced, misconfigured)
    must still reach the process's exit code, not hide in the group's traceback.
    """
    found: BaseException | None = group.subgroup(lambda e: getattr(e, "fatal", False))
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def _as_is(loc: str) -> str:
    return loc


def _never(loc: str, given: object) -> bool:
    return False


def describe_validation_error(
    exc: ValidationError,
    *,
    name: Callable[[str], str] = _as_is,
    whole: str = "value",
    echo: Callable[[str, object], bool] = _never,
    most: int | None = None,
    sep: str = "; ",
) -> str:
    """``exc`` in words a person (or a model) can act on: ``<name>: <reason>`` per error.

    ``name`` turns an error's location (``"a.b"``) into what the reader knows it by (the
    environment variable, the knob); ``whole`` names the value itself, for an error with no
    location (a model validator's), and ``""`` leaves such an error's text alone (a check that
    names what it checks). ``(got <input>)`` follows where ``echo(location, input)``
    allows it: never a secret. ``most`` keeps the first errors only; ``sep`` joins them.
    """
    errors = exc.errors(include_url=False)
    # pydantic counts a collection's length after dropping its invalid items, so a one-item
    # list whose item is bad also reads "should have at least 1 item": the item says why.
    locs = [tuple(e["loc"]) for e in errors]
    errors = [
        e
        for e, loc in zip(errors, locs, strict=True)
        if not (e["type"] == "too_short" and any(_inside(other, loc) for other in locs))
    ]
    parts = []
    for err in errors[:most]:
        loc = ".".join(str(part) for part in err["loc"])
        given = err.get("input")
        shown = f" (got {given!r})" if echo(loc, given) else ""
        where = name(loc) if loc else whole
        parts.append(f"{where}: {_reason(err)}{shown}" if where else f"{_reason(err)}{shown}")
    return sep.join(parts)


def _inside(loc: tuple[int | str, ...], outer: tuple[int | str, ...]) -> bool:
    """Whether ``loc`` is strictly within ``outer`` (an item of that collection, or deeper)."""
    return len(loc) > len(outer) and loc[: len(outer)] == outer


def _reason(err: ErrorDetails) -> str:
    # A validator's own ValueError reads as pydantic's "Value error, <text>": the text alone
    # is what its author wrote for the reader.
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    return err["msg"]
