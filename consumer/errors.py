"""modstream's own exceptions: one small tree, so decisions read one attribute.

    ModstreamError                 retriable  fatal   what happens
    ├── TransientError             True       False   retried with backoff; never dead-lettered
    │   ├── RateLimited            True       False   429; carries the server's retry-after
    │   ├── ProviderUnavailable    True       False   5xx, timeout, connection error, empty choices
    │   └── BrokerUnavailable      True       False   Kafka could not acknowledge in time
    ├── PermanentError             False      False   the message can never succeed: dead letter
    │   ├── DecodeError                               bytes are not a valid ModerationRequest
    │   ├── AdmissionError                            over a size or token limit
    │   ├── RequestRejected                           400/404/422 from the provider
    │   └── InvalidReply                              the model's reply is unusable after repair
    └── FatalError                 False      True    misconfiguration: stop intake, exit non-zero
        ├── ConfigError                               a setting is invalid
        ├── ProviderAuthError                         401/403: the key or the model is wrong
        └── ProducerFencedError                       exactly-once: a newer instance took over

Third-party exceptions (openai, aiokafka) are translated into this tree in exactly one place
per adapter (``raise ... from exc``); everything downstream reads ``retriable`` and ``fatal``.
"""

from __future__ import annotations

from typing import ClassVar


class ModstreamError(Exception):
    """Base of every error modstream raises on purpose."""

    retriable: ClassVar[bool] = False
    fatal: ClassVar[bool] = False

    #: Short, stable name used in dead letters, usage outcomes and metrics labels.
    kind: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(ModstreamError):
    """Worth trying again later; the message itself is fine."""

    retriable = True
    kind = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait, when it said so.
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The provider answered 429."""

    kind = "rate_limited"


class ProviderUnavailable(TransientError):
    """5xx, timeout, dropped connection, or a reply with no choices."""

    kind = "provider_unavailable"


class BrokerUnavailable(TransientError):
    """Kafka did not acknowledge an output in time."""

    kind = "broker_unavailable"


class PermanentError(ModstreamError):
    """The message can never succeed; it goes to the dead-letter topic with this reason."""

    kind = "permanent"


class DecodeError(PermanentError):
    """The record's bytes are not a valid ModerationRequest."""

    kind = "decode"


class AdmissionError(PermanentError):
    """The content is over a hard size or token limit."""

    kind = "admission"


class RequestRejected(PermanentError):
    """The provider rejected the request itself (400, 404, 422)."""

    kind = "request_rejected"


class InvalidReply(PermanentError):
    """The model's reply did not match the schema, even after one repair."""

    kind = "invalid_reply"

    def __init__(self, message: str, *, reply: str | None = None) -> None:
        super().__init__(message)
        #: The raw reply text, kept for the dead letter.
        self.reply = reply


class FatalError(ModstreamError):
    """Nothing will work until a person fixes the configuration."""

    fatal = True
    kind = "fatal"


class ConfigError(FatalError):
    """A setting is invalid or missing."""

    kind = "config"


class ProviderAuthError(FatalError):
    """401/403 from the provider: wrong key, wrong organisation, or no access to the model."""

    kind = "provider_auth"


class ProducerFencedError(FatalError):
    """Exactly-once mode: another instance now owns this transactional id."""

    kind = "producer_fenced"
