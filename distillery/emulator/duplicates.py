"""Duplicate answers on purpose, so exact and near-duplicate removal can be tested end to end.

Real teachers repeat themselves: the same boilerplate answer to similar prompts, or the same
answer with a few words changed. With ``dup_rate`` > 0 a share of the clean answers is an
earlier clean answer verbatim; with ``near_dup_rate`` > 0 a share is an earlier answer lightly
edited, so that its five-word-shingle Jaccard to that answer (casefolded, as
:func:`distillery.generators.curation.minhash.shingle_jaccard` measures it) is at least
:data:`MIN_JACCARD`, yet its text differs (it is not an exact duplicate, even casefolded).

Only fresh answers are remembered (the last :data:`MEMORY` that finished normally), never the
copies, so every copy is a copy of a fresh answer: a cluster of duplicates is one fresh answer
and its copies. Which requests get a copy is drawn from a RNG seeded by the emulator's seed, one
draw per clean answer, so a seeded single-client run is reproducible. A request that finds the
memory empty is answered normally. Only clean answers are copied or remembered: a request hit
by a fault (:mod:`.faults`) is neither. The memory and the RNG outlive ``/_emulator/reset``, as the
fault RNG does.

How a near duplicate is made: a few words of the vocabulary (adjectives, adverbs, nouns) are
replaced by others of their kind, keeping capitalisation, punctuation and a matching "a"/"an".
One replaced word changes at most the five shingles that contain it, so the text's shingle count
``S`` bounds how many it can take: a Jaccard target ``J`` is drawn in :data:`TARGET_JACCARD` and
words are picked (cheap ones near the ends count less) while the shingles they touch stay within
``S (1 - J) / (1 + J)``; about one word in sixty on a long answer. When no word fits (a short
answer), a short closing sentence is appended instead. The result is checked against the exact
Jaccard, and edits are undone until it passes. A near copy is never the text of an earlier near
copy of the same answer (short answers have few edits to pick from, so it is drawn again), which
keeps every near duplicate an inexact one. An answer too short for any edit to pass, or whose
edits all went out already, is served verbatim and counted as an exact duplicate.

With both rates 0 the server builds no :class:`Copier` and does no work for it.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache

from distillery.emulator import vocabulary as vocab
from distillery.emulator.completion import Answer, ChatRequest, Finish, answer_with
from distillery.emulator.text import needs_an

#: Fresh answers remembered as sources of copies (the most recent ones).
MEMORY = 1000
SHINGLE_WORDS = 5
#: Every near duplicate has at least this shingle Jaccard to its source.
MIN_JACCARD = 0.86
#: Range of the Jaccard a near duplicate aims at (the edits stop before going below it).
TARGET_JACCARD = (0.87, 0.97)
#: Appended to answers too short to take a replaced word.
_CLOSINGS = (
    "Good luck.",
    "Good luck!",
    "Best of luck.",
    "Happy to help.",
    "Have fun.",
    "Enjoy!",
    "Hope this helps.",
    "Hope that helps.",
    "I hope this helps.",
)
#: Tries at a near copy unlike the earlier ones of the same answer before copying it verbatim.
_ATTEMPTS = 4
# What may follow a word of the vocabulary, e.g. "Clearly," or "costs."
_PUNCTUATION = ".,;:!?)'\""
_SPACE = re.compile(r"(\s+)")
_ARTICLES = frozenset({"a", "an", "A", "An"})
_REACH = SHINGLE_WORDS - 1  # a word's shingles start up to this many words before it


class Copy(StrEnum):
    """What a copied answer is, and the name its count has in the stats."""

    DUP = "dup"
    NEAR_DUP = "near_dup"


@cache
def _kinds() -> dict[str, tuple[str, ...]]:
    """Each replaceable word, with the words of its kind (the first list a word is in wins)."""
    kinds: dict[str, tuple[str, ...]] = {}
    for words in (vocab.ADJECTIVES, vocab.ADVERBS, vocab.NOUNS):
        for word in words:
            kinds.setdefault(word, words)
    return kinds


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """The casefolded word shingles of ``text``, as the near-duplicate stage computes them."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    words = text.casefold().split()
    if len(words) < size:
        return {tuple(words)}
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    """Jaccard of two shingle sets."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def near_copy(source: str, rng: random.Random) -> str | None:
    """``source`` lightly edited (shingle Jaccard to it ≥ :data:`MIN_JACCARD`, text differs),
    or None if it is too short for any edit to keep that Jaccard."""
    parts = _SPACE.split(source)  # words at even indices, the whitespace between at odd ones
    words = len(parts[0::2]) - (parts[0] == "") - (parts[-1] == "")
    if words < SHINGLE_WORDS:
        return None  # a single shingle: any edit changes all of it
    original = shingles(source)
    count = words - SHINGLE_WORDS + 1
    target = rng.uniform(*TARGET_JACCARD)
    budget = max(1, int(count * (1 - target) / (1 + target)))  # 1: an end word
    edits = _pick_edits(parts, budget, rng)
    while edits:
        edited = parts.copy()
        for edit in edits:
            for index, token in edit:
                edited[index] = token
        text = "".join(edited)
        if jaccard(original, shingles(text)) >= MIN_JACCARD:
            return text
        edits.pop()
    body = source.rstrip()
    tail = source[len(body) :]
    for closing in rng.sample(_CLOSINGS, len(_CLOSINGS)):
        text = f"{body} {closing}{tail}"
        if jaccard(original, shingles(text)) >= MIN_JACCARD:
            return text
    return None


def _pick_edits(parts: list[str], budget: int, rng: random.Random) -> list[list[tuple[int, str]]]:
    """Word replacements whose shingles touched fit ``budget``; each edit lists the tokens it
    sets (the word, and the article before it if that must change)."""
    kinds = _kinds()
    indices = [i for i in range(0, len(parts), 2) if parts[i]]
    last = len(indices) - 1
    candidates: list[tuple[int, str, str, tuple[str, ...]]] = []
    for position, index in enumerate(indices):
        word = parts[index]
        core = word.rstrip(_PUNCTUATION)
        if (kind := kinds.get(core.lower())) is not None:
            candidates.append((position, core, word[len(core) :], kind))
    rng.shuffle(candidates)
    edits: list[list[tuple[int, str]]] = []
    for position, core, after, kind in candidates:
        # Shingles containing this word: fewer for the first and last four words.
        cost = min(position, last - _REACH) - max(0, position - _REACH) + 1
        previous = parts[indices[position - 1]] if position > 0 else ""
        article = previous in _ARTICLES
        if cost + article > budget:  # a changed article touches one more shingle
            continue
        new = rng.choice(kind)
        while new == core.lower():
            new = rng.choice(kind)
        edit = [(indices[position], (new.capitalize() if core[0].isupper() else new) + after)]
        if article and needs_an(new) != (previous.lower() == "an"):
            fixed = "an" if needs_an(new) else "a"
            edit.append(
                (indices[position - 1], fixed.capitalize() if previous.istitle() else fixed)
            )
            cost += 1
        budget -= cost
        edits.append(edit)
        if budget <= 0:
            break
    return edits


@dataclass(slots=True)
class _Source:
    """A remembered fresh answer, and the near copies of it sent so far."""

    text: str
    near: set[str] = field(default_factory=set)


class Copier:
    """Replaces a share of the clean answers by copies of earlier ones (see the module doc)."""

    def __init__(self, dup_rate: float, near_dup_rate: float, seed: int) -> None:
        self._dup_rate = dup_rate
        self._copy_rate = dup_rate + near_dup_rate
        # A string seed keeps this stream independent of the jitter's and the faults'.
        self._rng = random.Random(f"duplicates/{seed}")
        self._memory: list[_Source] = []
        self._next = 0  # where the next fresh answer goes once the memory is full

    def answer(self, fresh: Answer, chat: ChatRequest) -> tuple[Answer, Copy | None]:
        """The answer to send instead of the clean ``fresh`` one, and what copy it is, if any.

        A copy is counted like any answer to ``chat``: its own tokens, cut to ``max_tokens``.
        """
        rng, memory = self._rng, self._memory
        draw = rng.random()
        if draw < self._copy_rate and memory:
            source = memory[rng.randrange(len(memory))]
            if source.text != fresh.text:  # else the request is just asked again: answer it
                text, kind = source.text, Copy.DUP
                if draw >= self._dup_rate and (edited := self._near(source)) is not None:
                    text, kind = edited, Copy.NEAR_DUP
                return answer_with(text, chat, fresh.prompt_tokens), kind
        if fresh.finish is Finish.STOP and fresh.text:
            self._remember(fresh.text)
        return fresh, None

    def _near(self, source: _Source) -> str | None:
        """A near copy of ``source`` unlike those sent before, so that it is no exact duplicate
        of one (short answers have few edits to choose from); None: none was found."""
        for _ in range(_ATTEMPTS):
            edited = near_copy(source.text, self._rng)
            if edited is None:
                return None
            if edited not in source.near:
                source.near.add(edited)
                return edited
        return None

    def _remember(self, text: str) -> None:
        memory = self._memory
        if len(memory) < MEMORY:
            memory.append(_Source(text))
        else:
            memory[self._next] = _Source(text)
            self._next = (self._next + 1) % MEMORY
