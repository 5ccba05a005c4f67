"""The model provider's errors in our terms: the one place openai's exceptions become ours.

Every HTTP call to the provider (chat completions, moderations) goes through :func:`translate`
on failure, so the retry layer, the circuit breaker and the dead-letter decision read one
attribute (``retriable``) of our own error tree instead of openai's exception classes.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime
from typing import Any

import openai

from consumer.errors import (
    ModstreamError,
    ProviderAuthError,
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


def translate(exc: Exception) -> ModstreamError:
    """The one place where openai's (and the transport's) exceptions become ours."""
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
            return ProviderAuthError(
                f"{detail}. Check OPENAI_API_KEY / OPENAI_BASE_URL and access to the model."
            )
        if status in (408, 409) or status >= 500:
            return ProviderUnavailable(detail, retry_after=wait)
        return RequestRejected(detail)
    return ProviderUnavailable(f"unexpected error from the model client: {exc!r}")


_OUTCOME_OF = {
    RateLimited: UsageOutcome.RATE_LIMITED,
    ProviderUnavailable: UsageOutcome.PROVIDER_UNAVAILABLE,
    ProviderAuthError: UsageOutcome.AUTH,
    RequestRejected: UsageOutcome.REJECTED,
}


def failed_outcome(error: ModstreamError) -> UsageOutcome:
    """The usage outcome of a call that failed with ``error``."""
    return _OUTCOME_OF.get(type(error), UsageOutcome.PROVIDER_UNAVAILABLE)
