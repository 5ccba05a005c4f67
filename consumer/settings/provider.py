"""The model-provider fields of :class:`consumer.settings.Settings`: the server and its
credentials, the model and what every request carries, timeouts, client-side limits, the
circuit breaker and how failures are judged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr

from consumer.model.request_params import EFFORTS, RequestParams, Server, choose, server_kind
from consumer.settings.choices import PositiveFloat, PositiveInt


class ProviderSettings(BaseModel):
    """The OpenAI-compatible server (or Azure OpenAI resource) and how it is called."""

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
