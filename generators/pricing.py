"""The price table, and the cost of one answer.

Cost counts what providers bill: uncached prompt tokens at the input price, tokens read from a
prompt cache at the cached-input price, tokens written to one at the cache-write price
(Anthropic's premium; the others charge nothing extra to write), and every completion token —
reasoning or thinking tokens included, which all three providers already count in their
completion usage — at the output price.

Usage arrives normalised by the providers (:class:`~distillery.generators.providers.base.
Completion`): ``prompt_tokens`` counts every input token, cache reads and writes included, so
the uncached part is what is left after both.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Protocol

from pydantic import Field

from distillery.generators.lookup import Keyed, first_match, load_entries


class PriceEntry(Keyed):
    input: float = Field(ge=0, description="USD per million prompt tokens.")
    output: float = Field(ge=0, description="USD per million completion tokens.")
    cached_input: float | None = Field(default=None, ge=0)
    cache_write_input: float | None = Field(
        default=None,
        ge=0,
        description="USD per million prompt tokens written to a prompt cache (Anthropic's "
        "5-minute cache writes); null: the input price.",
    )
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
    cache_write_tokens: int | None = None,
) -> float | None:
    """USD for one answer; None when the price or the usage is unknown (never a guess).

    ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are parts of ``prompt_tokens``.
    """
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    cached = min(cached_tokens or 0, prompt_tokens)
    written = min(cache_write_tokens or 0, prompt_tokens - cached)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    write_rate = price.cache_write_input if price.cache_write_input is not None else price.input
    total = (
        (prompt_tokens - cached - written) * price.input
        + cached * cached_rate
        + written * write_rate
        + completion_tokens * price.output
    )
    return round(total / 1_000_000, 10)


class Usage(Protocol):
    """The usage fields of an answer (a :class:`~distillery.generators.providers.base.
    Completion`), as read by :func:`answer_cost`."""

    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int | None: ...
    @property
    def cached_tokens(self) -> int | None: ...
    @property
    def cache_write_tokens(self) -> int | None: ...


def answer_cost(price: PriceEntry | None, usage: Usage) -> float | None:
    """:func:`cost_usd` of one answer's usage: every caller prices cache reads and writes the
    same way, so none can forget one."""
    return cost_usd(
        price,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
    )
