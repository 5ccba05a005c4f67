"""modstream's own exceptions: one small tree, so decisions read one attribute.

    ModstreamError                 retriable  fatal   what happens
    ├── TransientError             True       False   retried with backoff; never dead-lettered
    │   ├── RateLimited            True       False   429; carries the server's retry-after
    │   ├── ProviderUnavailable    True       False   5xx, timeout, connection error, empty choices
    │   ├── FormatDowngraded       True       False   400 for the response format in ``auto``:
    │   │                                             sent again at once in the next mode
    │   └── BrokerUnavailable      True       False   a retriable Kafka error (no leader, timeout)
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
        └── RebalanceFailed                           a rebalance callback failed unexpectedly

Third-party exceptions (openai, aiokafka) are translated into this tree in exactly one place
per adapter (``raise ... from exc``); everything downstream reads ``retriable`` and ``fatal``.
"""

from __future__ import annotations

from typing import ClassVar


class ModstreamError(Exception):
    """Base of every error modstream raises on purpose."""

    retriable: ClassVar[bool] = False
    fatal: ClassVar[bool] = False
    #: The process's exit code when this error stops it (the CLI reads it).
    exit_code: ClassVar[int] = 1

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


class FormatDowngraded(TransientError):
    """The server rejected the response format, and ``MODSTREAM_RESPONSE_FORMAT=auto`` moved
    one step down (:class:`consumer.model.reply_format.ResponseFormats`): the same request goes
    again in the new mode. Never poison, never a circuit failure: the server answered."""

    kind = "format_downgraded"


class BrokerUnavailable(TransientError):
    """A Kafka error that may succeed later (aiokafka says ``retriable``): no leader, timeout."""

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
    """The model's reply did not match the schema, even after the repair ladder's last rung."""

    kind = "invalid_reply"

    def __init__(self, message: str, *, reply: str | None = None) -> None:
        super().__init__(message)
        #: The raw reply text, kept for the dead letter.
        self.reply = reply


class PersistentFailure(PermanentError):
    """This message's calls keep failing while other messages succeed: poison, not an outage."""

    kind = "persistent_failure"


class PublishRejected(PermanentError):
    """Kafka refused an output with an error that can never succeed (``retriable=False``)."""

    kind = "publish_rejected"


class FatalError(ModstreamError):
    """Nothing will work until a person fixes the configuration."""

    fatal = True
    kind = "fatal"
    exit_code = 3


class ConfigError(FatalError):
    """A setting is invalid or missing."""

    kind = "config"
    exit_code = 2


class ProviderAuthError(FatalError):
    """401/403 from the provider: wrong key, wrong organisation, or no access to the model."""

    kind = "provider_auth"


class ProviderMisconfigured(FatalError):
    """Every message would fail the same way: an unknown model, a parameter the model rejects."""

    kind = "provider_misconfigured"


class BrokerRejected(FatalError):
    """Kafka refuses what modstream must write (no ACL; the dead-letter topic refuses it)."""

    kind = "broker_rejected"


class ProducerFencedError(FatalError):
    """Exactly-once mode: another instance now owns this transactional id."""

    kind = "producer_fenced"


class RebalanceFailed(FatalError):
    """A rebalance callback failed unexpectedly; aiokafka would swallow it, so we stop."""

    kind = "rebalance_failed"
