"""Drop answers whose reasoning trace is missing, too short or too long.

A distillation set of traces wants neither a two-line "trace" (the teacher did not really
think) nor one that ran for thousands of tokens (likely looping, and costly to train on).
Tokens are counted in ``reasoning_text`` with the teacher's tokenizer, as the ``length``
filter does for answers, rather than taken from ``reasoning_tokens``: that count is missing
for some providers and, for summarised traces, counts the thinking, not the text we keep.

Extension point — *is the answer consistent with the end of its trace?* A filter for it is
one more module like this one: a :class:`~.base.Filter` whose ``check`` reads
``reasoning_text`` and ``response_text`` of the sample (for instance the trace's last stated
result against the answer's, or a judge asked to compare them) and returns ``drop("inconsistent",
detail)``. It is not built in: checking it well is task-specific (maths answers, code, prose).
"""

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


class ReasoningLengthOptions(FilterOptions):
    min_tokens: int | None = Field(None, ge=0, description="Drop traces below this many tokens.")
    max_tokens: int | None = Field(None, ge=1, description="Drop traces above this many tokens.")
    require_trace: bool = Field(
        True,
        description="Drop samples without a readable trace (hidden, fully redacted or none).",
    )
    model: str | None = Field(
        None, description="Tokenizer model; default: the sample's teacher_model."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if (
            self.min_tokens is not None
            and self.max_tokens is not None
            and self.min_tokens > self.max_tokens
        ):
            raise ValueError(f"min_tokens ({self.min_tokens}) > max_tokens ({self.max_tokens})")
        return self


@register
class ReasoningLengthFilter(Filter[ReasoningLengthOptions]):
    """Bounds on the trace's length; the rejected row keeps the trace for inspection."""

    name: ClassVar[str] = "reasoning_length"
    options_model: ClassVar[type[FilterOptions]] = ReasoningLengthOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        options = self.options
        trace = text_of(sample, "reasoning_text")
        if not trace.strip():
            if options.require_trace:
                shown = sample.get("reasoning_visibility") or "none"
                return drop("no_trace", f"reasoning_visibility={shown}")
            return KEEP
        model = options.model or sample.get("teacher_model") or "gpt-4o"
        tokens = count_tokens(trace, str(model))
        if options.min_tokens is not None and tokens < options.min_tokens:
            return drop("trace_too_short", f"{tokens} tokens < min_tokens {options.min_tokens}")
        if options.max_tokens is not None and tokens > options.max_tokens:
            return drop("trace_too_long", f"{tokens} tokens > max_tokens {options.max_tokens}")
        return KEEP
