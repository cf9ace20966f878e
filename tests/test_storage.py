from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.storage.catalog import open_catalog
from distillery.storage.shards import next_part_number, read_column, write_shard


def sample(sample_id: str, run_id: str = "r1", tokens: int = 3) -> dict[str, object]:
    return {
        "sample_id": sample_id,
        "run_id": run_id,
        "prompt_id": "p",
        "sample_index": 0,
        "messages": [{"role": "user", "content": "hi"}],
        "teacher_name": "t",
        "teacher_provider": "openai",
        "teacher_model": "m",
        "params": '{"temperature": 0.5}',
        "created_at": datetime.now(UTC),
        "response_text": "hello",
        "prompt_tokens": tokens,
        "completion_tokens": tokens,
    }


def test_shards_never_clobber_and_leave_no_temp(tmp_path: Path) -> None:
    first = write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    second = write_shard(tmp_path, "samples", "r1", [sample("b")], 0)
    assert first.name == "part-00000.parquet"
    assert second.name == "part-00001.parquet"
    assert sorted(map(str, read_column(tmp_path, "samples", "r1", "sample_id"))) == ["a", "b"]
    assert not list(first.parent.glob(".*tmp"))
    assert next_part_number(first.parent) == 2


def test_catalog_views_and_plain_duckdb_agree(tmp_path: Path) -> None:
    write_shard(tmp_path, "samples", "r1", [sample("a"), sample("b")], 0)
    write_shard(tmp_path, "samples", "r2", [sample("c", "r2")], 0)
    con = open_catalog(tmp_path)
    by_run = con.execute("SELECT run_id, count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall()
    assert by_run == [("r1", 2), ("r2", 1)]
    assert con.execute("SELECT params->>'temperature' FROM samples LIMIT 1").fetchall() == [
        ("0.5",)
    ]
    plain = (
        duckdb.connect()
        .execute(
            f"SELECT count(*) FROM read_parquet('{tmp_path}/samples/**/*.parquet', "
            "hive_partitioning = true)"
        )
        .fetchall()
    )
    assert plain == [(3,)]


def test_empty_dataset_has_typed_empty_views(tmp_path: Path) -> None:
    con = open_catalog(tmp_path)
    for view in ("samples", "failures", "runs"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]
    columns = [row[0] for row in con.execute("DESCRIBE samples").fetchall()]
    assert "teacher_model_version" in columns


def test_resolved_failures_leave_the_failures_view(tmp_path: Path) -> None:
    failure = {**sample("a"), "error_class": "server_error", "http_status": 500, "message": "x"}
    write_shard(tmp_path, "failures", "r1", [failure, {**failure, "sample_id": "b"}], 0)
    write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    con = open_catalog(tmp_path)
    assert con.execute("SELECT sample_id FROM failures").fetchall() == [("b",)]
    assert con.execute("SELECT count(*) FROM failures_log").fetchall() == [(2,)]


def test_schema_rejects_a_row_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises((TypeError, ValueError)):
        write_shard(tmp_path, "samples", "r1", [sample("a", tokens="many")], 0)  # type: ignore[arg-type]
    assert not (tmp_path / "samples" / "run_id=r1").exists() or not list(
        (tmp_path / "samples" / "run_id=r1").iterdir()
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=8))
def test_every_write_lands_once(tmp_path_factory: pytest.TempPathFactory, parts: list[int]) -> None:
    root = tmp_path_factory.mktemp("shards")
    for index, part in enumerate(parts):
        write_shard(root, "samples", "r", [sample(f"s{index}")], part)
    names = [p.name for p in (root / "samples" / "run_id=r").iterdir()]
    assert len(names) == len(parts) == len(set(names))
    assert sorted(map(str, read_column(root, "samples", "r", "sample_id"))) == sorted(
        f"s{i}" for i in range(len(parts))
    )
