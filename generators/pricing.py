"""The price table, and the cost of one answer.

Cost counts what providers bill: uncached prompt tokens at the input price, tokens read from a
prompt cache at the cached-input price, tokens written to one at the cache-write price
(Anthropic's premium; the others charge nothing extra to write), and every completion token —
reasoning or thinking tokens included, which all three providers already count in their
completion usage — at the output price.

Usage arrives normalised by the providers (:class:`~distillery.generators.providers.base.
Completion`): ``prompt_tokens`` counts every input token, cache reads and writes included, so
the uncached part is what is left after both.

An answer bought through a provider's batch API costs ``1 - batch_discount`` of each of those
rates: Anthropic bills "all usage" of a Message Batch at 50% — input, output, cache writes and
cache reads, the caching multipliers applying on top; OpenAI's Batch API halves input and
output, and its batch price list halves the cached-input price too; Gemini's batch mode is
50% of the standard price.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Protocol

from pydantic import Field

from distillery.generators.lookup import Keyed, first_match, load_entries
from distillery.storage.rows import Delivery


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
    batch_discount: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of every rate taken off through the provider's batch API "
        "(0.5: half price).",
    )
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
    *,
    delivery: Delivery = "online",
) -> float | None:
    """USD for one answer; None when the price or the usage is unknown (never a guess).

    ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are parts of ``prompt_tokens``.
    ``delivery`` ``batch``: every rate less the entry's ``batch_discount``.
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
    if delivery == "batch":
        total *= 1 - price.batch_discount
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


def answer_cost(
    price: PriceEntry | None, usage: Usage, delivery: Delivery = "online"
) -> float | None:
    """:func:`cost_usd` of one answer's usage, bought as ``delivery`` says: every caller
    prices cache reads and writes the same way, so none can forget one."""
    return cost_usd(
        price,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        delivery=delivery,
    )
