"""What a model costs at a provider: config.yaml's `pricing:` first, else genai-prices.

Defaults come from the `genai-prices` package (pinned like any dependency, never updated
at run time: the gateway may be offline) with the batch discount each provider type gives
(OpenAI, Azure, Anthropic, Gemini, Vertex AI, Bedrock, Mistral and Together all halve
batch prices; emulated batches run on synchronous endpoints at full price). An
OpenAI-compatible provider is known to the library only by its base URL: a reseller the
library does not list has no default, and a model without a price gets a null cost, never
a guess. Tiered prices (by prompt length) are taken at their base tier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import genai_prices
from genai_prices import Usage, calc_price

from gateway.config import Config, PriceConfig
from gateway.store import FileRecord
from providers.config import ProviderConfig

# Provider type -> (genai-prices provider id, batch discount). None: found by base URL.
TYPE_PRICES: dict[str, tuple[str | None, float]] = {
    "openai": (None, 0.5),
    "azure": ("azure", 0.5),
    "anthropic": ("anthropic", 0.5),
    "gemini": ("google", 0.5),
    "vertex": ("google", 0.5),
    "bedrock": ("aws", 0.5),
    "mistral": ("mistral", 0.5),
    "together": ("together", 0.5),
    "emulated": (None, 1.0),
}
LIBRARY = f"genai-prices {genai_prices.__version__}"
MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, and the factor a batch pays of it."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    batch_discount: Decimal
    source: str

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        cached = min(cached, prompt)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (prompt - cached) * self.input + cached * cached_rate + completion * self.output
        ) / MILLION
        return float(total * self.batch_discount)

    def as_json(self) -> dict[str, Any]:
        return {
            "input": float(self.input),
            "output": float(self.output),
            "cached_input": None if self.cached_input is None else float(self.cached_input),
            "batch_discount": float(self.batch_discount),
            "source": self.source,
        }


FREE = Price(Decimal(0), Decimal(0), None, Decimal(1), "sandbox")


class Pricing:
    """Prices for the configured providers; rebuilt with the config on reload."""

    def __init__(self, config: Config) -> None:
        self._providers: Mapping[str, ProviderConfig] = config.providers
        self._overrides = config.pricing

    def price(self, provider: str, model: str) -> Price | None:
        settings = self._providers.get(provider)
        kind = settings.type if settings is not None else ""
        library_id, discount = TYPE_PRICES.get(kind, (None, 1.0))
        override = self._overrides.get(provider, {}).get(model)
        if override is not None:
            return _configured(override, discount)
        if kind == "sandbox":
            return FREE
        if settings is None or kind not in TYPE_PRICES:
            return None
        base_url = getattr(settings, "base_url", None) if library_id is None else None
        if library_id is None and not base_url:
            return None
        return _library(library_id, base_url, model, discount)


def _configured(price: PriceConfig, discount: float) -> Price:
    chosen = price.batch_discount if price.batch_discount is not None else discount
    return Price(
        Decimal(str(price.input)),
        Decimal(str(price.output)),
        None if price.cached_input is None else Decimal(str(price.cached_input)),
        Decimal(str(chosen)),
        "config",
    )


@lru_cache(maxsize=4096)
def _library(
    provider_id: str | None, base_url: str | None, model: str, discount: float
) -> Price | None:
    found = None
    for name in _names(model):
        try:
            if provider_id is not None:
                found = calc_price(Usage(), name, provider_id=provider_id).model_price
            else:
                found = calc_price(Usage(), name, provider_api_url=base_url).model_price
            break
        except LookupError:
            continue
    if found is None:
        return None
    rates = [_base_tier(found.input_mtok), _base_tier(found.output_mtok)]
    if rates[0] is None:
        return None
    return Price(
        rates[0],
        rates[1] or Decimal(0),
        _base_tier(found.cache_read_mtok),
        Decimal(str(discount)),
        LIBRARY,
    )


def _names(model: str) -> list[str]:
    """The model as reported, then without a Vertex version (`@default`) or resource path
    (`publishers/google/models/…`): the same model, written the provider's way."""
    names = [model]
    for short in (model.split("@", 1)[0], model.rsplit("/", 1)[-1].split("@", 1)[0]):
        if short and short not in names:
            names.append(short)
    return names


def _base_tier(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    base = getattr(value, "base", None)  # TieredPrices
    return base if isinstance(base, Decimal) else None


def month_start(now: float) -> int:
    """The start of `now`'s calendar month, UTC, in Unix seconds: budgets reset there."""
    day = datetime.fromtimestamp(now, UTC)
    return int(day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())


def estimated_cost(pricing: Pricing, provider: str, file: FileRecord, tokens: int) -> float:
    """What a batch from `file` is expected to cost before it runs: its input tokens
    (`gateway.estimate`), priced at the dearest of its models; 0 when none has a price."""
    costs = [
        price.cost(tokens, 0)
        for model in file.models
        if (price := pricing.price(provider, model)) is not None
    ]
    return max(costs, default=0.0)
