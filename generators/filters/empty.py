"""Drop answers with no text."""

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


class EmptyOptions(FilterOptions):
    field: str = Field("response_text", description="The column to look at.")


@register
class EmptyFilter(Filter[EmptyOptions]):
    """Blank after ``str.strip()`` (NULL included): safety blocks and some refusals arrive as
    a successful response with no content."""

    name: ClassVar[str] = "empty"
    options_model: ClassVar[type[FilterOptions]] = EmptyOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        if text_of(sample, self.options.field).strip():
            return KEEP
        return drop("empty", f"{self.options.field} is blank")
