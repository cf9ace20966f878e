"""Drop answers too short or too long in tokens of the teacher's own tokenizer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import Field, model_validator

from distillery.generators.filters.base import (
    KEEP,
    Filter,
    FilterOptions,
    Verdict,
    drop,
    register,
    text_of,
)
from distillery.generators.tokens import count_tokens


class TokenBoundsOptions(FilterOptions):
    """Token bounds on one text, counted with the sample teacher's tokenizer (shared by the
    ``length`` and ``reasoning_length`` filters)."""

    min_tokens: int | None = Field(None, ge=0, description="Drop below this many tokens.")
    max_tokens: int | None = Field(None, ge=1, description="Drop above this many tokens.")
    model: str | None = Field(
        None, description="Tokenizer model; default: the sample's teacher_model."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if (
            self.min_tokens is not None
            and self.max_tokens is not None
            and self.min_tokens > self.max_tokens
        ):
            raise ValueError(f"min_tokens ({self.min_tokens}) > max_tokens ({self.max_tokens})")
        return self

    def verdict(self, text: str, sample: Mapping[str, Any], prefix: str = "") -> Verdict:
        """Drop ``text`` as ``{prefix}too_short`` / ``{prefix}too_long`` outside the bounds."""
        model = self.model or sample.get("teacher_model") or "gpt-4o"
        tokens = count_tokens(text, str(model))
        if self.min_tokens is not None and tokens < self.min_tokens:
            return drop(f"{prefix}too_short", f"{tokens} tokens < min_tokens {self.min_tokens}")
        if self.max_tokens is not None and tokens > self.max_tokens:
            return drop(f"{prefix}too_long", f"{tokens} tokens > max_tokens {self.max_tokens}")
        return KEEP


class LengthOptions(TokenBoundsOptions):
    @model_validator(mode="after")
    def _some_bound(self) -> Self:
        if self.min_tokens is None and self.max_tokens is None:
            raise ValueError("set min_tokens, max_tokens or both")
        return self


@register
class LengthFilter(Filter[LengthOptions]):
    """Tokens are counted with tiktoken (exact for OpenAI models, o200k as an estimate for
    others), not taken from ``completion_tokens``, which includes hidden reasoning tokens for
    some providers and is missing for others."""

    name: ClassVar[str] = "length"
    options_model: ClassVar[type[FilterOptions]] = LengthOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        return self.options.verdict(text_of(sample), sample)
