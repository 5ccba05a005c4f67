"""All configuration, in one pydantic-settings model read once at start-up.

Every field comes from an environment variable ``MODSTREAM_<FIELD>`` (the API key and base URL
also from the SDK's own ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``). ``load_settings`` turns a
validation failure into a :class:`~consumer.errors.ConfigError` whose message names each bad
field, so the CLI can print it and exit 2 without a traceback.

:class:`Settings` is one model; its fields are declared in groups, one module each, and
the checks that span groups are here::

    kafka        the cluster, security, topics, group, delivery and ordering
    provider     the model server, the request parameters, timeouts, limits, the breaker
    processing   the work window, micro-batching, input handling, policy and prompt
    operations   logs, the metrics and health port, Kafka's retry pace
    choices      the enums (Delivery, Ordering, ...) and the number types they share
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.errors import ConfigError, describe_validation_error
from consumer.settings.choices import (
    Delivery,
    InputFormat,
    LogFormat,
    Ordering,
    OversizePolicy,
    PositiveFloat,
    PositiveInt,
)
from consumer.settings.kafka import KafkaSettings
from consumer.settings.operations import OperationsSettings
from consumer.settings.processing import ProcessingSettings
from consumer.settings.provider import ProviderSettings

__all__ = [
    "Delivery",
    "InputFormat",
    "LogFormat",
    "Ordering",
    "OversizePolicy",
    "PositiveFloat",
    "PositiveInt",
    "Settings",
    "load_settings",
]


# pydantic orders the fields from the last base to the first: Kafka's come first, as in every
# error message and the JSON schema.
class Settings(
    OperationsSettings, ProcessingSettings, ProviderSettings, KafkaSettings, BaseSettings
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
        if self.concurrency > self.max_in_flight:
            raise ValueError(
                f"concurrency ({self.concurrency}) cannot exceed max_in_flight "
                f"({self.max_in_flight}): calls beyond the window could never start"
            )
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password"
            )
        if self.azure_endpoint is not None and self.openai_base_url is not None:
            raise ValueError(
                "set MODSTREAM_AZURE_ENDPOINT or OPENAI_BASE_URL, not both: the Azure endpoint "
                "is the base URL of an Azure OpenAI resource"
            )
        for name, budget in (("rpm", self.rpm), ("tpm", self.tpm)):
            if budget is not None and budget < self.workers:
                raise ValueError(
                    f"{name} ({budget}) is below workers ({self.workers}): the budget is split "
                    f"across the workers and each needs at least 1; raise MODSTREAM_{name.upper()} "
                    "or lower MODSTREAM_WORKERS"
                )
        params = self.request_params  # raises ValueError naming the setting
        if params.completion_budget >= self.context_window:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) plus room for reasoning "
                f"({params.reasoning_room}) must be smaller than context_window "
                f"({self.context_window})"
            )
        batch = self.batch_size * self.batch_max_tokens + params.batch_budget(self.batch_size)
        if self.batch_size > 1 and batch >= self.context_window:
            raise ValueError(
                f"a full batch ({self.batch_size} x (batch_max_tokens {self.batch_max_tokens} + "
                f"max_tokens {self.max_tokens}) + reasoning room {params.reasoning_room}) does "
                f"not fit context_window ({self.context_window}): lower batch_size or "
                "batch_max_tokens"
            )
        return self

    @property
    def max_poll_interval_ms(self) -> int:
        """Kafka's liveness bound: above the worst case of one message's model time."""
        worst_s = (self.connect_timeout_s + self.request_timeout_s) * 3 + self.shutdown_grace_s
        return int(max(300.0, worst_s * 2) * 1000)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus ``overrides``) once; raise ConfigError naming bad fields."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # One line per bad field: the environment variable, the reason and the given value.
        problems = describe_validation_error(
            exc, name=_variable, whole="settings", echo=_showable, sep="\n  "
        )
        raise ConfigError("invalid configuration:\n  " + problems) from exc


def _variable(loc: str) -> str:
    return "MODSTREAM_" + loc.upper().removeprefix("MODSTREAM_")


def _showable(loc: str, given: object) -> bool:
    # Never echo a secret, however its name is spelled (an alias like OPENAI_API_KEY).
    return not loc.upper().endswith(("API_KEY", "PASSWORD")) and not isinstance(given, dict)
