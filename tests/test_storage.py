import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.storage.catalog import open_catalog
from distillery.storage.compact import compact
from distillery.storage.shards import (
    committed_shards,
    next_part_number,
    read_column,
    read_manifest,
    reconcile,
    write_shard,
)
from distillery.storage.spool import Spool, leftover_spools, read_spool, recover


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
    directory = root / "samples" / "run_id=r"
    names = [p.name for p in directory.glob("part-*.parquet")]
    assert len(names) == len(parts) == len(set(names))
    assert sorted(read_manifest(directory)) == sorted(names)
    assert sorted(map(str, read_column(root, "samples", "r", "sample_id"))) == sorted(
        f"s{i}" for i in range(len(parts))
    )


def test_catalog_reads_only_committed_shards(tmp_path: Path) -> None:
    committed = write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    # A crash between link and manifest update leaves a complete shard the manifest lacks.
    orphan = committed.with_name("part-00007.parquet")
    orphan.write_bytes(committed.read_bytes())
    torn = committed.with_name(".part-xyz.parquet.tmp")
    torn.write_bytes(b"half a file")
    assert open_catalog(tmp_path).execute("SELECT count(*) FROM samples").fetchall() == [(1,)]
    assert reconcile(tmp_path, "samples", "r1") == 1
    assert not torn.exists()
    assert len(committed_shards(tmp_path, "samples", "r1")) == 2


def test_spool_replay_recovers_rows_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "r1")
    spool.append("samples", sample("a"))
    spool.append("samples", sample("b"))
    failure = {**sample("c"), "error_class": "timeout", "http_status": None, "message": "slow"}
    spool.append("failures", failure)
    spool.close()
    # The process died after committing "a" but before discarding the spool,
    # and in the middle of writing one more line.
    write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    with spool.path.open("a") as handle:
        handle.write('{"table": "samples", "row": {"sample_')
    assert recover(tmp_path, "r1") == {"samples": 1, "rejected": 0, "failures": 1}
    assert not leftover_spools(tmp_path, "r1")
    ids = sorted(map(str, read_column(tmp_path, "samples", "r1", "sample_id")))
    assert ids == ["a", "b"]
    assert read_column(tmp_path, "failures", "r1", "error_class") == ["timeout"]
    assert recover(tmp_path, "r1") == {"samples": 0, "rejected": 0, "failures": 0}


def test_spool_lines_read_back_exactly_whatever_encoder_wrote_them(tmp_path: Path) -> None:
    """Rows are spooled with orjson, and with json for what orjson refuses: both read back
    as written, timestamps as the same aware datetimes."""
    created = datetime(2026, 11, 29, 8, 30, 1, 250, tzinfo=UTC)
    plain = {**sample("a"), "created_at": created, "response_text": "naïve — 日本語 \u2028"}
    odd = {**sample("b"), "recipe_meta": {"1": 2}, "huge": 2**70, "keys": {3: "int key"}}
    spool = Spool(tmp_path, "r1")
    spool.append("samples", plain)
    spool.append("samples", odd)
    spool.close()
    (_, first), (_, second) = list(read_spool(spool.path))
    assert first == plain
    assert first["created_at"] == created and first["created_at"].tzinfo is not None
    assert second["huge"] == 2**70  # beyond orjson's 64 bits: written by json instead
    assert second["keys"] == {"3": "int key"}  # JSON object keys are strings either way


def test_compact_merges_and_swaps_atomically(tmp_path: Path) -> None:
    for index in range(7):
        write_shard(tmp_path, "samples", "r1", [sample(f"s{index}"), sample(f"t{index}")], 0)
    before = (
        open_catalog(tmp_path).execute("SELECT list_sort(list(sample_id)) FROM samples").fetchall()
    )
    results = compact(tmp_path, target_rows=6)
    directory = tmp_path / "samples" / "run_id=r1"
    assert [(r.shards_before, r.shards_after, r.rows) for r in results] == [(7, 3, 12)]
    after = (
        open_catalog(tmp_path).execute("SELECT list_sort(list(sample_id)) FROM samples").fetchall()
    )
    assert after == before
    assert len(list(directory.glob("part-*.parquet"))) == 3  # old files deleted
    assert compact(tmp_path, target_rows=6) == []  # nothing left to merge


def test_crash_after_swap_leaves_retired_files_that_are_deleted_not_adopted(
    tmp_path: Path,
) -> None:
    first = write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    second = write_shard(tmp_path, "samples", "r1", [sample("b")], 0)
    kept = {first.name: first.read_bytes(), second.name: second.read_bytes()}
    compact(tmp_path, target_rows=10)
    # Simulate a crash after the manifest swap but before the old files were deleted.
    for name, content in kept.items():
        (first.parent / name).write_bytes(content)
    manifest = json.loads((first.parent / "_manifest.json").read_text())
    manifest["retired"] = sorted(kept)
    (first.parent / "_manifest.json").write_text(json.dumps(manifest))
    assert reconcile(tmp_path, "samples", "r1") == 0
    ids = sorted(map(str, read_column(tmp_path, "samples", "r1", "sample_id")))
    assert ids == ["a", "b"]
    assert not first.exists() and not second.exists()


def test_a_folder_that_is_no_run_id_does_not_break_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Made before run ids were matched whole ("$" matches before a final newline): DuckDB then
    # refused the hive partitioning of every shard, so every query of the dataset failed.
    write_shard(tmp_path, "samples", "good", [sample("a", "good")], 0)
    write_shard(tmp_path, "samples", "bad\n", [sample("b", "bad\n")], 0)
    con = open_catalog(tmp_path)
    assert con.execute("SELECT run_id, sample_id FROM samples").fetchall() == [("good", "a")]
    assert "'run_id=bad\\n': skipped" in caplog.text
    from distillery.storage.catalog import write_catalog

    database = tmp_path / "catalog.duckdb"
    write_catalog(tmp_path, database)
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("SELECT run_id FROM samples").fetchall() == [("good",)]
