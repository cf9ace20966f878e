"""The text normalisation every dedup key starts from, and the exact-duplicate key.

Two answers that differ only in how they were typeset (full-width letters, ligatures, a
non-breaking space, CRLF line ends, trailing blank lines) are the same training sample, so keys
are computed on a normal form, not on the raw text:

1. Unicode NFKC (compatibility composition: ``ﬁ`` → ``fi``, full-width ``Ａ`` → ``A``,
   ``\\u00a0`` → space);
2. every run of whitespace (any character for which ``str.isspace()`` is true: tabs, newlines,
   ``\\x1c``–``\\x1f``, ``\\u2028``, ...) becomes one ASCII space, and the ends are stripped;
3. optionally ``str.casefold()`` (for near-duplicate shingles; exact keys keep case by default).

This is exactly ``re.sub(r"\\s+", " ", unicodedata.normalize("NFKC", text)).strip()``, the
rule of :func:`distillery.generators.records.content_hash`, written with ``str.replace`` because
the regular expression costs ~100 µs per KB of text (over a minute per million samples).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Every character ``str.isspace()`` accepts lies below U+3001 (IDEOGRAPHIC SPACE is the last);
# a test checks the whole code space, so a future Unicode table that adds one is caught.
_WHITESPACE = tuple(c for c in map(chr, range(0x3001)) if c.isspace())
_ASCII_WHITESPACE = tuple(c for c in _WHITESPACE if c.isascii() and c != " ")
_NON_ASCII_WHITESPACE = re.compile("[" + "".join(c for c in _WHITESPACE if not c.isascii()) + "]")


def _collapse_whitespace(text: str) -> str:
    if not text.isascii() and _NON_ASCII_WHITESPACE.search(text):
        return " ".join(text.split())  # rare after NFKC: U+0085, U+1680, U+2028, U+2029
    for char in _ASCII_WHITESPACE:
        text = text.replace(char, " ")  # one scan; no `in` check first, which is another
    while len(folded := text.replace("  ", " ")) != len(text):
        text = folded
    return text.strip(" ")


def normalize(text: str, casefold: bool = False) -> str:
    """NFKC, whitespace runs folded to one space and stripped, optionally case-folded."""
    normal = _collapse_whitespace(unicodedata.normalize("NFKC", text))
    return normal.casefold() if casefold else normal


def exact_key(text: str, casefold: bool = False) -> str:
    """Exact-duplicate key: blake2b-128 hex of :func:`normalize` (UTF-8).

    With ``casefold=False`` it equals ``records.content_hash(text)``, the ``content_hash``
    column every sample row already carries, so exact dedup needs no recomputation.
    """
    return hashlib.blake2b(normalize(text, casefold).encode(), digest_size=16).hexdigest()


def words_ready(text: str, casefold: bool = False) -> str:
    """NFKC (and case folding) only, with the rare non-ASCII whitespace already folded.

    The maximal runs of non-whitespace in the result are exactly the words of
    ``normalize(text, casefold).split(" ")``, so code that only needs the words (MinHash
    shingles) can skip collapsing ASCII whitespace, the costly part of :func:`normalize`.
    Case folding before or after the whitespace step is the same: it never makes or removes
    whitespace (a test checks every code point).
    """
    text = unicodedata.normalize("NFKC", text)
    if casefold:
        text = text.casefold()
    if not text.isascii() and _NON_ASCII_WHITESPACE.search(text):
        text = " ".join(text.split())
    return text
