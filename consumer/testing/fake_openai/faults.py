"""Which fault a request gets, how long it waits, and what its error looks like.

One uniform draw per request is compared against the cumulative fault probabilities in the
order of :data:`~consumer.testing.fake_openai.config.FAULT_KNOBS`, so each probability is exactly
the share of requests with that fault. With ``seed`` set, the sequence of faults and latencies is
reproducible for a given sequence of requests.
"""

from __future__ import annotations

import itertools
import json
import random
from enum import StrEnum
from typing import Any

from consumer.testing.fake_openai.config import FAULT_KNOBS, FakeConfig


class Outcome(StrEnum):
    """What happened to a request; the keys of ``by_outcome`` in ``/_fake/stats``."""

    OK = "ok"
    RATE_LIMITED = "429"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    HANG = "hang"
    DROP = "drop"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    REFUSAL = "refusal"
    CONTENT_FILTER = "content_filter"
    UNAUTHORIZED = "401"
    BAD_REQUEST = "400"
    NOT_FOUND = "404"
    CONFLICT = "409"
    # One malformed kind each; the values are the kinds ``reply.malformed`` makes.
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    FENCED = "fenced"
    TRAILING_PROSE = "trailing_prose"
    UNKNOWN_KEYS = "unknown_keys"
    OUT_OF_RANGE = "out_of_range"


_FAULTS: dict[str, Outcome] = {
    "p_429": Outcome.RATE_LIMITED,
    "p_500": Outcome.SERVER_ERROR,
    "p_503": Outcome.UNAVAILABLE,
    "p_hang": Outcome.HANG,
    "p_drop": Outcome.DROP,
    "p_malformed": Outcome.MALFORMED,
    "p_truncated": Outcome.TRUNCATED,
    "p_refusal": Outcome.REFUSAL,
    "p_content_filter": Outcome.CONTENT_FILTER,
    "p_invalid_json": Outcome.INVALID_JSON,
    "p_schema_violation": Outcome.SCHEMA_VIOLATION,
    "p_fenced": Outcome.FENCED,
    "p_trailing_prose": Outcome.TRAILING_PROSE,
    "p_unknown_keys": Outcome.UNKNOWN_KEYS,
    "p_out_of_range": Outcome.OUT_OF_RANGE,
}
assert tuple(_FAULTS) == FAULT_KNOBS

#: Malformed replies of one kind each (``p_malformed`` alternates the first two).
MALFORMED_KINDS = frozenset(
    {
        Outcome.INVALID_JSON,
        Outcome.SCHEMA_VIOLATION,
        Outcome.FENCED,
        Outcome.TRAILING_PROSE,
        Outcome.UNKNOWN_KEYS,
        Outcome.OUT_OF_RANGE,
    }
)

#: Faults that only make sense for a chat reply; other endpoints answer normally instead.
REPLY_FAULTS = frozenset(
    {Outcome.MALFORMED, Outcome.TRUNCATED, Outcome.REFUSAL, Outcome.CONTENT_FILTER}
    | MALFORMED_KINDS
)


def error_document(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    """:func:`error_document` as JSON bytes."""
    return json.dumps(error_document(message, kind, code, param)).encode()


class Fail(Exception):  # a control-flow signal: "stop here and send this error"
    """Stop handling a request and send an OpenAI-shaped error with ``status``."""

    def __init__(
        self,
        status: int,
        outcome: Outcome,
        message: str,
        kind: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.outcome, self.kind, self.code = status, outcome, kind, code
        self.headers = headers or {}
        self.param: str | None = None

    def body(self) -> bytes:
        """The error JSON."""
        return error_body(str(self), self.kind, self.code, self.param)

    def document(self) -> dict[str, Any]:
        """The error object (a batch line's response body)."""
        return error_document(str(self), self.kind, self.code, self.param)

    @classmethod
    def bad_request(cls, message: str, code: str | None = None) -> Fail:
        """400 invalid_request_error."""
        return cls(400, Outcome.BAD_REQUEST, message, "invalid_request_error", code=code)

    @classmethod
    def model_not_found(cls, model: str) -> Fail:
        """404 model_not_found, in OpenAI's words."""
        message = f"The model `{model}` does not exist or you do not have access to it."
        kind, code = "invalid_request_error", "model_not_found"
        return cls(404, Outcome.NOT_FOUND, message, kind, code=code)

    @classmethod
    def unsupported_parameter(cls, param: str) -> Fail:
        """400 unsupported_parameter, in OpenAI's words."""
        message = (
            f"Unsupported parameter: '{param}' is not supported with this model. Use "
            "'max_completion_tokens' instead."
            if param == "max_tokens"
            else f"Unsupported parameter: '{param}' is not supported with this model."
        )
        fail = cls.bad_request(message, "unsupported_parameter")
        fail.param = param
        return fail

    @classmethod
    def json_schema_unsupported(cls) -> Fail:
        """400 for a ``json_schema`` response_format, in OpenAI's words for a model without
        structured outputs."""
        message = (
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with "
            "this model."
        )
        fail = cls.bad_request(message)
        fail.param = "response_format"
        return fail

    @classmethod
    def unauthorized(cls) -> Fail:
        """401 invalid_api_key."""
        message = "Incorrect API key provided."
        kind, code = "invalid_request_error", "invalid_api_key"
        return cls(401, Outcome.UNAUTHORIZED, message, kind, code=code)

    @classmethod
    def server_error(cls) -> Fail:
        """500 server_error."""
        message = "The server had an error while processing your request. Sorry about that!"
        return cls(500, Outcome.SERVER_ERROR, message, "server_error")

    @classmethod
    def unavailable(cls, message: str) -> Fail:
        """503 server_error."""
        return cls(503, Outcome.UNAVAILABLE, message, "server_error")

    @classmethod
    def rate_limited(cls, message: str, kind: str, headers: dict[str, str]) -> Fail:
        """429 rate_limit_exceeded; ``kind`` is "requests" or "tokens" as OpenAI says."""
        code = "rate_limit_exceeded"
        return cls(429, Outcome.RATE_LIMITED, message, kind, code=code, headers=headers)


def _seconds_text(seconds: float) -> str:
    # Whole seconds as an integer (RFC 9110); fractions kept, since the SDK parses floats and
    # rounding 50 ms up to 1 s would slow every retry test down.
    return (
        str(int(seconds)) if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0").rstrip(".")
    )


class Dice:
    """Random decisions for one server: fault, latency, and alternations."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # simulation, not security
        self._retry_turn = itertools.cycle(("seconds", "ms"))
        self._malformed_turn = itertools.cycle(("invalid_json", "schema_violation"))
        self._filter_turn = itertools.cycle((None, ""))

    def roll(self, config: FakeConfig) -> Outcome:
        """The fault for this request, or OK."""
        if not any(getattr(config, name) for name in FAULT_KNOBS):
            return Outcome.OK  # no draw: keeps a seeded sequence aligned with faulty requests
        draw = self.rng.random()
        edge = 0.0
        for name, outcome in _FAULTS.items():
            edge += getattr(config, name)
            if draw < edge:
                return outcome
        return Outcome.OK

    def latency(self, config: FakeConfig) -> float:
        """Seconds to wait before answering."""
        mean = config.latency_ms / 1000.0
        if mean <= 0:
            return 0.0
        if config.latency_dist == "exponential":
            return self.rng.expovariate(1.0 / mean)
        if config.latency_dist == "uniform":
            return self.rng.uniform(0.0, 2.0 * mean)
        return mean

    def retry_after(self, seconds: float, mode: str) -> dict[str, str]:
        """``retry-after`` and/or ``retry-after-ms`` headers for a 429."""
        if mode == "mixed":
            mode = next(self._retry_turn)
        headers = {}
        if mode in ("seconds", "both"):
            headers["retry-after"] = _seconds_text(seconds)
        if mode in ("ms", "both"):
            headers["retry-after-ms"] = str(round(seconds * 1000))
        return headers

    def malformed_kind(self) -> str:
        """Alternates "invalid_json" and "schema_violation"."""
        return next(self._malformed_turn)

    def filtered_content(self) -> str | None:
        """Alternates null and empty content for content-filter replies."""
        return next(self._filter_turn)
