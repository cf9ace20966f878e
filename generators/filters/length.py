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


class LengthOptions(FilterOptions):
    min_tokens: int | None = Field(None, ge=0, description="Drop below this many tokens.")
    max_tokens: int | None = Field(None, ge=1, description="Drop above this many tokens.")
    model: str | None = Field(
        None, description="Tokenizer model; default: the sample's teacher_model."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_tokens is None and self.max_tokens is None:
            raise ValueError("set min_tokens, max_tokens or both")
        if (
            self.min_tokens is not None
            and self.max_tokens is not None
            and self.min_tokens > self.max_tokens
        ):
            raise ValueError(f"min_tokens ({self.min_tokens}) > max_tokens ({self.max_tokens})")
        return self


@register
class LengthFilter(Filter[LengthOptions]):
    """Tokens are counted with tiktoken (exact for OpenAI models, o200k as an estimate for
    others), not taken from ``completion_tokens``, which includes hidden reasoning tokens for
    some providers and is missing for others."""

    name: ClassVar[str] = "length"
    options_model: ClassVar[type[FilterOptions]] = LengthOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        options = self.options
        model = options.model or sample.get("teacher_model") or "gpt-4o"
        tokens = count_tokens(text_of(sample), str(model))
        if options.min_tokens is not None and tokens < options.min_tokens:
            return drop("too_short", f"{tokens} tokens < min_tokens {options.min_tokens}")
        if options.max_tokens is not None and tokens > options.max_tokens:
            return drop("too_long", f"{tokens} tokens > max_tokens {options.max_tokens}")
        return KEEP
