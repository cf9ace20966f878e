"""Decontamination: which texts share a long word n-gram with an evaluation set's items.

A released training set must not contain benchmark test items, or a model trained on it
scores well for the wrong reason. The test used here is the one GPT-3 made common (Brown et
al. 2020, appendix C): a training text is contaminated by an evaluation item when both contain
the same sequence of ``n`` words. GPT-3 chose ``n`` between 8 and 13 per dataset, from its
items' lengths; lm-evaluation-harness's decontamination uses 13 throughout, as does the default
here (``DEFAULT_NGRAM``, configurable). Llama 2 (Touvron et al. 2023, appendix A.6) measures
instead the share of an item's *tokens* covered by shared token n-grams of at least 10 tokens
and calls the item contaminated above a threshold; that answers "which evaluation items are
tainted", while a release needs "which training rows to leave out", for which any shared long
n-gram is the usual rule.

**Words.** Both sides are normalised the same way: Unicode NFKC, case folding, and words are
the maximal runs of letters and digits (``[^\\W_]`` in Python's Unicode-aware ``re``, i.e.
``str.isalnum()`` characters), so punctuation, spacing, line breaks and case never hide an
overlap: ``"Tom's 3 apples, (and)"`` is ``tom s 3 apples and``. Combining marks that Python
does not count as alphanumeric (some Indic vowel signs) split a word on both sides alike, so
they only make words shorter, never hide a match. Pure-ASCII texts, the common case, skip the
Python regular expression: a 256-entry table maps each byte in numpy.

**Short items.** An evaluation item with fewer than ``n`` words has no ``n``-gram. If it has
at least ``MIN_WORDS`` (8) words, its whole word sequence is its one gram, and a text
containing that sequence is flagged (8 is GPT-3's smallest ``n``: a shorter sequence, e.g.
"what is the capital of france", is common phrasing, not evidence of a leak). Items of fewer
words are read and counted in ``skipped`` but cannot flag anything.

**Hashing.** Every word is hashed to 64 bits (``minhash.word_hashes``: splitmix64 over the
word's UTF-8 blocks); a gram of ``m`` words is ``mix64`` of the Horner polynomial of its word
hashes, computed for every position of a batch at once with ``m`` shifted numpy views (texts
are separated, so no gram spans two). The evaluation side is one sorted ``uint64`` array of
distinct gram hashes plus, for each, a 64-bit mask of the evaluation sets it came from (so at
most 64 sets). A batch of texts is looked up with one sorted ``np.searchsorted``. A false
match needs two different word sequences with one 64-bit hash: with ``G`` evaluation grams
and ``Q`` looked-up grams the expected number of such accidents is about ``G·Q / 2^64``, for
10^7 × 10^9 about 0.0005: negligible. A missed match cannot happen (equal words, equal hashes).

**Memory** is the evaluation side, 16 bytes per distinct gram (100,000 items of 40-120 words:
6.8 million grams, 108 MB; about three times that while :meth:`Contamination.build` sorts),
plus one batch of texts: it does not grow with the rows looked up. Evaluation files are read
in batches: JSON Lines and CSV line by line (the prompt files' reader), Parquet a record batch
of the one column at a time. Speed and RSS measured:
``BENCHMARKS.md``, "Decontamination".
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from distillery.errors import UserInputError
from distillery.generators.curation.minhash import map_batches, mix64, utf8_buffer, word_hashes
from distillery.generators.prompts import records

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

DEFAULT_NGRAM = 13
#: An evaluation item shorter than ``n`` words is one gram only if it has at least this many.
MIN_WORDS = 8
#: The sets a gram came from are bits of a uint64.
MAX_SETS = 64
# What generators.prompts.records reads: .json is JSON Lines too (one object a line).
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")
PARQUET_SUFFIXES = (".parquet", ".pq")
_READ_ROWS = 8192  # evaluation items hashed per batch
_POLY = np.uint64(0x9E3779B97F4A7C15)
_NON_WORD = re.compile(r"[\W_]+")
# Byte -> byte for the ASCII part of the normal form: letters lower-cased, digits kept, every
# other ASCII byte a space. Bytes ≥ 0x80 (inside non-ASCII characters) are kept; texts that
# have any were already normalised in Python, where they are letters or digits.
_ASCII_MAP = np.arange(256, dtype=np.uint8)
_ASCII_MAP[[b for b in range(128) if not chr(b).isalnum()]] = ord(" ")
_ASCII_MAP[ord("A") : ord("Z") + 1] += 32
_ASCII_TABLE = _ASCII_MAP.tobytes()


@dataclass(frozen=True)
class EvalSet:
    """One evaluation file and the field of each item that holds its text."""

    name: str
    path: Path
    field: str


def parse_eval_set(spec: str) -> EvalSet:
    """``PATH:FIELD`` or ``NAME=PATH:FIELD`` (the name defaults to the file's stem).

    The field is what follows the last colon; the name is what precedes the first ``=`` when
    that part holds no path separator. The suffix decides the format (``RECORD_SUFFIXES``,
    ``PARQUET_SUFFIXES``: JSON Lines, CSV or Parquet); the file itself is only read by
    :meth:`Contamination.build`.
    """
    usage = "expected PATH:FIELD or NAME=PATH:FIELD, e.g. gsm8k=test.jsonl:question"
    location, colon, field_name = spec.rpartition(":")
    if not colon or not location or not field_name.strip():
        raise UserInputError(f"evaluation set {spec!r}: {usage}")
    name, equals, path_text = location.partition("=")
    if not equals or "/" in name or os.sep in name:
        name, path_text = "", location
    if not path_text:
        raise UserInputError(f"evaluation set {spec!r}: {usage}")
    path = Path(path_text)
    if not path.name.lower().endswith(RECORD_SUFFIXES + PARQUET_SUFFIXES):
        raise UserInputError(
            f"{path}: unknown evaluation set format {path.suffix or '(no suffix)'} "
            f"(use {', '.join(RECORD_SUFFIXES + PARQUET_SUFFIXES)})"
        )
    return EvalSet(name=name.strip() or path.stem, path=path, field=field_name.strip())


def _checked(where: str, es: EvalSet, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UserInputError(f"{where}: field {es.field!r} is {type(value).__name__}, not text")
    return value


def _record_texts(es: EvalSet) -> Iterator[list[str | None]]:
    """JSON Lines or CSV, through the prompt files' reader (its one-line ``file:line`` errors
    for bad JSON, bad UTF-8, a byte-order mark, an unreadable file)."""
    batch: list[str | None] = []
    for where, record in records(es.path, what="evaluation set"):
        if es.field not in record:
            raise UserInputError(f"{where}: no field {es.field!r} (evaluation set {es.name})")
        batch.append(_checked(where, es, record[es.field]))
        if len(batch) >= _READ_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _parquet_texts(es: EvalSet) -> Iterator[list[str | None]]:
    """Only the field's column, a record batch at a time. The file is opened by Python, whose
    error for a missing one is short ("No such file or directory"), unlike pyarrow's."""
    try:
        with es.path.open("rb") as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            if es.field not in schema.names:
                columns = ", ".join(schema.names)
                raise UserInputError(f"{es.path}: no column {es.field!r} (columns: {columns})")
            kind = schema.field(es.field).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise UserInputError(f"{es.path}: column {es.field!r} is {kind}, not text")
            for batch in parquet.iter_batches(batch_size=_READ_ROWS, columns=[es.field]):
                yield batch.column(0).to_pylist()
    except (OSError, pa.ArrowException) as exc:  # missing, not Parquet, a corrupt page
        raise UserInputError(f"{es.path}: cannot read evaluation set ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__


def read_eval_texts(es: EvalSet) -> Iterator[list[str | None]]:
    """The field's values, a batch at a time (``None`` where an item's field is null)."""
    if es.path.name.lower().endswith(PARQUET_SUFFIXES):
        return _parquet_texts(es)
    return _record_texts(es)


def _prepared(text: str) -> str:
    """The text with a space after it (no word runs into the next text's); non-ASCII texts
    normalised here, ASCII ones by ``_ASCII_MAP`` on the whole batch's bytes."""
    if text.isascii():
        return text + " "
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()) + " "


def _words(texts: Sequence[str]) -> tuple[U64, I64, I64]:
    """Word hashes of the texts' normal forms, flat; each text's first word index
    (``len(texts) + 1`` entries); each text's word count."""
    data, offsets = utf8_buffer([_prepared(text) for text in texts])
    data = np.frombuffer(data.tobytes().translate(_ASCII_TABLE), np.uint8)  # 10x numpy's take
    # The words are the runs of non-space bytes: +1 / -1 steps of "is a space" (padded with
    # a space at both ends) mark where each ends / starts.
    space = np.ones(len(data) + 2, np.int8)
    np.equal(data, ord(" "), out=space[1:-1].view(bool))
    step = np.diff(space)
    starts, ends = np.flatnonzero(step == -1), np.flatnonzero(step == 1)
    word_offsets = np.searchsorted(starts, offsets).astype(np.int64)
    return word_hashes(data, starts, ends), word_offsets, np.diff(word_offsets)


def _grams(
    words: tuple[U64, I64, I64], n: int, lengths: Sequence[int], whole_only: bool
) -> Iterator[tuple[int, U64, I64]]:
    """For each gram length ``m`` in ``lengths`` (all ≤ ``n``): ``m``, the hashes of the
    ``m``-word grams and the index of the text each belongs to; ``words`` is :func:`_words`.

    With ``whole_only`` (the evaluation side), a length below ``n`` yields only the whole word
    sequence of texts of exactly that many words; otherwise every window of every text.
    """
    hashes, word_offsets, counts = words
    total = len(hashes)
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), np.diff(word_offsets))
    text_end = word_offsets[1:][owner]
    acc = hashes.copy()
    wanted = set(lengths)
    for m in range(1, max(wanted, default=0) + 1):
        if m > 1:
            acc = acc[:-1]  # acc[i] becomes the Horner value of words i .. i + m - 1
            acc *= _POLY
            acc += hashes[m - 1 :]
        if m not in wanted or total < m:
            continue
        inside = np.arange(total - m + 1) + m <= text_end[: total - m + 1]
        if whole_only and m < n:
            inside &= counts[owner[: total - m + 1]] == m
        at = np.flatnonzero(inside)
        yield m, mix64(acc[at]), owner[at]


@dataclass
class Contamination:
    """The evaluation sets' grams, ready to look texts up in; make one with :meth:`build`."""

    n: int
    names: list[str]
    keys: U64  # sorted distinct gram hashes of all sets
    masks: U64  # per key, bit i set when names[i] holds it
    lengths: list[int]  # gram lengths to look texts up with: short items' lengths, and n
    counts: dict[str, int] = field(default_factory=dict)  # set name -> items read
    skipped: dict[str, int] = field(default_factory=dict)  # set name -> items too short to use
    threads: int = 2  # numpy and pyarrow release the GIL: 2 threads use 2 cores

    @classmethod
    def build(
        cls, sets: list[EvalSet], n: int = DEFAULT_NGRAM, *, threads: int = 2
    ) -> Contamination:
        """Read every set (streaming) and keep its distinct grams; a one-line
        :class:`UserInputError` for a bad file, field or value, or two sets of one name."""
        if n < 2:
            raise UserInputError(f"the n-gram size must be at least 2 words, got {n}")
        if len(sets) > MAX_SETS:
            raise UserInputError(f"at most {MAX_SETS} evaluation sets, got {len(sets)}")
        names = [es.name for es in sets]
        for name in names:
            if names.count(name) > 1:
                raise UserInputError(
                    f"two evaluation sets are named {name!r}: name them NAME=PATH:FIELD"
                )
        floor = min(MIN_WORDS, n)
        per_set: list[U64] = []
        counts: dict[str, int] = {}
        skipped: dict[str, int] = {}
        short: set[int] = set()
        for es in sets:
            parts: list[U64] = []
            counts[es.name] = skipped[es.name] = 0
            for values in read_eval_texts(es):
                words = _words([value or "" for value in values])
                counts[es.name] += len(values)
                skipped[es.name] += int((words[2] < floor).sum())
                for m, hashes, _ in _grams(words, n, range(floor, n + 1), whole_only=True):
                    if len(hashes):
                        parts.append(_distinct(hashes))
                        short.update([m] if m < n else [])
            per_set.append(_distinct(np.concatenate(parts)) if parts else np.zeros(0, np.uint64))
        keys, masks = _merge(per_set)
        pa.default_memory_pool().release_unused()  # the file reads' buffers: ~100 MB at 100k
        return cls(n, names, keys, masks, [*sorted(short), n], counts, skipped, threads)

    def matches(self, texts: Sequence[str]) -> list[list[str]]:
        """Per text, the names of the evaluation sets it shares a gram with (in set order)."""
        if not len(self.keys):
            return [[] for _ in texts]
        parts = map_batches(texts, self.threads, self._masks)
        masks = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        names_of: dict[int, list[str]] = {}
        out: list[list[str]] = []
        for mask in masks.tolist():
            if not mask:
                out.append([])
                continue
            if mask not in names_of:
                names_of[mask] = [name for i, name in enumerate(self.names) if mask >> i & 1]
            out.append(list(names_of[mask]))
        return out

    def _masks(self, texts: Sequence[str]) -> U64:
        """Per text, the OR of the set masks of its grams found among the keys.

        ``searchsorted`` with sorted queries walks the keys once (unsorted, each query is a
        fresh binary search through a key array larger than the cache: ~50x slower). The few
        gram values found are then looked up again, unsorted, in that small array, to learn
        which texts hold them.
        """
        result = np.zeros(len(texts), np.uint64)
        last = len(self.keys) - 1
        for _, hashes, owner in _grams(_words(texts), self.n, self.lengths, whole_only=False):
            ordered = np.sort(hashes)
            at = np.minimum(np.searchsorted(self.keys, ordered), last)
            found = _distinct(ordered[self.keys[at] == ordered])
            if not len(found):
                continue
            where = np.minimum(np.searchsorted(found, hashes), len(found) - 1)
            hit = np.flatnonzero(found[where] == hashes)
            key_at = np.searchsorted(self.keys, found)
            np.bitwise_or.at(result, owner[hit], self.masks[key_at[where[hit]]])
        return result


def _distinct(values: U64) -> U64:
    """The sorted distinct values (``np.unique`` of numpy 2 hashes instead, ~10x slower here)."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


def _merge(per_set: list[U64]) -> tuple[U64, U64]:
    """One sorted array of the distinct keys of all sets (each sorted and distinct already),
    and for each key the mask of the sets holding it; no argsort, whose index array would
    double the peak memory."""
    keys = _distinct(np.concatenate([np.zeros(0, np.uint64), *per_set]))
    masks = np.zeros(len(keys), np.uint64)
    for i, set_keys in enumerate(per_set):
        masks[np.searchsorted(keys, set_keys)] |= np.uint64(1) << np.uint64(i)
    return keys, masks
