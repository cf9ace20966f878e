"""MinHash signatures and LSH band keys over word shingles, vectorised with numpy.

Why our own implementation: band keys are persisted in Parquet and compared with keys written
months earlier, so they must be a pure function of (text, parameters) that no library upgrade
can change. datasketch and rensa derive their permutations from library-internal random number
generators and hash functions, which are free to change between releases; here every step is
specified below and uses only standard, fixed functions (blake2b, splitmix64, 64-bit polynomials,
32-bit affine maps). Speed comes from doing each step for a whole batch of texts at once in numpy
(``BENCHMARKS.md``, "Near-duplicate quality").

The key of a text, version ``v1`` (all arithmetic on unsigned integers modulo 2^64 or 2^32):

1. ``normalize(text, casefold=params.casefold)`` (:mod:`.normalize`), then
   ``words = normal.split(" ")`` (an empty text is one empty word).
2. ``word_hash(w)``: split ``utf8(w)`` into 8-byte blocks read little-endian (the last one
   zero-padded; an empty word is one zero block); ``h = len(utf8(w))``, then for each block
   ``h = mix64(h ^ block)``. ``mix64`` is the splitmix64 finaliser (``z ^= z >> 30;
   z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31``).
3. Shingles are the windows of ``k = shingle_words`` consecutive words; a text with fewer than
   ``k`` words is a single shingle of all its words. ``shingle_hash(w_1..w_m) =
   mix64(Σ word_hash(w_t) · M^(m-t))`` with ``M = 0x9e3779b97f4a7c15`` (Horner's rule).
4. ``x = shingle_hash >> 32`` (32 bits). Permutation ``i`` is ``h_i(x) = (a_i · x + b_i) mod
   2^32``, where ``blake2b("distillery-minhash-v1:{seed}:{i}", digest_size=8)`` gives ``a_i``
   (its first 4 bytes, little-endian, with the low bit set, so ``h_i`` is a bijection) and
   ``b_i`` (the last 4 bytes). ``signature[i] = min over shingles of h_i(x)``.
5. Band ``j`` uses signature values ``j·r … j·r + r − 1`` (``r = rows_per_band``):
   ``acc = mix64(fingerprint + j)``, then for each of its values ``v``: ``acc = mix64(acc ^ v)``;
   the band key is ``acc``. ``fingerprint`` is the first 8 bytes (little-endian) of
   ``blake2b("distillery-minhash-v1:r={r}:w={k}:seed={seed}:casefold={0|1}", digest_size=8)``.

Mixing the band index into the key means keys of different bands never meet in a join (up to a
2^-64 accident), so one flat ``unnest`` of all keys is a correct candidate search. Mixing the
parameters in means rows written with other shingle sizes or seeds simply never match, rather
than matching wrongly. ``num_perm`` and ``bands`` are not in the fingerprint: band ``j``'s key
does not depend on them, so adding bands later keeps the old keys comparable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from distillery.generators.curation.normalize import exact_key, normalize, words_ready

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]

ALGORITHM = "distillery-minhash-v1"
# _BYTE_MASKS[k] keeps the low k bytes of a little-endian block (k = 0 … 8).
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
_POLY = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
# Texts are processed in batches of about this many characters: big enough that numpy's
# per-call overhead vanishes, small enough that the per-byte temporaries stay a few MB.
_BATCH_BYTES = 4 << 20
# Shingles per MinHash block: the block (uint32) stays in L2 cache across all permutations.
_BLOCK_SHINGLES = 65_536
_R = TypeVar("_R")
# Below this many words still going, the rest of a word is hashed in plain Python: one long
# token would otherwise cost a round of numpy calls per 8 bytes.
_PYTHON_TAIL = 16


@dataclass(frozen=True)
class MinHashParams:
    """What a band key depends on; the defaults were chosen by ``bench/dedup_quality.py``.

    ``bands × rows_per_band`` signature values feed the LSH bands (any further permutations
    only sharpen :func:`estimated_jaccard`). With 10 bands of 5 rows a pair of Jaccard ``J``
    shares a band with probability ``1 - (1 - J^5)^10``: 0.98 at J = 0.8, 0.27 at 0.5,
    0.003 at 0.2. Measured on planted pairs: recall 0.994 for J in [0.8, 0.85) and 0.998 for
    all J ≥ 0.8; 8 × 5 was cheaper but dropped to 0.977 at the low edge, and more rows per
    band need more permutations for the same recall (permutations are most of the cost).
    Candidates are then verified exactly (:mod:`.dedup`), so the bands only have to catch
    true pairs; they never decide on their own. Five-word shingles (as datatrove and
    text-dedup use) keep unrelated answers, which share short phrases, far apart.
    """

    num_perm: int = 50
    bands: int = 10
    rows_per_band: int = 5
    shingle_words: int = 5
    seed: int = 0
    casefold: bool = True

    def __post_init__(self) -> None:
        for name in ("num_perm", "bands", "rows_per_band", "shingle_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"MinHashParams.{name} must be at least 1")
        if self.bands * self.rows_per_band > self.num_perm:
            raise ValueError(
                f"MinHashParams: bands × rows_per_band ({self.bands} × {self.rows_per_band}) "
                f"exceeds num_perm ({self.num_perm})"
            )
        if not 0 <= self.seed < 2**63:
            raise ValueError("MinHashParams.seed must be in [0, 2^63)")

    @property
    def fingerprint(self) -> int:
        """The 64-bit value mixed into every band key (step 5 of the module docstring)."""
        return _fingerprint(self.rows_per_band, self.shingle_words, self.seed, self.casefold)

    def describe(self) -> str:
        """A stable one-line label to store beside the keys (e.g. in a run's metadata)."""
        return (
            f"{ALGORITHM}:perm={self.num_perm}:b={self.bands}:r={self.rows_per_band}"
            f":w={self.shingle_words}:seed={self.seed}:casefold={int(self.casefold)}"
        )


DEFAULT_PARAMS = MinHashParams()


@cache
def _fingerprint(rows: int, shingle_words: int, seed: int, casefold: bool) -> int:
    label = f"{ALGORITHM}:r={rows}:w={shingle_words}:seed={seed}:casefold={int(casefold)}"
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")


@cache
def _permutations(seed: int, num_perm: int) -> tuple[U32, U32]:
    a = np.empty(num_perm, np.uint32)
    b = np.empty(num_perm, np.uint32)
    for i in range(num_perm):
        digest = hashlib.blake2b(f"{ALGORITHM}:{seed}:{i}".encode(), digest_size=8).digest()
        a[i] = int.from_bytes(digest[:4], "little") | 1
        b[i] = int.from_bytes(digest[4:], "little")
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def _mix64(z: U64) -> U64:
    """splitmix64's finaliser, in place on a fresh array (callers pass temporaries)."""
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return z


#: splitmix64's finaliser under a public name, for other modules that hash word sequences.
mix64 = _mix64


def _utf8_batch(texts: Sequence[str], casefold: bool) -> tuple[npt.NDArray[np.uint8], I64]:
    """Step 1 for a batch: one UTF-8 buffer plus ``len(texts) + 1`` byte offsets.

    The texts are only :func:`.normalize.words_ready` (NFKC, case folding): the word spans
    below skip runs of whitespace, which gives the words of the normal form without the
    cost of collapsing whitespace in Python.
    """
    return utf8_buffer([words_ready(t, casefold) for t in texts])


def utf8_buffer(texts: list[str]) -> tuple[npt.NDArray[np.uint8], I64]:
    """The texts' UTF-8 bytes in one read-only buffer plus ``len(texts) + 1`` byte offsets
    (pyarrow copies them in C, far faster than joining and encoding in Python)."""
    array = pa.array(texts, type=pa.large_string())
    _, offsets_buffer, data_buffer = array.buffers()
    assert offsets_buffer is not None, "a large_string array always has offsets"
    offsets = np.frombuffer(memoryview(offsets_buffer), dtype=np.int64)[: len(texts) + 1].copy()
    if data_buffer is None or int(offsets[-1]) == 0:
        return np.zeros(1, np.uint8), offsets
    return np.frombuffer(memoryview(data_buffer), dtype=np.uint8), offsets


def _word_spans(data: npt.NDArray[np.uint8], offsets: I64) -> tuple[I64, I64, I64]:
    """Start and end byte of every word, and each text's first word index (n + 1 entries).

    A word is a maximal run of bytes that are not ASCII whitespace (UTF-8 never uses those
    bytes inside another character); a text with no word has one empty word.
    """
    end = int(offsets[-1])
    text = data[:end]
    space = (text == 0x20) | ((text >= 0x09) & (text <= 0x0D)) | ((text >= 0x1C) & (text <= 0x1F))
    firsts = offsets[:-1][offsets[:-1] < offsets[1:]]
    lasts = offsets[1:][offsets[:-1] < offsets[1:]] - 1
    before = np.empty(end, dtype=bool)  # "the byte before is a space or another text"
    if end:
        before[0] = True
        before[1:] = space[:-1]
        before[firsts] = True
    after = np.empty(end, dtype=bool)
    if end:
        after[-1] = True
        after[:-1] = space[1:]
        after[lasts] = True
    starts = np.flatnonzero(~space & before)
    ends = np.flatnonzero(~space & after) + 1
    counts = np.diff(np.searchsorted(starts, offsets))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        at = np.searchsorted(starts, offsets[empty])
        starts = np.insert(starts, at, offsets[empty])
        ends = np.insert(ends, at, offsets[empty])
        counts[empty] = 1
    word_offsets = np.zeros(len(offsets), np.int64)
    np.cumsum(counts, out=word_offsets[1:])
    return starts.astype(np.int64), ends.astype(np.int64), word_offsets


def word_hashes(data: npt.NDArray[np.uint8], starts: I64, ends: I64) -> U64:
    """Step 2 for words given by their start and end bytes in one UTF-8 buffer. Public for
    :mod:`storage.release.decontam`, which finds its words in its own normal form."""
    return _word_hashes(data, starts, ends)


def _word_hashes(data: npt.NDArray[np.uint8], starts: I64, ends: I64) -> U64:
    """Step 2 for every word at once: block ``c`` of all words that have one, per iteration.

    ``blocks[p]`` is an (unaligned) view of the 8 bytes starting at byte ``p``, so one gather
    reads a whole block; bytes past the word's end are masked off.
    """
    lengths = ends - starts
    padded = np.zeros(len(data) + 8, np.uint8)
    padded[: len(data)] = data
    blocks = np.ndarray(shape=(len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    # Block 0, which every word has (an empty word has one all-zero block).
    h = lengths.astype(np.uint64)
    h ^= blocks[starts] & _BYTE_MASKS[np.minimum(lengths, 8)]
    h = _mix64(h)
    c = 1
    active = np.flatnonzero(lengths > 8 * c)
    while len(active) > _PYTHON_TAIL:
        value = blocks[starts[active] + 8 * c]
        value &= _BYTE_MASKS[np.minimum(lengths[active] - 8 * c, 8)]
        value ^= h[active]
        h[active] = _mix64(value)
        c += 1
        active = active[lengths[active] > 8 * c]
    for word in active.tolist():  # a few very long tokens (URLs, base64): finish in Python
        h[word] = _finish_word(int(h[word]), data[starts[word] + 8 * c : ends[word]].tobytes())
    return h


def _finish_word(h: int, rest: bytes) -> int:
    """Step 2 for the remaining blocks of one word, with Python integers."""
    mask = 0xFFFFFFFFFFFFFFFF
    for i in range(0, len(rest), 8):
        z = h ^ int.from_bytes(rest[i : i + 8], "little")
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        h = z ^ (z >> 31)
    return h


def _shingles_of_batch(data: npt.NDArray[np.uint8], offsets: I64, k: int) -> tuple[U64, I64]:
    """Steps 1-3 for a batch: flat shingle hashes and each text's first shingle index.

    Full windows are computed for every word position at once with slices of the flat word
    array (Horner over ``k`` shifted views), then the positions whose window stays inside its
    text are kept; texts shorter than ``k`` words take the slower gather path.
    """
    starts, ends, word_offsets = _word_spans(data, offsets)
    word_hashes = _word_hashes(data, starts, ends)
    total_words = len(word_hashes)
    words_per_text = np.diff(word_offsets)
    per_text = np.maximum(words_per_text - (k - 1), 1)
    shingle_offsets = np.zeros(len(per_text) + 1, np.int64)
    np.cumsum(per_text, out=shingle_offsets[1:])
    total = int(shingle_offsets[-1])
    first_word = np.arange(total, dtype=np.int64)
    first_word += np.repeat(word_offsets[:-1] - shingle_offsets[:-1], per_text)
    long_enough = words_per_text >= k
    windows = np.zeros(0, np.uint64)
    if total_words >= k:
        windows = word_hashes[: total_words - k + 1].copy()
        for t in range(1, k):
            windows *= _POLY
            windows += word_hashes[t : total_words - k + 1 + t]
    if long_enough.all():
        hashes = windows[first_word]
    else:
        full = np.repeat(long_enough, per_text)
        hashes = np.empty(total, np.uint64)
        hashes[full] = windows[first_word[full]]
        short = np.flatnonzero(~full)  # a short text has exactly one shingle
        size = words_per_text[~long_enough]
        acc = np.zeros(len(short), np.uint64)
        for t in range(k - 1):
            step = acc * _POLY + word_hashes[np.minimum(first_word[short] + t, total_words - 1)]
            acc = np.where(t < size, step, acc)
        hashes[short] = acc
    return _mix64(hashes), shingle_offsets


def _signatures_of_shingles(hashes: U64, shingle_offsets: I64, params: MinHashParams) -> U32:
    a, b = _permutations(params.seed, params.num_perm)
    n = len(shingle_offsets) - 1
    x = (hashes >> _S32).astype(np.uint32)
    out = np.empty((n, params.num_perm), np.uint32)
    buffer = np.empty(max(_BLOCK_SHINGLES, 1), np.uint32)
    first = 0
    while first < n:
        # At least one text per block; a block ends once it holds _BLOCK_SHINGLES shingles.
        stop_at = int(shingle_offsets[first]) + _BLOCK_SHINGLES
        last = max(int(np.searchsorted(shingle_offsets, stop_at, side="right")) - 1, first + 1)
        last = min(last, n)
        lo, hi = int(shingle_offsets[first]), int(shingle_offsets[last])
        xs = x[lo:hi]
        if hi - lo > len(buffer):
            buffer = np.empty(hi - lo, np.uint32)
        work = buffer[: hi - lo]
        segments = shingle_offsets[first:last] - lo
        block = np.empty((params.num_perm, last - first), np.uint32)
        for i in range(params.num_perm):
            np.multiply(xs, a[i], out=work)
            np.add(work, b[i], out=work)
            np.minimum.reduceat(work, segments, out=block[i])
        out[first:last] = block.T
        first = last
    return out


def _batches(texts: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """Spans of about ``_BATCH_BYTES`` characters, and at least ``parts`` spans if possible."""
    total = sum(len(text) for text in texts)
    target = max(min(_BATCH_BYTES, total // max(parts, 1)), 1)
    spans: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= target:
            spans.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(texts) or not spans:
        spans.append((start, len(texts)))
    return spans


def map_batches(texts: Sequence[str], threads: int, fn: Callable[[Sequence[str]], _R]) -> list[_R]:
    """``fn`` over batches of ``texts`` in order; numpy and pyarrow release the GIL, so
    ``threads=2`` uses both cores for everything but the Python normalisation."""
    spans = _batches(texts, threads)
    if threads <= 1 or len(spans) == 1:
        return [fn(texts[lo:hi]) for lo, hi in spans]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda span: fn(texts[span[0] : span[1]]), spans))


def shingle_hashes(texts: Sequence[str], params: MinHashParams = DEFAULT_PARAMS) -> tuple[U64, I64]:
    """Every text's 64-bit shingle hashes (steps 1-3), flat, with ``len(texts) + 1`` offsets.

    Text ``i`` owns ``hashes[offsets[i]:offsets[i + 1]]`` (at least one; repeats kept). Exact
    shingle Jaccard on these sets is what :mod:`.dedup` verifies candidates with.
    """

    def one(batch: Sequence[str]) -> tuple[U64, I64]:
        data, offsets = _utf8_batch(batch, params.casefold)
        return _shingles_of_batch(data, offsets, params.shingle_words)

    parts = map_batches(texts, 1, one)
    if len(parts) == 1:
        return parts[0]
    hashes = np.concatenate([h for h, _ in parts])
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for h, o in parts:
        offsets.append(o[1:] + base)
        base += len(h)
    return hashes, np.concatenate(offsets)


def signatures(
    texts: Sequence[str], params: MinHashParams = DEFAULT_PARAMS, *, threads: int = 1
) -> U32:
    """MinHash signatures, shape ``(len(texts), params.num_perm)``, dtype uint32 (step 4)."""

    def one(batch: Sequence[str]) -> U32:
        data, offsets = _utf8_batch(batch, params.casefold)
        hashes, shingle_offsets = _shingles_of_batch(data, offsets, params.shingle_words)
        return _signatures_of_shingles(hashes, shingle_offsets, params)

    if not texts:
        return np.empty((0, params.num_perm), np.uint32)
    return np.concatenate(map_batches(texts, threads, one))


def band_keys_from_signatures(sigs: U32, params: MinHashParams = DEFAULT_PARAMS) -> U64:
    """LSH band keys, shape ``(n, params.bands)``, dtype uint64 (step 5)."""
    n, r = sigs.shape[0], params.rows_per_band
    if sigs.shape[1] < params.bands * r:
        raise ValueError(f"signatures have {sigs.shape[1]} values, bands need {params.bands * r}")
    rows = sigs[:, : params.bands * r].reshape(n, params.bands, r).astype(np.uint64)
    seeds = np.uint64(params.fingerprint) + np.arange(params.bands, dtype=np.uint64)
    acc = np.repeat(_mix64(seeds)[None, :], n, axis=0)
    for t in range(r):
        acc = _mix64(acc ^ rows[:, :, t])
    return acc


def band_keys(
    texts: Sequence[str], params: MinHashParams = DEFAULT_PARAMS, *, threads: int = 1
) -> U64:
    """LSH band keys of many texts, shape ``(len(texts), params.bands)``, dtype uint64.

    The value to persist (as a ``list<uint64>`` column): a pure function of the normalised
    text and ``params``, specified in this module's docstring and pinned by tests.
    """

    def one(batch: Sequence[str]) -> U64:
        data, offsets = _utf8_batch(batch, params.casefold)
        return _keys_of_bytes(data, offsets, params)

    if not texts:
        return np.empty((0, params.bands), np.uint64)
    return np.concatenate(map_batches(texts, threads, one))


def _keys_of_bytes(data: npt.NDArray[np.uint8], offsets: I64, params: MinHashParams) -> U64:
    hashes, shingle_offsets = _shingles_of_batch(data, offsets, params.shingle_words)
    return band_keys_from_signatures(
        _signatures_of_shingles(hashes, shingle_offsets, params), params
    )


def estimated_jaccard(sig_a: U32, sig_b: U32) -> float:
    """Share of equal signature values: an unbiased estimate of the shingle Jaccard."""
    if sig_a.shape != sig_b.shape or sig_a.ndim != 1:
        raise ValueError("estimated_jaccard takes two signatures of equal length")
    return float(np.count_nonzero(sig_a == sig_b)) / len(sig_a)


def _shingle_set(text: str, shingle_words: int, casefold: bool) -> set[tuple[str, ...]]:
    words = normalize(text, casefold).split(" ")
    if len(words) < shingle_words:
        return {tuple(words)}
    return {tuple(words[i : i + shingle_words]) for i in range(len(words) - shingle_words + 1)}


def shingle_jaccard(
    a: str,
    b: str,
    shingle_words: int = DEFAULT_PARAMS.shingle_words,
    *,
    casefold: bool = DEFAULT_PARAMS.casefold,
) -> float:
    """Exact Jaccard of two texts' word-shingle sets (same shingles as the signatures)."""
    sa = _shingle_set(a, shingle_words, casefold)
    sb = _shingle_set(b, shingle_words, casefold)
    return len(sa & sb) / len(sa | sb)


def dedup_keys(
    texts: Sequence[str], params: MinHashParams = DEFAULT_PARAMS, *, threads: int = 1
) -> tuple[list[str], U64]:
    """Both dedup columns of a batch: exact keys (``content_hash``) and band keys.

    The exact key is :func:`.normalize.exact_key` (``casefold=False``), what a writer stores
    as ``content_hash``; one call gives the writer both columns.
    """
    exact = [exact_key(text) for text in texts]
    return exact, band_keys(texts, params, threads=threads)
