"""All configuration, in one pydantic-settings model read once at start-up.

Every field comes from an environment variable ``MODSTREAM_<FIELD>`` (the API key and base URL
also from the SDK's own ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``). ``load_settings`` turns a
validation failure into a :class:`~consumer.errors.ConfigError` whose message names each bad
field, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.errors import ConfigError
from consumer.model.request_params import EFFORTS, RequestParams, Server, choose, server_kind


class InputFormat(StrEnum):
    """How input record values are read."""

    JSON = "json"  # a ModerationRequest object
    TEXT = "text"  # the whole value is the UTF-8 text; the id is derived from its source


class OversizePolicy(StrEnum):
    """What admit does with a text over the token budget."""

    TRUNCATE = "truncate"  # keep head and tail, mark the verdict truncated
    DEAD_LETTER = "dead_letter"


class Delivery(StrEnum):
    """Output delivery guarantee."""

    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class Ordering(StrEnum):
    """Which messages must be classified and published in offset order."""

    UNORDERED = "unordered"  # none: the most concurrency
    KEY = "key"  # messages with the same key (per partition), in offset order
    PARTITION = "partition"  # each partition one message at a time


class LogFormat(StrEnum):
    """Log rendering: JSON lines for machines, coloured console for people, auto by TTY."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """modstream's configuration. Field docs are the reference for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="MODSTREAM_",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
        populate_by_name=True,
    )

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    input_topic: str = "moderation.requests"
    verdict_topic: str = "moderation.verdicts"
    usage_topic: str = "moderation.usage"
    dlq_topic: str = "moderation.dead-letters"
    group_id: str = "modstream"
    client_id: str = "modstream"
    auto_offset_reset: str = Field(default="earliest", pattern="^(earliest|latest)$")
    security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    sasl_mechanism: str | None = Field(
        default=None, pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted MODSTREAM_SSL_KEYFILE; a secret."
    )
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    transactional_id: str | None = Field(
        default=None,
        description="exactly_once: the producer's transactional id; keep it stable per "
        "instance (e.g. the pod name) so a restart fences its crashed predecessor. "
        "Default: <group_id>-<hostname>.",
    )
    ordering: Ordering = Field(
        default=Ordering.UNORDERED,
        description="unordered, key (same key in offset order) or partition.",
    )

    # Model provider
    openai_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("MODSTREAM_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MODSTREAM_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    model: str = "gpt-4o-mini"
    context_window: PositiveInt = Field(
        default=128_000, description="Model context in tokens; the prompt must fit inside."
    )
    max_tokens: PositiveInt = Field(
        default=400,
        description="Budget of the visible reply per call; a reasoning model gets room for "
        "its reasoning on top (MODSTREAM_REASONING_BUDGET_TOKENS).",
    )
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = Field(
        default=0.0, description="Sent only to models that accept it (not to reasoning models)."
    )
    model_family: str = Field(
        default="auto",
        description="Row of the parameter table (consumer/model/request_params.py) to use instead "
        "of the one the model name and base URL pick, e.g. gpt-5 for a deployment whose name "
        "does not say.",
    )
    token_limit_param: Literal["auto", "max_completion_tokens", "max_tokens"] = Field(
        default="auto", description="Name of the completion budget in the request body."
    )
    reasoning_effort: str = Field(
        default="auto",
        pattern="^(auto|off|" + "|".join(EFFORTS) + ")$",
        description="auto: the lowest the model allows (minimal for gpt-5, low for o-series, "
        "none for gpt-5.1); off: never sent; or a value the model takes.",
    )
    reasoning_budget_tokens: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Completion tokens a reasoning model may spend on reasoning, on top of "
        "max_tokens; default by effort (minimal 1024, low 4096, medium 8192, ...).",
    )
    seed: int | None = Field(
        default=None, description="Sampling seed, sent to the models that take one."
    )
    response_format: Literal["auto", "json_schema", "json_object", "text"] = Field(
        default="auto",
        description="How the reply's JSON is asked for; auto starts at json_schema and steps "
        "down once when the server rejects it.",
    )
    azure_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MODSTREAM_AZURE_ENDPOINT", "AZURE_OPENAI_ENDPOINT"),
        description="Azure OpenAI resource endpoint (https://NAME.openai.azure.com); set, "
        "modstream talks to Azure through AsyncAzureOpenAI.",
    )
    azure_deployment: str | None = Field(
        default=None, description="Azure deployment name; default: MODSTREAM_MODEL."
    )
    azure_api_version: str = Field(
        default="2025-04-01-preview",
        validation_alias=AliasChoices("MODSTREAM_AZURE_API_VERSION", "OPENAI_API_VERSION"),
        description="Azure api-version (reasoning models need 2024-12-01-preview or later).",
    )
    azure_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("MODSTREAM_AZURE_API_KEY", "AZURE_OPENAI_API_KEY"),
        description="Azure OpenAI key; a secret.",
    )
    prices_file: Path | None = Field(
        default=None,
        description="YAML or JSON prices (USD per 1M tokens) for models genai-prices does "
        "not know, e.g. self-hosted ones; they win over genai-prices.",
    )
    chat_client: Literal["lean", "sdk"] = Field(
        default="lean",
        description="How chat requests are sent: lean (pre-serialized orjson over one aiohttp "
        "session, about a fifth of the SDK's CPU) or sdk (the openai SDK's own call path).",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto",
        description="auto: uvloop when installed (pip install 'modstream[fast]'), else asyncio.",
    )
    connect_timeout_s: PositiveFloat = 5.0
    request_timeout_s: PositiveFloat = 30.0
    rpm: PositiveInt | None = Field(default=None, description="Client-side requests/minute.")
    tpm: PositiveInt | None = Field(default=None, description="Client-side tokens/minute.")
    retry_max_backoff_s: PositiveFloat = 30.0
    circuit_failure_threshold: PositiveInt = Field(
        default=10, description="Provider failures in a row that open the circuit (stop intake)."
    )
    circuit_reset_s: PositiveFloat = Field(
        default=5.0, description="First wait before a probe call; doubles up to 60 s."
    )
    poison_attempts: PositiveInt = Field(
        default=8,
        description="A message whose calls failed this many times with transient errors "
        "(5xx, timeouts) while other messages succeed (circuit closed) is dead-lettered as "
        "persistent_failure. During an outage (circuit open) nothing is dead-lettered.",
    )
    misconfig_repeats: PositiveInt = Field(
        default=3,
        description="The same 400 for this many different messages is a misconfiguration "
        "(an unsupported parameter): the service stops with exit code 3 instead of "
        "dead-lettering the stream.",
    )
    usage_failures_kept: PositiveInt = Field(
        default=3,
        description="Failed attempts of one message recorded as usage events one by one; "
        "further failures with the same outcome are folded into one event with a count.",
    )

    # Work window
    workers: PositiveInt = Field(
        default=1,
        description="Consumer processes in the group under one supervisor (consumer.ops.workers), "
        "sharing the metrics port; RPM and TPM are split across them. 1: no supervisor.",
    )
    concurrency: PositiveInt = Field(default=32, description="Model calls at once.")
    max_in_flight: PositiveInt = Field(
        default=256, description="Messages between fetch and commit; fetching stops when full."
    )
    commit_interval_s: PositiveFloat = 1.0
    shutdown_grace_s: PositiveFloat = 20.0
    stuck_after_s: PositiveFloat = Field(
        default=300.0,
        description="A message in flight longer than this is logged (WARNING) with its "
        "partition and offset; modstream_oldest_in_flight_seconds shows the age always.",
    )

    # Micro-batching (off at 1)
    batch_size: Annotated[int, Field(ge=1, le=256)] = Field(
        default=1,
        description="Short messages classified in one chat call; 1 turns batching off.",
    )
    batch_max_tokens: PositiveInt = Field(
        default=200, description="Only content of at most this many tokens joins a batch."
    )
    batch_linger_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = Field(
        default=20.0, description="How long a batch waits to fill before it goes out anyway."
    )

    # Input handling
    input_format: InputFormat = InputFormat.JSON
    max_message_bytes: PositiveInt = Field(
        default=1_000_000, description="Records larger than this are dead-lettered undecoded."
    )
    max_input_tokens: PositiveInt = Field(
        default=32_000, description="Hard limit on the content's tokens before truncation."
    )
    oversize: OversizePolicy = OversizePolicy.TRUNCATE
    redact_dead_letters: bool = Field(
        default=False, description="Replace dead-letter payloads by their sha256 only."
    )

    # Policy and prompt (None: the built-in defaults that ship with modstream)
    policy_file: Path | None = None
    prompt_file: Path | None = None

    # Operations
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: LogFormat = LogFormat.AUTO
    log_content: bool = Field(default=False, description="Log message text (debug only).")
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=0, description="Port of /metrics, /healthz and /readyz; 0 turns them off."
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104  (a pod's probes and scrapes come from outside it)
        description="Interface the metrics and health server binds.",
    )
    log_repeat_interval_s: Annotated[float, Field(ge=0.0)] = Field(
        default=10.0,
        description="A warning or error that repeats (same logger and message, digits aside: "
        "aiokafka's reconnect errors during a broker outage) is written at most once per this "
        "many seconds; the next line carries repeated=N, the count left out. 0 writes all.",
    )
    kafka_retry_backoff_ms: Annotated[int, Field(ge=10, le=60_000)] = Field(
        default=100,
        description="aiokafka's retry_backoff_ms for every Kafka client: the pause before a "
        "failed fetch, produce, heartbeat or coordinator lookup is retried (aiokafka's "
        "default). Higher means fewer retries during an outage, slower recovery after one. "
        "It does not pace aiokafka's metadata refresh, which retries as soon "
        "as asked during an outage (see log_repeat_interval_s for its log lines).",
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
    def server(self) -> Server:
        """The kind of server the model is reached at."""
        return server_kind(self.openai_base_url, azure=self.azure_endpoint is not None)

    @property
    def request_params(self) -> RequestParams:
        """What every chat request carries (see :mod:`consumer.model.request_params`)."""
        return choose(
            self.model,
            self.server,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            family=self.model_family,
            budget_name=self.token_limit_param,
            reasoning_effort=self.reasoning_effort,
            reasoning_budget=self.reasoning_budget_tokens,
        )

    @property
    def effective_transactional_id(self) -> str:
        """The transactional id exactly-once mode uses."""
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}"

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
        raise ConfigError(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field: the environment variable, the reason and the given value."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        upper = loc.upper()
        env = f"MODSTREAM_{upper.removeprefix('MODSTREAM_')}" if loc else "settings"
        given = err.get("input")
        # Never echo a secret, however its name is spelled (an alias like OPENAI_API_KEY).
        secret = upper.endswith(("API_KEY", "PASSWORD"))
        shown = "" if secret or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{env}: {err['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
