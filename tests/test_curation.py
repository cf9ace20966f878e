"""Dedup keys and decisions: normal form, exact key, MinHash band keys, DuckDB dedup.

Band keys are persisted and compared across runs made months apart, so their exact values
are pinned here, and a slow pure-Python transcription of the specification in
``minhash.py``'s docstring must agree with the vectorised code on arbitrary text.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.generators.curation import dedup, minhash
from distillery.generators.curation.dedup import find_duplicates
from distillery.generators.curation.minhash import (
    DEFAULT_PARAMS,
    MinHashParams,
    band_keys,
    band_keys_from_signatures,
    dedup_keys,
    estimated_jaccard,
    shingle_hashes,
    shingle_jaccard,
    signatures,
)
from distillery.generators.curation.normalize import exact_key, normalize, words_ready
from distillery.generators.records import content_hash

# Text made mostly of the characters normalisation cares about.
TRICKY = st.lists(
    st.sampled_from(
        [
            *"ab Z\t\n\r\x0b\x0c\x1c\x1f",
            *("\u00a0", "\u2028", "\u3000", "\u0085", "ﬁ", "Ａ", "ß", "É", "e\u0301"),
            *("日本", "¨", "\u1680", "  "),
        ]
    ),
    max_size=40,
).map("".join)
_SPACE = re.compile(r"\s+")


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello\t\tworld \n", "Hello world"),
        ("line one\r\n\r\nline two", "line one line two"),
        ("non\u00a0breaking\u2003em\u3000ideographic", "non breaking em ideographic"),
        ("para\u2028sep\x1cfile\x85nel", "para sep file nel"),
        ("ﬁne Ｆｕｌｌ ① x²", "fine Full 1 x2"),
        ("e\u0301", "\u00e9"),  # NFKC composes
        ("", ""),
        (" \n\t ", ""),
    ],
)
def test_normalize_cases(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_casefold_is_optional() -> None:
    assert normalize("Straße  HELLO") == "Straße HELLO"
    assert normalize("Straße  HELLO", casefold=True) == "strasse hello"


@given(TRICKY)
def test_normalize_equals_the_regex_rule(text: str) -> None:
    expected = _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    assert normalize(text) == expected


@given(TRICKY)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text, casefold=True)
    assert normalize(once, casefold=True) == once


def test_whitespace_table_covers_every_code_point() -> None:
    # The fast path relies on no whitespace above U+3000 and on case folding neither making
    # nor removing whitespace; a future Unicode table that breaks either fails here.
    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
    assert max(spaces) == "\u3000"
    changed = [
        c for c in map(chr, range(sys.maxunicode + 1)) if any(x.isspace() for x in c.casefold())
    ]
    assert changed == spaces


@given(TRICKY)
def test_words_ready_has_the_words_of_the_normal_form(text: str) -> None:
    for casefold in (False, True):
        assert words_ready(text, casefold).split() == normalize(text, casefold).split()


@given(TRICKY)
def test_exact_key_equals_records_content_hash(text: str) -> None:
    assert exact_key(text) == content_hash(text)


def test_exact_key_is_blake2b_128_of_the_normal_form() -> None:
    expected = hashlib.blake2b(b"Hello world", digest_size=16).hexdigest()
    assert exact_key(" Hello\n\nworld ") == expected
    assert exact_key("Hello World") != exact_key("hello world")
    assert exact_key("Hello World", casefold=True) == exact_key("hello world", casefold=True)


# ---------------------------------------------------------------- MinHash: the specification

M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _word_hash(word: str) -> int:
    data = word.encode()
    h = len(data)
    for block in [data[i : i + 8] for i in range(0, len(data), 8)] or [b""]:
        h = _mix64(h ^ int.from_bytes(block.ljust(8, b"\0"), "little"))
    return h


def reference_keys(text: str, p: MinHashParams) -> tuple[list[int], list[int]]:
    """minhash.py's docstring, step by step, in plain Python."""
    words = normalize(text, p.casefold).split(" ")
    hashes = [_word_hash(w) for w in words]
    k = p.shingle_words
    windows = [hashes[i : i + k] for i in range(len(hashes) - k + 1)] if len(hashes) >= k else []
    shingles = []
    for window in windows or [hashes]:
        acc = 0
        for h in window:
            acc = (acc * 0x9E3779B97F4A7C15 + h) & M64
        shingles.append(_mix64(acc) >> 32)
    sig = []
    for i in range(p.num_perm):
        digest = hashlib.blake2b(f"distillery-minhash-v1:{p.seed}:{i}".encode(), digest_size=8)
        a = int.from_bytes(digest.digest()[:4], "little") | 1
        b = int.from_bytes(digest.digest()[4:], "little")
        sig.append(min((a * x + b) & 0xFFFFFFFF for x in shingles))
    label = (
        f"distillery-minhash-v1:r={p.rows_per_band}:w={k}:seed={p.seed}:casefold={int(p.casefold)}"
    )
    fingerprint = int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")
    keys = []
    for j in range(p.bands):
        acc = _mix64((fingerprint + j) & M64)
        for t in range(p.rows_per_band):
            acc = _mix64(acc ^ sig[j * p.rows_per_band + t])
        keys.append(acc)
    return sig, keys


SMALL = MinHashParams(num_perm=12, bands=3, rows_per_band=4, shingle_words=3, seed=42)
PINNED_TEXTS = [
    "The Quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun.",
    "Hi there",  # fewer words than a shingle: the whole text is one shingle
    "",
]


def test_band_keys_are_pinned() -> None:
    keys = band_keys(PINNED_TEXTS, SMALL)
    assert keys.dtype == np.uint64
    assert keys.shape == (3, 3)
    assert keys.tolist() == [
        [10278130297815131893, 9721234156364895714, 3674383385821657128],
        [3510381759937008013, 17886595924404183943, 5373167291897983008],
        [12111352914209934354, 4237195111309596415, 12094125145931540529],
    ]
    assert signatures(PINNED_TEXTS[:1], SMALL).tolist() == [
        [
            *(146141720, 75485757, 1088734027, 215191985, 132612088, 532847191),
            *(199964734, 61019477, 101645274, 81306513, 450301637, 36318898),
        ]
    ]


def test_default_params_and_their_keys_are_pinned() -> None:
    expected = MinHashParams(
        num_perm=50, bands=10, rows_per_band=5, shingle_words=5, seed=0, casefold=True
    )
    assert expected == DEFAULT_PARAMS
    assert band_keys(PINNED_TEXTS[:1]).tolist() == [
        [
            *(3429998157457341562, 12084685854547090043, 7159931070969065565),
            *(3578986156967681097, 15437920123649339717, 9161769905330577240),
            *(17906780131239288333, 7372121171117432667, 1720663541163974244),
            9575249658576134769,
        ]
    ]


def test_pinned_keys_follow_the_specification() -> None:
    keys = band_keys(PINNED_TEXTS, SMALL)
    sigs = signatures(PINNED_TEXTS, SMALL)
    for i, text in enumerate(PINNED_TEXTS):
        sig, expected = reference_keys(text, SMALL)
        assert sigs[i].tolist() == sig
        assert keys[i].tolist() == expected


WORDY = st.lists(
    st.sampled_from(["a", "bb", "Straße", "日本語", "exactly8", "ninechars", "x" * 23, "é", "\n"]),
    max_size=30,
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(WORDY | TRICKY, min_size=1, max_size=6))
def test_vectorised_keys_equal_the_specification(texts: list[str]) -> None:
    keys = band_keys(texts, SMALL)
    for i, text in enumerate(texts):
        assert keys[i].tolist() == reference_keys(text, SMALL)[1]


def test_keys_do_not_depend_on_batching_or_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [_prose(random.Random(i), 60) for i in range(40)] + ["", "one", "x" * 70_000]
    expected = band_keys(texts)
    monkeypatch.setattr(minhash, "_BATCH_BYTES", 500)
    monkeypatch.setattr(minhash, "_BLOCK_SHINGLES", 7)
    assert np.array_equal(band_keys(texts), expected)
    assert np.array_equal(band_keys(texts, threads=2), expected)
    hashes, offsets = shingle_hashes(texts)
    assert offsets[0] == 0 and offsets[-1] == len(hashes) and np.all(np.diff(offsets) >= 1)


def test_band_index_and_params_are_mixed_into_keys() -> None:
    keys = band_keys(["the same words in every band of this text, more or less"], SMALL)[0]
    assert len(set(keys.tolist())) == SMALL.bands
    other_seed = MinHashParams(num_perm=12, bands=3, rows_per_band=4, shingle_words=3, seed=43)
    assert set(band_keys(PINNED_TEXTS[:1], other_seed)[0].tolist()).isdisjoint(
        band_keys(PINNED_TEXTS[:1], SMALL)[0].tolist()
    )
    # More permutations or bands leave the existing bands' keys unchanged.
    wider = MinHashParams(num_perm=20, bands=5, rows_per_band=4, shingle_words=3, seed=42)
    assert band_keys(PINNED_TEXTS, wider)[:, :3].tolist() == band_keys(PINNED_TEXTS, SMALL).tolist()


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashParams(num_perm=10, bands=3, rows_per_band=4)
    with pytest.raises(ValueError, match="shingle_words"):
        MinHashParams(shingle_words=0)
    assert DEFAULT_PARAMS.describe() == (
        "distillery-minhash-v1:perm=50:b=10:r=5:w=5:seed=0:casefold=1"
    )


VOCAB = [f"w{i}x" for i in range(5000)]


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def _edit(rng: random.Random, text: str, substitutions: int, lo: int = 0, hi: int = -1) -> str:
    words = text.split(" ")
    hi = len(words) if hi < 0 else hi
    for at in rng.sample(range(lo, hi), substitutions):
        words[at] = rng.choice(VOCAB)
    return " ".join(words)


def test_near_duplicates_share_a_band_and_unrelated_texts_do_not() -> None:
    rng = random.Random(5)
    source = _prose(rng, 200)
    near = _edit(rng, source, 2)
    assert 0.85 <= shingle_jaccard(source, near) <= 0.95
    unrelated = [_prose(rng, 200) for _ in range(50)]
    keys = band_keys([source, near, *unrelated])
    shared = set(keys[0].tolist())
    assert shared & set(keys[1].tolist())
    for row in keys[2:]:
        assert not shared & set(row.tolist())
    sigs = signatures([source, near])
    assert abs(estimated_jaccard(sigs[0], sigs[1]) - shingle_jaccard(source, near)) < 0.2


def test_shingle_jaccard() -> None:
    assert shingle_jaccard("a b c d e f", "A  b c d e\nf") == 1.0  # normal form, case folded
    assert shingle_jaccard("a b c d e f", "A b c d e f", casefold=False) == pytest.approx(1 / 3)
    assert shingle_jaccard("a b c d e f g", "a b c d e f x") == pytest.approx(2 / 4)
    assert shingle_jaccard("hi", "hi") == 1.0 and shingle_jaccard("hi", "ho") == 0.0
    assert shingle_jaccard("a b c d", "a b c d e", shingle_words=2) == pytest.approx(3 / 4)


def test_estimated_jaccard_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        estimated_jaccard(np.zeros(3, np.uint32), np.zeros(4, np.uint32))


def test_dedup_keys_are_both_columns() -> None:
    texts = [*PINNED_TEXTS, "  Hello\n\nWorld  "]
    exact, keys = dedup_keys(texts, SMALL, threads=2)
    assert exact == [content_hash(t) for t in texts]
    assert np.array_equal(keys, band_keys(texts, SMALL))


def test_empty_input() -> None:
    assert band_keys([]).shape == (0, DEFAULT_PARAMS.bands)
    assert signatures([]).shape == (0, DEFAULT_PARAMS.num_perm)
    assert band_keys_from_signatures(signatures(["x"]), DEFAULT_PARAMS).shape == (1, 10)
    assert dedup_keys([])[0] == []


# ---------------------------------------------------------------- DuckDB decisions


def _table(rows: Sequence[tuple[str, int, bool, str | None]], *, bands: bool = True) -> pa.Table:
    texts = [text or "" for _, _, _, text in rows]
    keys = band_keys(texts)
    return pa.table(
        {
            "sample_id": [r[0] for r in rows],
            "rank": pa.array([r[1] for r in rows], pa.int64()),
            "is_new": [r[2] for r in rows],
            "content_hash": [exact_key(t) if t is not None else None for *_, t in rows],
            "bands": pa.array([k.tolist() if bands else None for k in keys], pa.list_(pa.uint64())),
            "response_text": [r[3] for r in rows],
        }
    )


def _decide(table: pa.Table, **kwargs: Any) -> dict[str, tuple[str, str]]:
    con = duckdb.connect()
    con.register("rows", table)
    result = find_duplicates(con, "rows", **kwargs)
    leftovers = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert leftovers == []  # scratch tables dropped
    return {d.sample_id: (d.reason, d.duplicate_of) for d in result.duplicates}


@pytest.mark.parametrize("verify_chunk", [20_000, 2])
def test_dedup_decisions(verify_chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_VERIFY_CHUNK", verify_chunk)
    rng = random.Random(11)
    a, b, c, d, e = (_prose(rng, 150) for _ in range(5))
    # A chain: c2 is near c1, c3 near c2 but not near c1.
    c1 = _prose(rng, 200)
    c2 = _edit(rng, c1, 3, 0, 100)
    c3 = _edit(rng, c2, 3, 100, 200)
    assert shingle_jaccard(c1, c2) >= 0.8 and shingle_jaccard(c2, c3) >= 0.8
    assert shingle_jaccard(c1, c3) < 0.8
    rows = [
        ("h-a", 1, False, a),
        ("h-a2", 2, False, a),  # history duplicates history: never rejected
        ("h-b", 3, False, b),
        ("n-a", 10, True, " " + a.upper().lower() + "\n"),  # exact dup of history (normal form)
        ("n-b", 11, True, _edit(rng, b, 2)),  # near dup of history
        ("n-c", 12, True, c),
        ("n-c-copy", 13, True, c),  # exact dup within the run
        ("n-c-near", 14, True, _edit(rng, c, 2)),  # near dup within the run
        ("n-d", 15, True, d),  # unique
        ("n-c3", 16, True, c3),  # newest of the chain, only near c2
        ("n-c2", 17, True, c2),
        ("n-c1", 5, True, c1),  # oldest of the chain (lowest rank) even if listed last
        ("n-c2-copy", 18, True, c2),  # exact copy of a row that is itself rejected
        ("n-e", 19, True, e),
        ("n-null", 20, True, None),  # no text: unique
    ]
    decisions = _decide(_table(rows))
    assert decisions == {
        "n-a": ("duplicate", "h-a"),
        "n-b": ("near_duplicate", "h-b"),
        "n-c-copy": ("duplicate", "n-c"),
        "n-c-near": ("near_duplicate", "n-c"),
        "n-c2": ("near_duplicate", "n-c1"),
        "n-c3": ("near_duplicate", "n-c1"),  # its only twin n-c2 was rejected
        "n-c2-copy": ("duplicate", "n-c1"),  # points at the kept representative
    }


def test_history_twin_wins_over_an_older_ranked_new_row() -> None:
    rng = random.Random(3)
    text = _prose(rng, 120)
    near = _edit(rng, text, 2)
    rows = [("h", 100, False, text), ("n1", 1, True, near), ("n2", 2, True, text)]
    assert _decide(_table(rows)) == {
        "n1": ("near_duplicate", "h"),
        "n2": ("duplicate", "h"),
    }


def test_rows_without_band_keys_only_get_exact_dedup() -> None:
    rng = random.Random(4)
    text = _prose(rng, 120)
    rows = [("a", 1, True, text), ("b", 2, True, _edit(rng, text, 2)), ("c", 3, True, text)]
    assert _decide(_table(rows, bands=False)) == {"c": ("duplicate", "a")}


def test_threshold_decides_near_duplicates() -> None:
    rng = random.Random(6)
    text = _prose(rng, 150)
    near = _edit(rng, text, 3)
    j = shingle_jaccard(text, near)
    assert 0.8 <= j < 0.95
    rows = [("a", 1, True, text), ("b", 2, True, near)]
    assert _decide(_table(rows), threshold=0.8) == {"b": ("near_duplicate", "a")}
    assert _decide(_table(rows), threshold=0.99) == {}
    with pytest.raises(ValueError, match="threshold"):
        _decide(_table(rows), threshold=0.0)


def test_keys_shared_by_many_rows_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(8)
    text = _prose(rng, 150)
    rows = [(f"r{i:02d}", i, True, _edit(rng, text, 1)) for i in range(12)]
    con = duckdb.connect()
    con.register("rows", _table(rows))
    result = find_duplicates(con, "rows", max_partners=3)
    assert result.stats.capped_keys > 0
    assert "compared only the oldest 3" in caplog.text
    # Every row still lands in r00's cluster through the partners it was compared with.
    assert {d.duplicate_of for d in result.duplicates} == {"r00"}
    assert len(result.duplicates) == 11
    table = result.to_arrow()
    assert table.column_names == ["sample_id", "reason", "duplicate_of"]
    assert table.num_rows == 11
