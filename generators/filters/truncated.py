"""Drop answers the teacher stopped because it ran out of tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from distillery.generators.filters.base import KEEP, Filter, FilterOptions, Verdict, drop, register


class TruncatedOptions(FilterOptions):
    finish_reasons: list[str] = Field(
        default_factory=lambda: ["length"],
        description="Normalised finish reasons that mean the answer was cut off.",
    )


@register
class TruncatedFilter(Filter[TruncatedOptions]):
    """A cut-off answer teaches the student to stop mid-sentence. Providers' own words for
    it (``max_tokens``, ``MAX_TOKENS``) are normalised to ``length`` by the clients."""

    name: ClassVar[str] = "truncated"
    options_model: ClassVar[type[FilterOptions]] = TruncatedOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        reason = sample.get("finish_reason")
        if reason in self.options.finish_reasons:
            raw = sample.get("finish_reason_raw")
            return drop("truncated", f"finish_reason={reason}" + (f" ({raw})" if raw else ""))
        return KEEP
