"""Decontamination (storage/release/decontam.py): real JSONL and Parquet files, real hashing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.errors import UserInputError
from distillery.storage.release.decontam import (
    DEFAULT_NGRAM,
    MIN_WORDS,
    Contamination,
    EvalSet,
    parse_eval_set,
)

WORDS = [f"{stem}{i}" for i, stem in enumerate(["alpha", "bravo", "carrot", "delta"] * 40)]
GSM = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?"
)
MMLU = (
    "Which of the following statements about the mitochondrial electron transport chain is "
    "correct when oxygen is absent from the cell for a long period of time?"
)


def write_jsonl(path: Path, field: str, values: list[object]) -> Path:
    path.write_text("".join(json.dumps({field: v, "id": i}) + "\n" for i, v in enumerate(values)))
    return path


def write_parquet(path: Path, field: str, values: list[str | None], row_group: int = 2) -> Path:
    pq.write_table(pa.table({field: values}), path, row_group_size=row_group)
    return path


def one_set(tmp_path: Path, values: list[object], n: int = DEFAULT_NGRAM) -> Contamination:
    path = write_jsonl(tmp_path / "eval.jsonl", "question", values)
    return Contamination.build([EvalSet("eval", path, "question")], n=n)


def test_default_is_thirteen_words() -> None:
    assert DEFAULT_NGRAM == 13


def test_an_exact_overlap_is_found_and_an_unrelated_text_is_not(tmp_path: Path) -> None:
    contamination = one_set(tmp_path, [GSM, MMLU])
    texts = [f"Here is a puzzle. {GSM} Answer: 72.", "A recipe for bread with flour and salt."]
    assert contamination.matches(texts) == [["eval"], []]
    assert contamination.counts == {"eval": 2}


def test_punctuation_case_spacing_and_unicode_do_not_hide_an_overlap(tmp_path: Path) -> None:
    contamination = one_set(
        tmp_path, [GSM, "Ｃafé naïve coöperation résumé déjà vu über straße ôté"]
    )
    rewritten = (
        "NATALIA   sold clips to 48 of her friends -- in April; and then\n\nshe sold HALF "
        "as many (clips) in May!!!"
    )
    accents = "CAFÉ, naïve — coöperation: RÉSUMÉ déjà-vu ÜBER straße ôté"
    assert contamination.matches([rewritten, accents, "Natalia sold clips."]) == [
        ["eval"],
        ["eval"],
        [],
    ]


def test_a_twelve_word_overlap_needs_n_of_twelve(tmp_path: Path) -> None:
    item = " ".join(WORDS[:30])
    shared = " ".join(WORDS[5:17])  # exactly 12 consecutive words of the item
    text = f"unrelated words first {shared} then something else entirely"
    assert one_set(tmp_path, [item], n=13).matches([text]) == [[]]
    assert one_set(tmp_path, [item], n=12).matches([text]) == [["eval"]]
    thirteen = " ".join(WORDS[5:18])
    assert one_set(tmp_path, [item], n=13).matches([f"x {thirteen} y"]) == [["eval"]]


def test_a_gram_never_spans_two_texts(tmp_path: Path) -> None:
    item = " ".join(WORDS[:13])
    contamination = one_set(tmp_path, [item])
    halves = [" ".join(WORDS[:7]), " ".join(WORDS[7:13])]
    assert contamination.matches(halves) == [[], []]


def test_short_items_are_one_gram_from_eight_words(tmp_path: Path) -> None:
    ten, five = " ".join(WORDS[40:50]), " ".join(WORDS[60:65])
    contamination = one_set(tmp_path, [ten, five, "", None])
    assert contamination.counts == {"eval": 4}
    assert contamination.skipped == {"eval": 3}  # five words, empty, null
    assert contamination.lengths == [10, 13]
    texts = [f"prefix {ten} suffix", f"prefix {five} suffix", " ".join(WORDS[40:49])]
    assert contamination.matches(texts) == [["eval"], [], []]
    assert MIN_WORDS == 8
    eight = " ".join(WORDS[70:78])
    assert one_set(tmp_path, [eight]).matches([f"so {eight}!"]) == [["eval"]]


def test_several_named_sets_are_reported_in_order(tmp_path: Path) -> None:
    gsm = write_jsonl(tmp_path / "gsm8k.jsonl", "question", [GSM])
    mmlu = write_parquet(tmp_path / "mmlu.parquet", "prompt", [MMLU, GSM, None])
    sets = [parse_eval_set(f"{gsm}:question"), parse_eval_set(f"mmlu={mmlu}:prompt")]
    assert [s.name for s in sets] == ["gsm8k", "mmlu"]
    contamination = Contamination.build(sets)
    texts = [MMLU, GSM, f"{MMLU} {GSM}", "nothing here"]
    assert contamination.matches(texts) == [["mmlu"], ["gsm8k", "mmlu"], ["gsm8k", "mmlu"], []]
    assert contamination.counts == {"gsm8k": 1, "mmlu": 3}


def test_jsonl_parquet_and_csv_give_the_same_answers(tmp_path: Path) -> None:
    items = [" ".join(WORDS[i : i + 20]) for i in range(0, 140, 20)]
    texts = [f"see {item[:-3]} and more" for item in items] + ["plain text"]
    as_jsonl = write_jsonl(tmp_path / "e.json", "text", list(items))
    as_parquet = write_parquet(tmp_path / "e.parquet", "text", list(items), row_group=3)
    assert pq.ParquetFile(as_parquet).num_row_groups == 3
    as_csv = tmp_path / "e.csv"
    as_csv.write_text("id,text\n" + "".join(f'{i},"{item}"\n' for i, item in enumerate(items)))
    built = [Contamination.build([EvalSet("e", p, "text")]) for p in (as_jsonl, as_parquet, as_csv)]
    for contamination in built:
        assert contamination.matches(texts) == [["e"]] * 7 + [[]]
        assert contamination.counts == {"e": 7}
        assert (contamination.keys == built[0].keys).all()


def test_a_jsonl_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_text("\ufeff" + json.dumps({"question": GSM}) + "\n", encoding="utf-8")
    assert Contamination.build([EvalSet("bom", path, "question")]).matches([GSM]) == [["bom"]]


def test_two_threads_keep_each_text_its_own_answer(tmp_path: Path) -> None:
    contamination = one_set(tmp_path, [GSM])
    texts = [f"row {i}: " + (GSM if i % 7 == 3 else "clips in May " * 20) for i in range(300)]
    contamination.threads = 2
    two = contamination.matches(texts)
    contamination.threads = 1
    assert two == contamination.matches(texts)
    assert [i for i, names in enumerate(two) if names] == list(range(3, 300, 7))


def test_no_evaluation_items_match_nothing(tmp_path: Path) -> None:
    contamination = one_set(tmp_path, [])
    assert contamination.matches([GSM, ""]) == [[], []]
    assert contamination.matches([]) == []


@pytest.mark.parametrize(
    ("spec", "name", "path", "field"),
    [
        ("data/gsm8k_test.jsonl:question", "gsm8k_test", "data/gsm8k_test.jsonl", "question"),
        ("gsm=data/test.parquet:prompt", "gsm", "data/test.parquet", "prompt"),
        ("data/a=b.ndjson:text", "a=b", "data/a=b.ndjson", "text"),
        ("arc=arc.csv:question", "arc", "arc.csv", "question"),
    ],
)
def test_parse_eval_set(spec: str, name: str, path: str, field: str) -> None:
    assert parse_eval_set(spec) == EvalSet(name, Path(path), field)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("data/test.jsonl", "evaluation set 'data/test.jsonl': expected PATH:FIELD"),
        ("data/test.jsonl:", "evaluation set 'data/test.jsonl:': expected PATH:FIELD"),
        ("name=:question", "evaluation set 'name=:question': expected PATH:FIELD"),
        ("data/test.txt:question", "data/test.txt: unknown evaluation set format .txt (use .jsonl"),
    ],
)
def test_parse_eval_set_rejects_bad_specs(spec: str, expected: str) -> None:
    with pytest.raises(UserInputError, match="^" + re.escape(expected)) as caught:
        parse_eval_set(spec)
    assert "\n" not in str(caught.value)


def bad_jsonl(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"question": "ok"}\n{"other": "x"}\n', "2: no field 'question' (evaluation set bad)"),
        ('{"question": "ok"}\n\n{"question": 3}\n', "3: field 'question' is int, not text"),
        ('{"question": "ok"}\n{"question": \n', "2: not valid JSON (Expecting value)"),
        ('["question"]\n', "1: expected a JSON object per line"),
    ],
)
def test_bad_jsonl_gives_one_line_naming_file_line_and_field(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = bad_jsonl(tmp_path, content)
    with pytest.raises(UserInputError) as caught:
        Contamination.build([EvalSet("bad", path, "question")])
    assert str(caught.value) == f"{path}:{expected}"


def test_unreadable_files_give_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text('{"question": "hello"}\n')
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "caf\u00e9"}\n'.encode("latin-1"))
    absent = tmp_path / "none.jsonl"
    numbers = write_parquet(tmp_path / "numbers.parquet", "question", [])
    pq.write_table(pa.table({"question": [1, 2]}), numbers)
    cases = [
        (EvalSet("a", missing, "question"), f"{missing}: cannot read evaluation set (No such"),
        (EvalSet("b", absent, "q"), f"{absent}: cannot read evaluation set (No such file"),
        (EvalSet("c", not_parquet, "question"), f"{not_parquet}: cannot read evaluation set ("),
        (EvalSet("d", latin1, "question"), f"{latin1}:1: not valid UTF-8 (byte 0xe9"),
        (EvalSet("e", numbers, "question"), f"{numbers}: column 'question' is int64, not text"),
        (EvalSet("f", numbers, "prompt"), f"{numbers}: no column 'prompt' (columns: question)"),
    ]
    for eval_set, start in cases:
        with pytest.raises(UserInputError) as caught:
            Contamination.build([eval_set])
        message = str(caught.value)
        assert message.startswith(start), message
        assert "\n" not in message


def test_duplicate_set_names_and_bad_n_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", "q", [GSM])
    with pytest.raises(UserInputError, match="two evaluation sets are named 'e'"):
        Contamination.build([EvalSet("e", path, "q"), EvalSet("e", path, "q")])
    with pytest.raises(UserInputError, match="at least 2 words, got 1"):
        Contamination.build([EvalSet("e", path, "q")], n=1)


ITEMS = [" ".join(f"{w}{i}{j}" for j, w in enumerate(WORDS[i : i + 40])) for i in range(20)]


@pytest.fixture(scope="module")
def items_contamination(tmp_path_factory: pytest.TempPathFactory) -> Contamination:
    path = write_jsonl(tmp_path_factory.mktemp("eval") / "items.jsonl", "text", list(ITEMS))
    return Contamination.build([EvalSet("items", path, "text")])


SEPARATORS = st.sampled_from([" ", "  ", "\n", ", ", " - ", "... ", "\t", " (", ") "])


@settings(max_examples=60, deadline=None)
@given(
    item=st.integers(0, len(ITEMS) - 1),
    start=st.integers(0, 40 - DEFAULT_NGRAM),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    separators=st.lists(SEPARATORS, min_size=DEFAULT_NGRAM - 1, max_size=DEFAULT_NGRAM - 1),
    upper=st.booleans(),
)
def test_a_text_embedding_an_evaluation_ngram_is_always_flagged(
    items_contamination: Contamination,
    item: int,
    start: int,
    before: str,
    after: str,
    separators: list[str],
    upper: bool,
) -> None:
    words = ITEMS[item].split()[start : start + DEFAULT_NGRAM]
    gram = words[0] + "".join(sep + word for sep, word in zip(separators, words[1:], strict=True))
    text = f"{before} {gram.upper() if upper else gram} {after}"
    assert items_contamination.matches([text]) == [["items"]]
