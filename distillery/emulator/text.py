"""Deterministic answer text: a pure function of a key, worded around the prompt.

Downstream stages (dedup, quality filters, length statistics) need answers that differ per
prompt, vary in length and reuse the prompt's words, yet reproduce exactly for the same
request so test expectations and benchmark runs are stable. The key is hashed with blake2b
(never ``hash()``, which is salted per process) into the seed of a private ``random.Random``.

Speed: filling templates word by word cost ~250 µs per answer, most of the emulator's CPU.
So templates are filled once, from a fixed seed, into banks of sentence skeletons whose only
open slots are the prompt's words; an answer then picks skeletons and drops the words in.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from distillery.emulator import vocabulary as vocab

MIN_WORDS = 20
MAX_WORDS = 400
_SENTENCE_BANK = 8192  # two answers share a skeleton rarely, and differ in topic words anyway
_SMALL_BANK = 512
_BANK_SEED = 20_240_601  # changing it (or the vocabulary) changes every answer
_TOPIC_SCAN_CHARS = 4000  # bounds per-request work on huge prompts
_MAX_TOPICS = 16
_WORD = re.compile(r"[^\W\d_][^\W_]{3,}")
_SLOT = re.compile(r"\{([A-Z])\}")
# "an" before a vowel sound; "u" words like "unique" or "user" keep "a".
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeioAEIO]|[uU](?!ni|s[eu]|ti))")
_TRAILING_ARTICLE = re.compile(r"(?:^|\W)[Aa] $")
_TOPIC = "T"


def _add_s(word: str) -> str:
    """The English -s suffix: plural of a regular noun, third person of a regular verb."""
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def needs_an(word: str) -> bool:
    """Whether ``word`` takes "an" rather than "a" (by its first letters, as the banks do)."""
    return _ARTICLE.match("a " + word) is not None


_WORDS: dict[str, tuple[str, ...]] = {
    "N": vocab.NOUNS,
    "P": tuple(_add_s(noun) for noun in vocab.NOUNS),
    "A": vocab.ADJECTIVES,
    "V": tuple(_add_s(verb) for verb in vocab.VERBS),
    "B": vocab.VERBS,
    "R": vocab.ADVERBS,
    "C": vocab.NUMBERS,
}


@dataclass(frozen=True, slots=True)
class _Skeleton:
    """A filled template whose topic slots are still open.

    ``pieces`` is the text around the slots (one more piece than slots); ``article[i]`` says
    piece ``i`` ends in "a ", which becomes "an " before a vowel-sound topic; ``capitalize``
    says the sentence starts with a topic word.
    """

    pieces: tuple[str, ...]
    article: tuple[bool, ...]
    capitalize: bool
    words: int


def _skeleton(template: str, rng: random.Random) -> _Skeleton:
    split = _SLOT.split(template)
    literals, slots = split[0::2], split[1::2]
    pieces: list[str] = []
    current = [literals[0]]
    for slot, literal in zip(slots, literals[1:], strict=True):
        if slot == _TOPIC:
            pieces.append("".join(current))
            current = []
        else:
            current.append(rng.choice(_WORDS[slot]))
        current.append(literal)
    pieces.append("".join(current))
    pieces = [_ARTICLE.sub(r"\1n ", piece) for piece in pieces]
    capitalize = pieces[0] == ""
    if not capitalize:
        pieces[0] = pieces[0][0].upper() + pieces[0][1:]
    return _Skeleton(
        pieces=tuple(pieces),
        article=tuple(_TRAILING_ARTICLE.search(p) is not None for p in pieces[:-1]),
        capitalize=capitalize,
        words=len(" X ".join(pieces).split()),
    )


def _bank(templates: Sequence[str], size: int, salt: int) -> tuple[_Skeleton, ...]:
    rng = random.Random(_BANK_SEED + salt)
    return tuple(_skeleton(templates[i % len(templates)], rng) for i in range(size))


@dataclass(frozen=True, slots=True)
class _Banks:
    sentences: tuple[_Skeleton, ...]
    openers: tuple[_Skeleton, ...]
    closers: tuple[_Skeleton, ...]
    bullets: tuple[_Skeleton, ...]
    list_intros: tuple[_Skeleton, ...]


@cache
def _banks() -> _Banks:
    """Built on first use (~0.3 s) rather than at import, so importing stays cheap."""
    return _Banks(
        sentences=_bank(vocab.SENTENCES, _SENTENCE_BANK, 1),
        openers=_bank(vocab.OPENERS, _SMALL_BANK, 2),
        closers=_bank(vocab.CLOSERS, _SMALL_BANK, 3),
        bullets=_bank(vocab.BULLETS, _SMALL_BANK, 4),
        list_intros=_bank(vocab.LIST_INTROS, _SMALL_BANK, 5),
    )


def warm_up() -> None:
    """Build the banks now instead of during the first request."""
    _banks()


def topic_words(prompt: str) -> list[str]:
    """Distinctive words of the prompt, in order of first use, to weave into the answer."""
    words = dict.fromkeys(_WORD.findall(prompt[:_TOPIC_SCAN_CHARS].lower()))
    return [w for w in words if w not in vocab.STOPWORDS][:_MAX_TOPICS]


def generate(key: bytes, prompt: str) -> str:
    """The answer for ``key`` (everything that identifies the request), about ``prompt``."""
    digest = hashlib.blake2b(key, digest_size=16).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    topics = topic_words(prompt) or rng.sample(vocab.NOUNS, 3)
    return _Writer(rng.random, topics, _banks()).write()


class _Writer:
    """Builds one answer; holds the random source and topics so helpers stay short."""

    def __init__(self, rand: Callable[[], float], topics: list[str], banks: _Banks) -> None:
        self.rand = rand
        self.topics = topics
        self.an = [needs_an(t) for t in topics]
        self.banks = banks
        self.words = 0

    def write(self) -> str:
        rand, banks = self.rand, self.banks
        # Cubic skew: median near 70 words, a long tail up to MAX_WORDS, like real chat answers.
        target = MIN_WORDS + int((MAX_WORDS - MIN_WORDS) * rand() ** 3)
        blocks: list[str] = []
        if rand() < 0.3:
            blocks.append(self.sentence(banks.openers))
        while self.words < target:
            if self.words > 40 and rand() < 0.15:
                blocks.append(self.bullet_list())
            else:
                blocks.append(self.paragraph(target))
        if rand() < 0.25:
            blocks.append(self.sentence(banks.closers))
        return "\n\n".join(blocks)

    def paragraph(self, target: int) -> str:
        sentences: list[str] = []
        for _ in range(2 + int(self.rand() * 5)):
            sentences.append(self.sentence(self.banks.sentences))
            if self.words >= target:
                break
        return " ".join(sentences)

    def bullet_list(self) -> str:
        rand, bullets = self.rand, self.banks.bullets
        lines = [self.sentence(self.banks.list_intros)]
        numbered = rand() < 0.5
        for i in range(3 + int(rand() * 3)):
            marker = f"{i + 1}." if numbered else "-"
            lines.append(f"{marker} {self.sentence(bullets)}")
        return "\n".join(lines)

    def sentence(self, bank: tuple[_Skeleton, ...]) -> str:
        rand = self.rand
        skeleton = bank[int(rand() * len(bank))]
        self.words += skeleton.words
        pieces = skeleton.pieces
        if len(pieces) == 1:
            return pieces[0]
        topics, an, count = self.topics, self.an, len(self.topics)
        parts: list[str] = []
        for piece, article in zip(pieces, skeleton.article, strict=False):
            index = int(rand() * count)
            parts.append(piece[:-1] + "n " if article and an[index] else piece)
            parts.append(topics[index])
        parts.append(pieces[-1])
        text = "".join(parts)
        return text[0].upper() + text[1:] if skeleton.capitalize else text
