"""Keep only answers that match (include) and do not match (exclude) regular expressions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from distillery.generators.filters.base import (
    KEEP,
    Filter,
    FilterOptions,
    Verdict,
    drop,
    register,
    text_of,
)


class RegexOptions(FilterOptions):
    include: list[str] = Field(
        default_factory=list, description="The answer must match these (see include_mode)."
    )
    include_mode: Literal["any", "all"] = Field("any", description="Match any or all of include.")
    exclude: list[str] = Field(default_factory=list, description="Drop if any of these matches.")
    ignore_case: bool = False
    field: str = Field("response_text", description="The column to match against.")

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.include and not self.exclude:
            raise ValueError("set include, exclude or both")
        return self


@register
class RegexFilter(Filter[RegexOptions]):
    """``re.search`` semantics: a pattern matches anywhere unless anchored."""

    name: ClassVar[str] = "regex"
    options_model: ClassVar[type[FilterOptions]] = RegexOptions

    def __init__(self, options: RegexOptions | None = None) -> None:
        super().__init__(options)
        flags = re.IGNORECASE if self.options.ignore_case else 0
        self._include = [re.compile(p, flags) for p in self.options.include]
        self._exclude = [re.compile(p, flags) for p in self.options.exclude]

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        text = text_of(sample, self.options.field)
        for pattern in self._exclude:
            if pattern.search(text):
                return drop("regex_excluded", f"matched exclude {pattern.pattern!r}")
        if self._include:
            hits = [bool(p.search(text)) for p in self._include]
            wanted = all(hits) if self.options.include_mode == "all" else any(hits)
            if not wanted:
                missing = [p.pattern for p, hit in zip(self._include, hits, strict=True) if not hit]
                return drop("regex_not_included", f"no match for {', '.join(map(repr, missing))}")
        return KEEP
