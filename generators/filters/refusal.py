"""Drop refusals: the provider's own signal, or a refusal phrase at the start of the answer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator

from distillery.generators.filters.base import (
    KEEP,
    Filter,
    FilterOptions,
    Verdict,
    drop,
    register,
    text_of,
)

# Matched case-insensitively after typographic apostrophes become "'". English only: other
# languages need their own patterns (option ``patterns`` / ``extra_patterns``).
_CANT = r"(?:can'?t|cannot|can not|won'?t|will not|am unable to|am not able to)"
_HELP = (
    r"(?:help|assist|comply|provide|fulfil+|do that|do this|create|generate|write|support|"
    r"answer|engage|participate)"
)
DEFAULT_PATTERNS: tuple[str, ...] = (
    rf"\bI'?m (?:very |so |really )?sorry,? but I {_CANT}",
    rf"\bI {_CANT} {_HELP}",
    rf"\bI'?m (?:not able|unable) to {_HELP}",
    rf"\bI'?m afraid I {_CANT}",
    rf"\bAs an AI(?: language model| assistant)?,? I {_CANT}",
    r"\bAs an AI(?: language model| assistant)?,? I (?:don'?t|do not) have the ability",
    r"\bI must (?:respectfully )?(?:decline|refuse)",
    rf"\bI (?:would|will) not be able to {_HELP}",
    r"\b(?:this|that|your) request (?:goes against|violates) (?:my|our|the)",
)


class RefusalOptions(FilterOptions):
    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        description="Regular expressions (case-insensitive) that mark a refusal; replaces "
        "the English defaults.",
    )
    extra_patterns: list[str] = Field(
        default_factory=list, description="Added to ``patterns`` (keeps the defaults)."
    )
    finish_reasons: list[str] = Field(
        default_factory=lambda: ["refusal", "content_filter"],
        description="Normalised finish reasons that are the provider saying no.",
    )
    scan_chars: int | None = Field(
        400,
        ge=1,
        description="Only the first N characters are searched: refusals come first, and an "
        "answer that quotes a refusal later on is not one. None searches everything.",
    )

    @field_validator("patterns", "extra_patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return value


@register
class RefusalFilter(Filter[RefusalOptions]):
    """A refusal in a distillation set teaches the student to refuse ordinary requests."""

    name: ClassVar[str] = "refusal"
    options_model: ClassVar[type[FilterOptions]] = RefusalOptions

    def __init__(self, options: RefusalOptions | None = None) -> None:
        super().__init__(options)
        patterns = [*self.options.patterns, *self.options.extra_patterns]
        self._regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        self._has_patterns = bool(patterns)

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        reason = sample.get("finish_reason")
        if reason in self.options.finish_reasons:
            return drop("refusal", f"finish_reason={reason}")
        if not self._has_patterns:
            return KEEP
        text = text_of(sample)
        if self.options.scan_chars is not None:
            text = text[: self.options.scan_chars]
        match = self._regex.search(text.replace("\u2019", "'"))
        if match:
            return drop("refusal", f"matched {match.group(0)!r}")
        return KEEP
