"""Cost of a model call in USD, from genai-prices' price data pinned with the package version.

genai-prices (by the pydantic team) keeps per-provider, per-model prices, including cached-input
rates. We never let it update at run time: the price data is the one released with the pinned
version, so the same usage always costs the same and the source is named in every usage event.

Reasoning tokens are billed as completion tokens: OpenAI's ``completion_tokens`` already holds
them (``completion_tokens_details.reasoning_tokens`` is a part of it, not an extra), and
genai-prices treats ``output_reasoning_tokens`` as a part of ``output_tokens`` likewise; they
are passed along so a provider that prices them apart would be priced right.

Models genai-prices does not know (a self-hosted Llama, a fine-tune) cost ``None``, never zero,
unless a prices file (``MODSTREAM_PRICES_FILE``, :func:`load_prices`) names them::

    version: self-hosted-2026-01     # named in every usage event priced from this file
    models:
      llama3.1:8b: {input: 0.0, output: 0.0}
      my-finetune: {input: 0.30, output: 1.20, cached_input: 0.15}   # USD per 1M tokens

**The Batch API.** A request sent through OpenAI's Batch API (``modstream replay --batch-api``)
costs half the synchronous price, input and output tokens alike (OpenAI's pricing page and
Batch API guide: batch requests are billed at 50% of the synchronous API's price). The rates
read from genai-prices here are the synchronous ones, so :meth:`PriceTable.batch_api` is the
same table with that discount, :data:`BATCH_API_DISCOUNT`, applied to every cost it returns
and named in its price source: the discount lives here, with the prices, and nowhere else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, NamedTuple

import structlog
import yaml
from genai_prices import Usage, calc_price
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.errors import ConfigError, describe_validation_error

log = structlog.get_logger(__name__)

#: Named in every UsageEvent so a cost can be traced to the data it came from.
PRICE_SOURCE = f"genai-prices=={version('genai-prices')}"

#: What a Batch API request costs, as a share of the synchronous price: OpenAI's Batch API is
#: priced at 50% of the synchronous API, for input and output tokens (openai.com/api/pricing).
BATCH_API_DISCOUNT = 0.5

#: Appended to a batch-priced event's price source, so a reader can tell the price used.
BATCH_API_SOURCE = f"Batch API at {BATCH_API_DISCOUNT:.0%} of the synchronous price"

Rate = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class ModelPrice(BaseModel):
    """One model's prices in USD per 1M tokens; cached input defaults to the input rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Rate
    output: Rate
    cached_input: Rate | None = None


class PriceFile(BaseModel):
    """The prices file: a version (named in usage events) and prices per model name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, Field(min_length=1)]
    models: Annotated[dict[str, ModelPrice], Field(min_length=1)]


def load_prices(path: Path) -> PriceFile:
    """Read and validate a prices file (YAML or JSON); ConfigError names what is wrong."""
    where = f"MODSTREAM_PRICES_FILE ({path})"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from exc
    try:
        return PriceFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe_validation_error(exc, whole='file')}") from exc


#: Token counts up to which a linear price is used as rates (a message's prompt and reply stay
#: far below; tiers, where a provider has them, start higher or fail the linearity check).
LINEAR_UP_TO = 100_000


class Rates(NamedTuple):
    """USD per token of each kind: a linear price, read off genai-prices once per model."""

    prompt: float
    cached: float
    completion: float
    #: What a reasoning token costs on top of being a completion token (0 for OpenAI).
    reasoning: float

    def cost(self, prompt: int, completion: int, cached: int, reasoning: int) -> float:
        """USD of one call (``cached`` within ``prompt``, ``reasoning`` within ``completion``)."""
        return (
            (prompt - cached) * self.prompt
            + cached * self.cached
            + completion * self.completion
            + reasoning * self.reasoning
        )


class PriceTable:
    """Looks up prices for one provider; unknown models cost ``None`` (not zero)."""

    def __init__(
        self,
        provider_id: str = "openai",
        overrides: PriceFile | None = None,
        *,
        discount: float = 1.0,
    ) -> None:
        """``discount``: the share of the listed price paid (1.0; use :meth:`batch_api` for
        the Batch API's, rather than a number of your own)."""
        self.provider_id = provider_id
        self.source = PRICE_SOURCE
        self._file = overrides
        self.overrides: Mapping[str, ModelPrice] = overrides.models if overrides else {}
        self._override_source = f"prices file {overrides.version}" if overrides else ""
        self.discount = discount

    def batch_api(self) -> PriceTable:
        """This table at the Batch API's price (:data:`BATCH_API_DISCOUNT` of every cost)."""
        return PriceTable(self.provider_id, self._file, discount=BATCH_API_DISCOUNT)

    def source_for(self, model: str) -> str:
        """Where ``model``'s prices come from, for the usage event (and the discount, if any)."""
        listed = self._override_source if model in self.overrides else self.source
        return listed if self.discount == 1.0 else f"{listed}; {BATCH_API_SOURCE}"

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> float | None:
        """USD for one call; ``prompt_tokens`` includes the ``cached_tokens`` read from cache,
        ``completion_tokens`` the ``reasoning_tokens`` (as OpenAI reports them). A discounted
        table (:meth:`batch_api`) returns its share of the listed price."""
        listed = self._listed(
            model, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens
        )
        return None if listed is None else listed * self.discount

    def _listed(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        reasoning_tokens: int,
    ) -> float | None:
        cached = min(cached_tokens, prompt_tokens)
        reasoning = min(reasoning_tokens, completion_tokens)
        if (price := self.overrides.get(model)) is not None:
            cached_rate = price.input if price.cached_input is None else price.cached_input
            total = (
                (prompt_tokens - cached) * price.input
                + cached * cached_rate
                + completion_tokens * price.output
            )
            return total / 1_000_000
        rates = self.rates(model)
        if rates is not None and max(prompt_tokens, completion_tokens) <= LINEAR_UP_TO:
            return rates.cost(prompt_tokens, completion_tokens, cached, reasoning)
        return self._calculated(model, prompt_tokens, completion_tokens, cached, reasoning)

    # calc_price walks the price data on every call (70-200 us): asked only for models whose
    # price is not linear (tiers), or beyond LINEAR_UP_TO, and the exact answers are cached.
    @functools.lru_cache(maxsize=8192)  # noqa: B019  (one table per process, bounded)
    def _calculated(
        self, model: str, prompt: int, completion: int, cached: int, reasoning: int
    ) -> float | None:
        if not self.known(model):
            return None
        usage = Usage(
            input_tokens=prompt,
            output_tokens=completion,
            cache_read_tokens=cached,
            output_reasoning_tokens=reasoning,
        )
        return float(calc_price(usage, model, provider_id=self.provider_id).total_price)

    @functools.cache  # noqa: B019  (one table per process; the cache is bounded by model names)
    def rates(self, model: str) -> Rates | None:
        """``model``'s price per token of each kind, when genai-prices prices it linearly up
        to :data:`LINEAR_UP_TO` tokens (checked against calc_price at several points, a mixed
        one included); None for an unknown model or a tiered price."""
        if model in self.overrides or not self.known(model):
            return None
        n = LINEAR_UP_TO

        def calc(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> float:
            value = self._calculated(model, prompt, completion, cached, reasoning)
            return 0.0 if value is None else value

        rates = Rates(
            prompt=calc(n, 0) / n,
            cached=calc(n, 0, cached=n) / n,
            completion=calc(0, n) / n,
            reasoning=(calc(0, n, reasoning=n) - calc(0, n)) / n,
        )
        checks = [(1000, 0, 0, 0), (0, 1000, 0, 0), (n // 2, n // 3, n // 4, n // 5), (7, 3, 2, 1)]
        for point in checks:
            if not math.isclose(rates.cost(*point), calc(*point), rel_tol=1e-9, abs_tol=1e-15):
                return None
        return rates

    @functools.cache  # noqa: B019  (one table per process; the cache is bounded by model names)
    def known(self, model: str) -> bool:
        """Whether the prices file or the price data has ``model``."""
        if model in self.overrides:
            return True
        try:
            calc_price(Usage(input_tokens=1), model, provider_id=self.provider_id)
        except LookupError:
            return False
        return True

    def warn_unknown(self, model: str) -> bool:
        """Log one WARNING when ``model`` has no price (its usage events carry a null cost);
        called once at start-up, not per message. Whether it was unknown."""
        if self.known(model):
            return False
        log.warning(
            "no price for the model: its usage events carry cost_usd null",
            model=model,
            price_source=self.source,
            fix="add it to MODSTREAM_PRICES_FILE",
        )
        return True
