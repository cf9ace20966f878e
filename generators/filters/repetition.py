"""Drop degenerate loops: repeated lines, paragraphs or word n-grams (Gopher's rules).

The thresholds are those of Gopher (Rae et al. 2021, table A1) as datatrove implements them
(``GopherRepetitionFilter``), computed on the answer text: a share of characters in
duplicated lines or paragraphs, in the single most frequent 2-4-gram, and in n-grams
(5-10 words) that occur more than once. Small base models loop ("I am a student. I am a
student. ..."), which no length filter catches.

One change from Gopher: the share of duplicated *lines by count* is off by default, since
code answers repeat short lines (``}``, ``end``) legitimately; the character-weighted line
rule still catches real loops.
"""

from __future__ import annotations

import re
from collections import Counter
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

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_PUNCTUATION = re.compile(r"^\W+|\W+$")


class RepetitionOptions(FilterOptions):
    min_words: int = Field(
        10, ge=1, description="Shorter answers are kept: too few words to judge."
    )
    dup_line_frac: float | None = Field(None, description="Max share of lines that repeat.")
    dup_para_frac: float | None = Field(0.3, description="Max share of paragraphs that repeat.")
    dup_line_char_frac: float | None = Field(0.2, description="Max char share, repeated lines.")
    dup_para_char_frac: float | None = Field(
        0.2, description="Max char share, repeated paragraphs."
    )
    top_n_grams: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n → max char share of the most frequent n-gram.",
    )
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n → max char share of n-grams that occur more than once.",
    )


def _duplicates(elements: list[str]) -> tuple[int, int]:
    """(count, characters) of elements that are repeats of an earlier one."""
    seen: set[str] = set()
    count = chars = 0
    for element in elements:
        if element in seen:
            count += 1
            chars += len(element)
        else:
            seen.add(element)
    return count, chars


def _top_n_gram_chars(words: list[str], n: int) -> int:
    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def _duplicated_n_gram_chars(words: list[str], n: int) -> int:
    """Characters of non-overlapping repeated n-grams (datatrove's ``find_all_duplicate``)."""
    seen: set[str] = set()
    chars = index = 0
    while index < len(words) - n + 1:
        gram = "".join(words[index : index + n])
        if gram in seen:
            chars += len(gram)
            index += n
        else:
            seen.add(gram)
            index += 1
    return chars


@register
class RepetitionFilter(Filter[RepetitionOptions]):
    name: ClassVar[str] = "repetition"
    options_model: ClassVar[type[FilterOptions]] = RepetitionOptions

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        text = text_of(sample).strip()
        words = [w for w in (_PUNCTUATION.sub("", w).lower() for w in text.split()) if w]
        if len(words) < self.options.min_words:
            return KEEP
        size = len(text)
        o = self.options
        paragraphs = [p for p in _PARAGRAPHS.split(text) if p.strip()]
        count, chars = _duplicates(paragraphs)
        if o.dup_para_frac is not None and count / len(paragraphs) > o.dup_para_frac:
            return _drop("dup_para_frac", count / len(paragraphs), o.dup_para_frac)
        if o.dup_para_char_frac is not None and chars / size > o.dup_para_char_frac:
            return _drop("dup_para_char_frac", chars / size, o.dup_para_char_frac)
        lines = [line for line in _LINES.split(text) if line.strip()]
        count, chars = _duplicates(lines)
        if o.dup_line_frac is not None and count / len(lines) > o.dup_line_frac:
            return _drop("dup_line_frac", count / len(lines), o.dup_line_frac)
        if o.dup_line_char_frac is not None and chars / size > o.dup_line_char_frac:
            return _drop("dup_line_char_frac", chars / size, o.dup_line_char_frac)
        for n, limit in sorted(o.top_n_grams.items()):
            share = _top_n_gram_chars(words, n) / size
            if share > limit:
                return _drop(f"top_{n}_gram_char_frac", share, limit)
        for n, limit in sorted(o.dup_n_grams.items()):
            share = _duplicated_n_gram_chars(words, n) / size
            if share > limit:
                return _drop(f"dup_{n}_gram_char_frac", share, limit)
        return KEEP


def _drop(rule: str, value: float, limit: float) -> Verdict:
    return drop("repetition", f"{rule} {value:.2f} > {limit}")
