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
from typing import Any, ClassVar

from pydantic import Field

from distillery.generators.filters.base import (
    KEEP,
    Filter,
    FilterOptions,
    Verdict,
    drop,
    register,
    text_of,
)
from distillery.generators.filters.length import TokenBoundsOptions


class ReasoningLengthOptions(TokenBoundsOptions):
    require_trace: bool = Field(
        True,
        description="Drop samples without a readable trace (hidden, fully redacted or none).",
    )


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
        return options.verdict(trace, sample, prefix="trace_")
