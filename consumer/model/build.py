"""The model stages from the settings: OpenAI client, classifier and its admitter, batcher."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import structlog
from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAioHttpClient

from consumer.errors import ConfigError, ModstreamError
from consumer.model.batch import Batcher
from consumer.model.chat_client import ChatSender
from consumer.model.circuit import CircuitBreaker
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable, load_prices
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.model.provider import public_url
from consumer.model.reply_format import ResponseFormats
from consumer.model.request_params import Server
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitter
from consumer.settings import Settings

log = structlog.get_logger(__name__)


def openai_client(settings: Settings, http_client: httpx2.AsyncClient | None = None) -> AsyncOpenAI:
    """The one AsyncOpenAI client: no SDK retries (ours re-acquire budget), short timeouts.

    With ``MODSTREAM_AZURE_ENDPOINT`` set it is an ``AsyncAzureOpenAI`` (a subclass: the same
    calls, the same errors, so :func:`consumer.model.provider.translate` serves both): requests
    go to the deployment (``MODSTREAM_AZURE_DEPLOYMENT``, default the model name) with the
    ``api-version`` query parameter and the ``api-key`` header. ``http_client``: a transport
    of the caller's (tests), instead of aiohttp.
    """
    timeout = httpx2.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
    if settings.azure_endpoint is not None:
        azure_key = settings.azure_api_key.get_secret_value()
        if not azure_key:
            raise ConfigError(
                "MODSTREAM_AZURE_API_KEY (or AZURE_OPENAI_API_KEY) is required "
                "with MODSTREAM_AZURE_ENDPOINT"
            )
        return AsyncAzureOpenAI(
            azure_endpoint=settings.azure_endpoint,
            azure_deployment=settings.azure_deployment or settings.model,
            api_version=settings.azure_api_version,
            api_key=azure_key,
            max_retries=0,
            timeout=timeout,
            http_client=http_client or DefaultAioHttpClient(timeout=timeout),
        )
    key = settings.openai_api_key.get_secret_value()
    if not key and settings.openai_base_url is None:
        raise ConfigError("OPENAI_API_KEY is required when OPENAI_BASE_URL is not set")
    return AsyncOpenAI(
        api_key=key or "unused",
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=timeout,
        # aiohttp under the SDK: about a quarter less CPU per call than httpcore, whose
        # connection-pool scan also grows with concurrency (tests/benchmarks/client_overhead).
        http_client=http_client or DefaultAioHttpClient(timeout=timeout),
    )


def log_request_params(settings: Settings, **context: object) -> None:
    """One INFO line: what every chat request carries (``context``: e.g. ``shadow=True``).

    Its own call, made once start-up has passed its checks: a start that fails (no broker, a
    missing topic) stays one line on stderr.
    """
    log.info(
        "chat request parameters",
        model=settings.model,
        response_format=settings.response_format,
        **settings.request_params.describe(),
        **context,
    )


def model_stages(
    settings: Settings,
    client: AsyncOpenAI,
    metrics: Metrics | None = None,
    chat: ChatSender | None = None,
    *,
    on_retry: Callable[[ModstreamError], None] | None = None,
    batch_api: bool = False,
) -> tuple[Classifier, Admitter]:
    """The classifier and the admitter its prompt budget implies, from the settings.

    ``chat`` sends its chat requests (an entered :func:`consumer.model.chat_client.sender`; default
    the SDK's own path over ``client``); ``on_retry`` sees each failure before its retry
    (default: counted in ``metrics``); ``batch_api``: its calls go through the Batch API, so
    they are priced at its discount (:meth:`consumer.model.cost.PriceTable.batch_api`)."""
    metrics = metrics or Metrics()
    builder = PromptBuilder(load_policy(settings.policy_file), load_prompt(settings.prompt_file))
    params = settings.request_params
    prices = PriceTable(
        "azure" if settings.server is Server.AZURE else "openai",
        load_prices(settings.prices_file) if settings.prices_file is not None else None,
    )
    prices.warn_unknown(settings.model)  # once, here: not once per message
    if batch_api:
        prices = prices.batch_api()
    classifier = Classifier(
        client,
        model=settings.model,
        params=params,
        formats=ResponseFormats(settings.response_format, where=public_url(client.base_url)),
        builder=builder,
        limiter=Limiter(settings.concurrency, rpm=settings.rpm, tpm=settings.tpm),
        prices=prices,
        breaker=CircuitBreaker(
            failure_threshold=settings.circuit_failure_threshold,
            reset_s=settings.circuit_reset_s,
            on_change=metrics.circuit,
        ),
        max_backoff_s=settings.retry_max_backoff_s,
        on_retry=on_retry or metrics.retry,
        metrics=metrics,
        poison_attempts=settings.poison_attempts,
        misconfig_repeats=settings.misconfig_repeats,
        usage_failures_kept=settings.usage_failures_kept,
        sender=chat,
    )
    budget = settings.context_window - params.completion_budget - classifier.overhead_tokens
    admitter = Admitter(
        model=settings.model,
        budget_tokens=budget,
        max_input_tokens=settings.max_input_tokens,
        oversize=settings.oversize,
        max_images=settings.max_images,
        max_image_bytes=settings.max_image_bytes,
    )
    return classifier, admitter


def batcher(settings: Settings, classifier: Classifier) -> Batcher | None:
    """The micro-batcher, when ``MODSTREAM_BATCH_SIZE`` is above 1."""
    if settings.batch_size <= 1:
        return None
    return Batcher(
        classifier,
        size=settings.batch_size,
        max_tokens=settings.batch_max_tokens,
        linger_s=settings.batch_linger_ms / 1000,
    )
