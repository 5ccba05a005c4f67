"""All configuration, in one pydantic-settings model read once at start-up.

Every field comes from an environment variable ``MODSTREAM_<FIELD>`` (the API key and base URL
also from the SDK's own ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``). ``load_settings`` turns a
validation failure into a :class:`~consumer.errors.ConfigError` whose message names each bad
field, so the CLI can print it and exit 2 without a traceback.

:class:`Settings` is one model; its fields are declared in groups, one module each, and
the checks that span groups are here::

    kafka        the cluster, security, topics, group, carried headers, delivery, ordering
    provider     the model server, the request parameters, timeouts, limits, the breaker
    processing   the work window, micro-batching, input handling, policy and prompt
    operations   logs, the metrics and health port, tracing, Kafka's retry pace
    shadow       a candidate model, prompt or policy on a share of live traffic
    choices      the enums (Delivery, Ordering, ...) and the number types they share
    variables    the MODSTREAM_* names that mean something, and what a typo meant
"""

from __future__ import annotations

import os
from typing import Any, Self

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.errors import ConfigError, describe_validation_error
from consumer.settings.choices import (
    Compatibility,
    Delivery,
    InputFormat,
    LogFormat,
    Ordering,
    OutputFormat,
    OversizePolicy,
    PositiveFloat,
    PositiveInt,
    TracingMode,
)
from consumer.settings.kafka import KafkaSettings
from consumer.settings.operations import OperationsSettings
from consumer.settings.processing import ProcessingSettings
from consumer.settings.provider import ProviderSettings
from consumer.settings.shadow import ShadowSettings
from consumer.settings.variables import (
    WHERE_LISTED,
    describe_unknown,
    settings_variables,
    unknown_variables,
)

__all__ = [
    "Compatibility",
    "Delivery",
    "InputFormat",
    "LogFormat",
    "Ordering",
    "OutputFormat",
    "OversizePolicy",
    "PositiveFloat",
    "PositiveInt",
    "Settings",
    "TracingMode",
    "load_settings",
]


# pydantic orders the fields from the last base to the first: Kafka's come first, as in every
# error message and the JSON schema.
class Settings(
    ShadowSettings,
    OperationsSettings,
    ProcessingSettings,
    ProviderSettings,
    KafkaSettings,
    BaseSettings,
):
    """modstream's configuration. Field docs are the reference for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="MODSTREAM_",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
        populate_by_name=True,
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        # Each message names the variables involved: a reader fixes the environment, not
        # pydantic's field names.
        if self.concurrency > self.max_in_flight:
            raise ValueError(
                f"MODSTREAM_CONCURRENCY ({self.concurrency}) cannot exceed "
                f"MODSTREAM_MAX_IN_FLIGHT ({self.max_in_flight}): calls beyond the window "
                "could never start"
            )
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            missing = [
                f"MODSTREAM_SASL_{name.upper()}"
                for name in ("mechanism", "username", "password")
                if not getattr(self, f"sasl_{name}")
            ]
            raise ValueError(
                f"MODSTREAM_SECURITY_PROTOCOL={self.security_protocol} needs "
                f"MODSTREAM_SASL_MECHANISM, MODSTREAM_SASL_USERNAME and "
                f"MODSTREAM_SASL_PASSWORD; not set: {', '.join(missing)}"
            )
        if self.azure_endpoint is not None and self.openai_base_url is not None:
            raise ValueError(
                "set MODSTREAM_AZURE_ENDPOINT (or AZURE_OPENAI_ENDPOINT) or OPENAI_BASE_URL "
                "(or MODSTREAM_OPENAI_BASE_URL), not both: the Azure endpoint is the base URL "
                "of an Azure OpenAI resource"
            )
        for name, budget in (("rpm", self.rpm), ("tpm", self.tpm)):
            if budget is not None and budget < self.workers:
                raise ValueError(
                    f"MODSTREAM_{name.upper()} ({budget}) is below MODSTREAM_WORKERS "
                    f"({self.workers}): the budget is split across the workers and each needs "
                    f"at least 1; raise MODSTREAM_{name.upper()} or lower MODSTREAM_WORKERS"
                )
        params = self.request_params  # raises ValueError naming the setting
        if params.completion_budget >= self.context_window:
            raise ValueError(
                f"MODSTREAM_MAX_TOKENS ({self.max_tokens}){_plus_room(params.reasoning_room)} "
                f"must be smaller than MODSTREAM_CONTEXT_WINDOW ({self.context_window})"
            )
        batch = self.batch_size * self.batch_max_tokens + params.batch_budget(self.batch_size)
        if self.batch_size > 1 and batch >= self.context_window:
            raise ValueError(
                f"a full batch (MODSTREAM_BATCH_SIZE {self.batch_size} x "
                f"(MODSTREAM_BATCH_MAX_TOKENS {self.batch_max_tokens} + MODSTREAM_MAX_TOKENS "
                f"{self.max_tokens}){_plus_room(params.reasoning_room)}) does not fit "
                f"MODSTREAM_CONTEXT_WINDOW ({self.context_window}): lower MODSTREAM_BATCH_SIZE "
                "or MODSTREAM_BATCH_MAX_TOKENS"
            )
        if self.input_format.uses_registry and not self.schema_registry_url:
            raise ValueError(
                f"MODSTREAM_INPUT_FORMAT={self.input_format} needs MODSTREAM_SCHEMA_REGISTRY_URL"
            )
        if self.output_format.uses_registry and not self.schema_registry_url:
            raise ValueError(
                f"MODSTREAM_OUTPUT_FORMAT={self.output_format} needs MODSTREAM_SCHEMA_REGISTRY_URL"
            )
        candidate = (self.shadow_model, self.shadow_prompt_file, self.shadow_policy_file)
        if self.shadow_share > 0 and all(part is None for part in candidate):
            raise ValueError(
                f"MODSTREAM_SHADOW_SHARE={self.shadow_share} needs a candidate: set "
                "MODSTREAM_SHADOW_MODEL, MODSTREAM_SHADOW_PROMPT_FILE or "
                "MODSTREAM_SHADOW_POLICY_FILE"
            )
        if self.shadow_share > 0 and self.effective_shadow_topic in (
            self.input_topic,
            self.verdict_topic,
            self.usage_topic,
            self.dlq_topic,
        ):
            raise ValueError(
                f"MODSTREAM_SHADOW_TOPIC ({self.effective_shadow_topic}) must differ from the "
                "input, verdict, usage and dead-letter topics"
            )
        return self

    @property
    def effective_shadow_topic(self) -> str:
        """Where shadow verdicts go (their usage goes to this plus ``.usage``)."""
        return self.shadow_topic or f"{self.verdict_topic}.shadow"

    @property
    def max_poll_interval_ms(self) -> int:
        """Kafka's liveness bound: above the worst case of one message's model time."""
        worst_s = (self.connect_timeout_s + self.request_timeout_s) * 3 + self.shutdown_grace_s
        return int(max(300.0, worst_s * 2) * 1000)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus ``overrides``) once; raise ConfigError naming bad variables.

    An unknown ``MODSTREAM_*`` variable is an error too (with the closest valid name): a typo
    that pydantic would ignore silently leaves that setting at its default.
    """
    known = settings_variables(Settings)
    unknown = unknown_variables(os.environ, known)
    problems = [describe_unknown(name, known) for name in unknown]
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        # One line per bad field: the environment variable, the reason and the given value.
        # A check across fields (no location) names its variables itself.
        problems.append(
            describe_validation_error(exc, name=_variable, whole="", echo=_showable, sep="\n  ")
        )
    if unknown:
        problems.append(f"({WHERE_LISTED})")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return settings


def _plus_room(reasoning_room: int) -> str:
    return f" + reasoning room {reasoning_room}" if reasoning_room else ""


def _variable(loc: str) -> str:
    return "MODSTREAM_" + loc.upper().removeprefix("MODSTREAM_")


def _showable(loc: str, given: object) -> bool:
    # Never echo a secret, however its name is spelled (an alias like OPENAI_API_KEY).
    return not loc.upper().endswith(("API_KEY", "PASSWORD")) and not isinstance(given, dict)
