"""The fake's knobs: one pydantic-settings model read from ``MODSTREAM_FAKE_*`` variables.

The same model is re-validated when a test sends ``PATCH /_fake/config``, so a knob has one
definition, one range check and one default whichever way it is set.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.errors import ConfigError, describe_validation_error

ENV_PREFIX = "MODSTREAM_FAKE_"

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]

#: Fault probabilities in the order one uniform draw is compared against them (see faults.py).
FAULT_KNOBS: tuple[str, ...] = (
    "p_429",
    "p_500",
    "p_503",
    "p_hang",
    "p_drop",
    "p_malformed",
    "p_truncated",
    "p_refusal",
    "p_content_filter",
    # One malformed kind each (appended, so seeded runs of the knobs above draw as before).
    "p_invalid_json",
    "p_schema_violation",
    "p_fenced",
    "p_trailing_prose",
    "p_unknown_keys",
    "p_out_of_range",
)

#: Knobs benchmark mode refuses (a config error names them): it draws no fault per request.
BENCHMARK_REFUSED: tuple[str, ...] = (*FAULT_KNOBS, "fail_when_contains")


class FakeConfig(BaseSettings):
    """Latency, faults, auth and rate limits of the fake server.

    Every field is read from ``MODSTREAM_FAKE_<FIELD>`` and can be changed at run time with
    ``PATCH /_fake/config``. Fault probabilities are exclusive: one uniform draw per request
    picks at most one fault, in the order of :data:`FAULT_KNOBS`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        case_sensitive=False,
        frozen=True,
        use_attribute_docstrings=True,  # the docstrings below become field descriptions
    )

    latency_ms: NonNegative = 0.0
    """Mean added latency per API request, in milliseconds."""
    latency_dist: Literal["fixed", "exponential", "uniform"] = "fixed"
    """fixed: always the mean; exponential: mean ``latency_ms``; uniform: 0 to 2x the mean."""
    seed: int | None = None
    """Seed for fault and latency draws; None draws from the OS. Replies never depend on it."""

    p_429: Probability = 0.0
    """Share of requests answered 429 with ``retry-after`` (independent of rpm/tpm)."""
    retry_after_mode: Literal["seconds", "ms", "both", "mixed"] = "seconds"
    """Which header a 429 carries; ``mixed`` alternates seconds-only and ms-only."""
    retry_after_s: NonNegative = 1.0
    """The wait a random 429 asks for (rate-limit 429s compute theirs from the bucket)."""
    p_500: Probability = 0.0
    """Share of requests answered 500."""
    p_503: Probability = 0.0
    """Share of requests answered 503."""
    p_hang: Probability = 0.0
    """Share of requests that sleep ``hang_s`` before answering normally."""
    hang_s: NonNegative = 600.0
    """How long a hanging request sleeps."""
    p_drop: Probability = 0.0
    """Share of requests whose TCP connection is closed with no response at all."""
    p_malformed: Probability = 0.0
    """Share of chat replies that are invalid JSON or violate the schema (alternating); the
    two kinds also have knobs of their own, ``p_invalid_json`` and ``p_schema_violation``."""
    p_truncated: Probability = 0.0
    """Share of chat replies cut mid-way with finish_reason "length" (truncation)."""
    p_invalid_json: Probability = 0.0
    """Share of chat replies that do not parse: a trailing comma before the closing brace."""
    p_schema_violation: Probability = 0.0
    """Share of chat replies that parse but break the schema: the first property of the wrong
    type, plus a property the schema does not allow."""
    p_fenced: Probability = 0.0
    """Share of chat replies wrapped in a Markdown code fence (```` ```json ````, indented JSON),
    values untouched."""
    p_trailing_prose: Probability = 0.0
    """Share of chat replies followed by a sentence of prose after the JSON, values untouched."""
    p_unknown_keys: Probability = 0.0
    """Share of chat replies with a key the schema does not have in every object (``confidence``
    at the top, ``note`` below), values untouched."""
    p_out_of_range: Probability = 0.0
    """Share of chat replies with one score out of [0, 1]: the largest number in [0, 1] written
    as a percentage (x100) when that is above 1, else made negative (x - 1). Replies without
    such a number (plain text) are sent as they are."""
    p_refusal: Probability = 0.0
    """Share of chat replies that are a refusal (content null, refusal set)."""
    p_content_filter: Probability = 0.0
    """Share of chat replies stopped by the content filter."""
    outage: bool = False
    """When true every API request gets 503 (start and end an outage with PATCH)."""
    fail_when_contains: str | None = None
    """When set, every chat or moderation request whose content holds this marker gets 500
    (a poison message: one message failing, transiently to all appearances, while others pass)."""
    strict_models: bool = True
    """Chat and moderation requests naming a model the fake does not serve get 404
    ``model_not_found``, as a real server answers; false accepts any model name."""
    unsupported_param: str | None = None
    """When set (e.g. ``max_tokens``), chat requests carrying that parameter get 400
    ``unsupported_parameter``, as OpenAI answers for parameters a model does not take."""

    reasoning_rules: bool = True
    """For OpenAI reasoning model names (o-series, gpt-5*): 400 for ``max_tokens`` or a
    non-default ``temperature``, reasoning tokens spent and reported (see reasoning.py)."""
    reject_json_schema: bool = False
    """When true, chat requests with a ``json_schema`` response_format get 400, as from a
    server or model without structured outputs (json_object and plain text still work)."""

    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <api_key>`` or get 401."""
    rpm: Annotated[int, Field(gt=0)] | None = None
    """Requests per minute for chat completions; None means unlimited."""
    tpm: Annotated[int, Field(gt=0)] | None = None
    """Tokens per minute for chat completions (prompt + max_tokens charged at admission)."""

    benchmark: bool = False
    """Benchmark mode (``--benchmark``): the lean HTTP server of :mod:`.lean_http` and the
    cached per-shape reply plans of :mod:`.bench`, under 100 us of CPU per chat request.
    Replies still fit the requested schema; usage is estimated (see bench.py); latency, rate
    limits, the API key, the outage switch and the model/parameter rules are honoured; random
    faults and the poison marker are refused (:data:`BENCHMARK_REFUSED`); no request log, and
    no Files or Batches API (``/v1/files`` and ``/v1/batches`` get 404)."""
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """Event loop of ``modstream fake-openai``: auto is uvloop in benchmark mode when it is
    installed, else asyncio."""

    batch_delay_s: NonNegative = 1.0
    """How long a batch takes: ``validating`` for the first half, ``in_progress`` for the
    second, then ``completed`` (or ``failed`` after the first half); read whenever a batch is
    read, so shortening it finishes waiting batches."""

    cache_min_tokens: Annotated[int, Field(ge=0)] = 1024
    """Smallest repeated first-message prefix that counts as cached, in tokens."""
    request_log_size: Annotated[int, Field(gt=0)] = 1000
    """How many request bodies ``GET /_fake/requests`` keeps."""

    @model_validator(mode="after")
    def _faults_fit_one_draw(self) -> Self:
        # One draw picks the fault, so shares above 1 in total cannot all be honoured.
        total = sum(getattr(self, name) for name in FAULT_KNOBS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities add up to {total:.3f}, more than 1")
        return self

    @model_validator(mode="after")
    def _benchmark_injects_no_faults(self) -> Self:
        if self.benchmark:
            refused = [name for name in BENCHMARK_REFUSED if getattr(self, name)]
            if refused:
                variables = ", ".join(ENV_PREFIX + name.upper() for name in refused)
                raise ValueError(
                    f"benchmark mode injects no faults: unset {', '.join(refused)} ({variables}); "
                    "it honours latency, rpm/tpm, api_key, outage and the model and parameter "
                    "rules"
                )
        return self

    @classmethod
    def from_env(cls, *, benchmark: bool | None = None) -> FakeConfig:
        """Read ``MODSTREAM_FAKE_*``; raise ConfigError naming each bad or unknown variable.

        ``benchmark``: when given, overrides ``MODSTREAM_FAKE_BENCHMARK`` (the CLI flag)."""
        known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
        unknown = sorted(
            key
            for key in os.environ
            if key.upper().startswith(ENV_PREFIX) and key.upper() not in known
        )
        if unknown:
            # pydantic-settings ignores unknown prefixed variables; a typo would silently
            # turn a fault off, so name it instead.
            raise ConfigError(f"unknown fake-openai variable(s): {', '.join(unknown)}")
        try:
            return cls() if benchmark is None else cls(benchmark=benchmark)
        except ValidationError as exc:
            raise ConfigError(describe(exc, env=True)) from exc

    def patched(self, changes: dict[str, Any]) -> FakeConfig:
        """A copy with ``changes`` applied and re-validated; ValueError names bad fields."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}")
        fixed = sorted(
            k for k in ("benchmark", "loop") if k in changes and changes[k] != getattr(self, k)
        )
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: chosen when the server starts, not at run time")
        # Passing every field explicitly keeps environment variables from leaking back in.
        try:
            return type(self)(**(self.model_dump() | changes))
        except ValidationError as exc:
            raise ValueError(describe(exc, env=False)) from exc

    def public(self) -> dict[str, Any]:
        """The knobs as JSON, with the API key masked."""
        data = self.model_dump()
        if data["api_key"] is not None:
            data["api_key"] = "***"
        return data


def describe(exc: ValidationError, *, env: bool) -> str:
    """One line per bad field, named as the variable (``env``) or the knob."""
    if env:
        problems = describe_validation_error(
            exc, name=lambda loc: ENV_PREFIX + loc.upper(), whole=ENV_PREFIX + "*", echo=_showable
        )
    else:
        problems = describe_validation_error(exc, whole="config", echo=_showable)
    return "invalid fake-openai configuration: " + problems


def _showable(loc: str, given: object) -> bool:
    return loc not in ("", "api_key")
