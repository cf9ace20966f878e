import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.config import PromptsConfig
from distillery.errors import UserInputError
from distillery.generators.prompts import load_prompts


def jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_prompt_messages_ids_and_meta(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": 7, "prompt": "hello", "lang": "en"},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
            {"prompt": "no id"},
        ],
    )
    prompts = load_prompts(PromptsConfig(path=path))
    assert prompts[0].prompt_id == "7"
    assert prompts[0].meta == {"lang": "en"}
    assert prompts[1].messages[0] == {"role": "system", "content": "s"}
    assert prompts[1].text == "u"
    # Without an id, the id is a stable hash of the messages.
    again = load_prompts(PromptsConfig(path=path))
    assert prompts[2].prompt_id == again[2].prompt_id and len(prompts[2].prompt_id) == 20


def test_template_system_and_limit(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{"topic": "tea"}, {"topic": "ink"}, {"topic": "oak"}])
    config = PromptsConfig(
        path=path, template="Write about {{ topic }}.", system="Be brief.", limit=2
    )
    prompts = load_prompts(config)
    assert len(prompts) == 2
    assert prompts[1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write about ink."},
    ]


def test_template_errors_name_the_place(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{"topic": "tea"}, {"other": 1}])
    with pytest.raises(UserInputError, match=r"prompts\.template: .*line 1"):
        load_prompts(PromptsConfig(path=path, template="{{ topic "))
    with pytest.raises(
        UserInputError, match=r"p\.jsonl:2: prompts\.template: 'topic' is undefined"
    ):
        load_prompts(PromptsConfig(path=path, template="{{ topic }}"))


def test_bad_records_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{not json}\n')
    with pytest.raises(UserInputError, match=r"p\.jsonl:2: not valid JSON"):
        load_prompts(PromptsConfig(path=path))
    jsonl(path, [{"prompt": "ok"}, {"text": "wrong field"}])
    with pytest.raises(UserInputError, match=r"p\.jsonl:2: needs a non-empty 'prompt'"):
        load_prompts(PromptsConfig(path=path))
    jsonl(path, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(UserInputError, match=r"id 'a' already used at .*p\.jsonl:1"):
        load_prompts(PromptsConfig(path=path))
    with pytest.raises(UserInputError, match="cannot read prompts"):
        load_prompts(PromptsConfig(path=tmp_path / "absent.jsonl"))


def test_identical_prompts_are_one(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "same"}, {"prompt": "same"}])
    assert len(load_prompts(PromptsConfig(path=path))) == 1


def test_csv_and_parquet(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('id,prompt,level\n1,"a, b",easy\n2,c,hard\n')
    from_csv = load_prompts(PromptsConfig(path=csv_path))
    assert [p.messages[0]["content"] for p in from_csv] == ["a, b", "c"]
    assert from_csv[1].meta == {"level": "hard"}
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"], "n": [1, 2]}), parquet)
    from_parquet = load_prompts(PromptsConfig(path=parquet))
    assert [p.meta["n"] for p in from_parquet] == [1, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_invalid_utf8_names_file_line_and_offset(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"p{suffix}"
    good = b'{"prompt": "ok"}\n' if suffix == ".jsonl" else b"prompt\nok\n"
    path.write_bytes(good + b'{"prompt": "caf\xe9"}\n')  # Latin-1, not UTF-8
    offset, line = len(good) + len(b'{"prompt": "caf'), good.count(b"\n") + 1
    with pytest.raises(
        UserInputError,
        match=rf"p\{suffix}:{line}: not valid UTF-8 \(byte 0xe9 at offset {offset}\)$",
    ) as caught:
        load_prompts(PromptsConfig(path=path))
    assert "\n" not in str(caught.value)


def test_utf16_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("prompt\nhello\n".encode("utf-16"))
    with pytest.raises(
        UserInputError, match=r"p\.csv:1: not valid UTF-8 .*UTF-16: save it as UTF-8"
    ):
        load_prompts(PromptsConfig(path=path))


def test_a_byte_order_mark_is_read_not_refused(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" and many Windows tools start the file with one.
    jsonl_path = tmp_path / "p.jsonl"
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + '{"prompt": "héllo"}\n{"prompt": "b"}\n'.encode())
    assert [p.text for p in load_prompts(PromptsConfig(path=jsonl_path))] == ["héllo", "b"]
    csv_path = tmp_path / "p.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + 'id,prompt\r\n1,"two\r\nlines"\r\n2,ünï\r\n'.encode())
    from_csv = load_prompts(PromptsConfig(path=csv_path))
    assert [(p.prompt_id, p.text) for p in from_csv] == [("1", "two\r\nlines"), ("2", "ünï")]


def test_malformed_csv_and_parquet_are_one_line(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("prompt\n" + '"' + "x" * 200_000 + '"\n')  # over csv's field limit
    with pytest.raises(UserInputError, match=r"p\.csv:\d+: not valid CSV \(field larger"):
        load_prompts(PromptsConfig(path=csv_path))
    parquet = tmp_path / "p.parquet"
    parquet.write_bytes(b"PAR1 but not really")
    with pytest.raises(UserInputError, match=r"p\.parquet: not a readable Parquet file"):
        load_prompts(PromptsConfig(path=parquet))
