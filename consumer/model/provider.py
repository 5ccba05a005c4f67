"""The model provider's errors in our terms: the one place openai's exceptions become ours.

Every HTTP call to the provider (chat completions, moderations) goes through :func:`translate`
on failure, so the retry layer, the circuit breaker and the dead-letter decision read one
attribute (``retriable``) of our own error tree instead of openai's exception classes.

A 404 is a misconfiguration (:class:`~consumer.errors.ProviderMisconfigured`, fatal): an unknown
model (an Ollama model not pulled) or a wrong base URL, never a property of one message; its
message names the model and the base URL (without credentials), never the API key. A 400 stays
:class:`~consumer.errors.RequestRejected`; :func:`rejection_signature` gives what makes two 400s
"the same error" (status, code, param, the provider's message text), so classify can tell a
parameter the provider rejects for every message from one message's bad content.

:func:`cause_of` says what a failed call ran into (connection refused, timeout, status 503...)
with the base URL, as log fields: the circuit breaker's lines carry it, so an outage says why.
"""

from __future__ import annotations

import email.utils
import errno
import math
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import openai

from consumer.errors import (
    ModstreamError,
    ProviderAuthError,
    ProviderMisconfigured,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
)
from schemas import UsageOutcome


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a response asks for: ``retry-after-ms`` first, then ``retry-after``.

    Garbage (not a number, not an HTTP-date, not finite) is ``None``: a bad header must not
    stop the retry or make it wait forever.
    """
    if headers is None:
        return None
    if (ms := _seconds(headers.get("retry-after-ms"))) is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if (seconds := _seconds(value)) is not None or not value:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC without a zone (RFC 5322)
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds(value: str | None) -> float | None:
    """A finite, non-negative number from a header value, else ``None``."""
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


def public_url(url: object) -> str:
    """``url`` without user info, query or fragment: safe to show in a message."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def translate(
    exc: Exception, *, model: str | None = None, base_url: object = None
) -> ModstreamError:
    """The one place where openai's (and the transport's) exceptions become ours.

    ``model`` and ``base_url`` name what was called, for the message of a misconfiguration.
    """
    if isinstance(exc, openai.APITimeoutError):
        return ProviderUnavailable("the model did not answer within the timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnavailable(f"connection to the model failed: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        wait = retry_after_seconds(exc.response.headers)
        detail = f"HTTP {status} from the model provider: {exc.message}"
        if status == 429:
            return RateLimited(detail, retry_after=wait)
        if status in (401, 403):
            where = "" if base_url is None else f" at {public_url(base_url)}"
            return ProviderAuthError(
                f"HTTP {status} from the model provider{where}: "
                f"{provider_text(exc).rstrip('.')}. Check OPENAI_API_KEY (or "
                "MODSTREAM_OPENAI_API_KEY), OPENAI_BASE_URL and access to the model."
            )
        if status in (408, 409) or status >= 500:
            return ProviderUnavailable(detail, retry_after=wait)
        if status == 404:
            where = f"model {model!r}" if model else "the model"
            if base_url is not None:
                where += f" at {public_url(base_url)}"
            return ProviderMisconfigured(
                f"{detail}. The provider does not know {where}: check MODSTREAM_MODEL (an "
                "Ollama model must be pulled first), the policy's first-tier model and "
                "OPENAI_BASE_URL."
            )
        return RequestRejected(detail)
    return ProviderUnavailable(f"unexpected error from the model client: {exc!r}")


def provider_text(exc: openai.APIStatusError) -> str:
    """The provider's own words for an error reply: the body's ``message``, else the SDK's
    text without its ``Error code: 401 -`` prefix."""
    body = exc.body
    text = body.get("message") if isinstance(body, dict) else None
    if isinstance(text, str) and text:
        return text
    return exc.message.removeprefix(f"Error code: {exc.status_code} - ")


#: The longest provider message a :class:`Cause` keeps (a gateway may answer with a page).
_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class Cause:
    """What one failed provider call ran into, safe to log: never the key.

    ``cause``: connection refused, unknown host, timeout, tls error, status 503...;
    ``status``: the HTTP status, when there was an answer; ``detail``: a short message;
    ``base_url``: where the call went, without credentials or query.
    """

    cause: str
    status: int | None
    detail: str
    base_url: str | None

    def fields(self) -> dict[str, object]:
        """The cause as structured log fields."""
        return {
            "cause": self.cause,
            "status": self.status,
            "detail": self.detail,
            "base_url": self.base_url,
        }


def cause_of(error: BaseException, *, base_url: object = None, secret: str = "") -> Cause:
    """What the failed call behind ``error`` (one of ours, raised ``from`` openai's) ran into.

    ``secret`` (the API key) is masked should the provider's text echo it.
    """
    origin = error.__cause__ if isinstance(error.__cause__, openai.OpenAIError) else error
    status = origin.status_code if isinstance(origin, openai.APIStatusError) else None
    if isinstance(origin, openai.APIStatusError):
        kind, detail = f"status {status}", provider_text(origin)
    elif isinstance(origin, openai.APIConnectionError):  # a timeout is one too
        # The transport's own words ("Cannot connect to host ..."), not the SDK's summary.
        inner = origin.__cause__
        kind, detail = _connection_failure(origin), str(inner) if inner else str(origin)
    else:
        kind, detail = getattr(error, "kind", type(error).__name__), str(error)
    if len(secret) >= 8:  # a real key; not the placeholder a keyless local server gets
        detail = detail.replace(secret, "***")
    if len(detail) > _DETAIL_CHARS:
        detail = detail[: _DETAIL_CHARS - 3] + "..."
    url = None if base_url is None else public_url(base_url)
    return Cause(kind, status, detail, url)


def _connection_failure(exc: BaseException) -> str:
    """What a connection error was, from the transport's exceptions under openai's."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen and len(seen) < 10:
        seen.append(link)
        link = link.__cause__ or link.__context__
    for link in seen:
        code = link.errno if isinstance(link, OSError) else None
        # aiohttp's ClientConnectorError is an OSError carrying the errno of the one it wraps.
        if isinstance(link, ConnectionRefusedError) or code == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return "unknown host"
        if isinstance(link, ssl.SSLError):
            return "tls error"
        if isinstance(link, ConnectionResetError) or code == errno.ECONNRESET:
            return "connection reset"
        if isinstance(link, TimeoutError):
            return "timeout"
    for link in seen:
        if "disconnect" in type(link).__name__.lower():  # aiohttp's ServerDisconnectedError
            return "server disconnected"
    # The SDK under aiohttp reports a refused connection as a connect timeout: the checks
    # above come first so that one is named for what it is.
    return "timeout" if isinstance(exc, openai.APITimeoutError) else "connection failed"


class Signature(NamedTuple):
    """What makes two rejections "the same error": nothing content-specific is normalised."""

    status: int
    code: str | None
    param: str | None
    message: str


#: 400 codes that are about the content itself, never a misconfiguration however often they
#: repeat (a moderation stream is expected to carry content the provider's own filter flags).
CONTENT_CODES = frozenset(
    {"content_policy_violation", "content_filter", "invalid_prompt", "context_length_exceeded"}
)


def rejection_signature(error: BaseException) -> Signature | None:
    """The signature of a 400 ``error`` (translated from openai's), or ``None``.

    ``None`` also for a rejection about the content (:data:`CONTENT_CODES`).
    """
    cause = error.__cause__
    if not isinstance(cause, openai.APIStatusError) or cause.status_code != 400:
        return None
    if cause.code in CONTENT_CODES:
        return None
    body = cause.body
    text = body.get("message") if isinstance(body, dict) else None
    message = text if isinstance(text, str) else cause.message
    return Signature(cause.status_code, cause.code, cause.param, message)


_OUTCOME_OF = {
    RateLimited: UsageOutcome.RATE_LIMITED,
    ProviderUnavailable: UsageOutcome.PROVIDER_UNAVAILABLE,
    ProviderAuthError: UsageOutcome.AUTH,
    RequestRejected: UsageOutcome.REJECTED,
    ProviderMisconfigured: UsageOutcome.REJECTED,
}


def failed_outcome(error: ModstreamError) -> UsageOutcome:
    """The usage outcome of a call that failed with ``error``."""
    return _OUTCOME_OF.get(type(error), UsageOutcome.PROVIDER_UNAVAILABLE)
