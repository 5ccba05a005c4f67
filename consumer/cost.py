"""Cost of a model call in USD, from genai-prices' price data pinned with the package version.

genai-prices (by the pydantic team) keeps per-provider, per-model prices, including cached-input
rates. We never let it update at run time: the price data is the one released with the pinned
version, so the same usage always costs the same and the source is named in every usage event.
"""

from __future__ import annotations

import functools
from importlib.metadata import version

from genai_prices import Usage, calc_price

#: Named in every UsageEvent so a cost can be traced to the data it came from.
PRICE_SOURCE = f"genai-prices=={version('genai-prices')}"


class PriceTable:
    """Looks up prices for one provider; unknown models cost ``None`` (not zero)."""

    def __init__(self, provider_id: str = "openai") -> None:
        self.provider_id = provider_id
        self.source = PRICE_SOURCE

    # calc_price walks the price data on every call (~70 us); a message stream repeats the same
    # token counts over and over, so the exact answers are cached.
    @functools.lru_cache(maxsize=8192)  # noqa: B019  (one table per process, bounded)
    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """USD for one call; ``prompt_tokens`` includes the ``cached_tokens`` read from cache."""
        if not self.known(model):
            return None
        usage = Usage(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            cache_read_tokens=min(cached_tokens, prompt_tokens),
        )
        price = calc_price(usage, model, provider_id=self.provider_id)
        return float(price.total_price)

    @functools.cache  # noqa: B019  (one table per process; the cache is bounded by model names)
    def known(self, model: str) -> bool:
        """Whether the price data has ``model``."""
        try:
            calc_price(Usage(input_tokens=1), model, provider_id=self.provider_id)
        except LookupError:
            return False
        return True
