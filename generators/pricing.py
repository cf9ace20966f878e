"""The price table, and the cost of one answer.

Cost counts what providers bill: uncached prompt tokens at the input price, cached ones at the
cached-input price, and every completion token — reasoning or thinking tokens included, which
all three providers already count in their completion usage — at the output price.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic import Field

from distillery.generators.lookup import Keyed, first_match, load_entries


class PriceEntry(Keyed):
    input: float = Field(ge=0, description="USD per million prompt tokens.")
    output: float = Field(ge=0, description="USD per million completion tokens.")
    cached_input: float | None = Field(default=None, ge=0)
    batch_discount: float = Field(default=0.0, ge=0, le=1)
    as_of: date


def load_prices(extra: Path | None = None) -> list[PriceEntry]:
    return load_entries(PriceEntry, "prices.yaml", extra)


def price_for(entries: list[PriceEntry], provider: str, model: str) -> PriceEntry | None:
    return first_match(entries, provider, model)


def cost_usd(
    price: PriceEntry | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None = None,
) -> float | None:
    """USD for one answer; None when the price or the usage is unknown (never a guess)."""
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    cached = min(cached_tokens or 0, prompt_tokens)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    total = (
        (prompt_tokens - cached) * price.input
        + cached * cached_rate
        + completion_tokens * price.output
    )
    return round(total / 1_000_000, 10)
