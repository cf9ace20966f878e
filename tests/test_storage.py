import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.storage.catalog import open_catalog, write_catalog
from distillery.storage.compact import compact
from distillery.storage.schema import TABLES
from distillery.storage.shards import (
    ROW_GROUP_ROWS,
    committed_shards,
    next_part_number,
    read_column,
    read_manifest,
    read_shard,
    reconcile,
    replace_shards,
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
    results = compact(tmp_path, target_rows=6).results
    directory = tmp_path / "samples" / "run_id=r1"
    assert [(r.shards_before, r.shards_after, r.rows) for r in results] == [(7, 3, 12)]
    after = (
        open_catalog(tmp_path).execute("SELECT list_sort(list(sample_id)) FROM samples").fetchall()
    )
    assert after == before
    assert len(list(directory.glob("*.parquet"))) == 3  # old files deleted
    assert compact(tmp_path, target_rows=6).results == []  # nothing left to merge


def test_a_streamed_rewrite_is_cut_into_full_row_groups_in_order(tmp_path: Path) -> None:
    """Compaction and dedup hand replace_shards a stream (a shard at a time, DuckDB's batches):
    whatever the chunks' sizes, the new shard has the rows in order, its row groups are
    ROW_GROUP_ROWS long but the last, and the manifest counts every row."""
    write_shard(tmp_path, "samples", "r1", [sample("old")], 0)
    directory = tmp_path / "samples" / "run_id=r1"
    rows = [sample(f"s{i:05d}") for i in range(2 * ROW_GROUP_ROWS + 123)]
    table = pa.Table.from_pylist(rows, schema=TABLES["samples"])
    sizes = [1, 0, 997, ROW_GROUP_ROWS, 3, ROW_GROUP_ROWS - 1000]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))] + [sum(sizes)]
    chunks: list[pa.Table | pa.RecordBatch] = [
        table.slice(start, size) for start, size in zip(offsets, sizes, strict=False)
    ]
    chunks.append(table.slice(offsets[-1]).to_batches()[0])  # a record batch too
    old = list(read_manifest(directory))
    shard = replace_shards(directory, old, iter(chunks), 0)
    assert shard is not None and shard.name.startswith("compacted-")
    written = pq.ParquetFile(shard)
    groups = [written.metadata.row_group(i).num_rows for i in range(written.num_row_groups)]
    assert groups == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 123]
    assert written.read().column("sample_id").to_pylist() == [r["sample_id"] for r in rows]
    assert read_manifest(directory) == {shard.name: read_manifest(directory)[shard.name]}
    assert read_manifest(directory)[shard.name]["rows"] == len(rows)


def test_a_rewrite_of_nothing_retires_the_old_shards(tmp_path: Path) -> None:
    write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    directory = tmp_path / "samples" / "run_id=r1"
    empty = pa.Table.from_pylist([], schema=TABLES["samples"])
    assert replace_shards(directory, list(read_manifest(directory)), iter([empty]), 0) is None
    assert read_manifest(directory) == {}
    assert list(directory.glob("*.parquet")) == []


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


def _without_timing(schema: pa.Schema) -> pa.Schema:
    """``schema`` as shards were written before queue_ms and retry_ms were split from
    latency_ms."""
    return pa.schema([f for f in schema if f.name not in ("queue_ms", "retry_ms")])


def test_shards_from_before_the_queue_split_read_with_new_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old shard (latency_ms was the whole request, no queue_ms/retry_ms) and a new one in
    one dataset: every view reads both, the old rows' new columns null, and the teachers view
    takes the teacher's latency from new rows only (an old latency_ms includes the queue)."""
    old = {**sample("old"), "latency_ms": 10_300.0}
    new = {**sample("new"), "latency_ms": 200.0, "queue_ms": 10_100.0, "retry_ms": 0.0}
    old_failure = {**old, "sample_id": "f-old", "error_class": "timeout", "message": "slow"}
    new_failure = {**new, "sample_id": "f-new", "error_class": "timeout", "message": "slow"}
    for table in ("samples", "rejected", "failures"):
        monkeypatch.setitem(TABLES, table, _without_timing(TABLES[table]))
    write_shard(tmp_path, "samples", "r1", [old], 0)
    write_shard(tmp_path, "failures", "r1", [old_failure], 0)
    monkeypatch.undo()
    old_file = committed_shards(tmp_path, "samples", "r1")[0]
    assert "queue_ms" not in pq.read_schema(old_file).names  # really an old shard
    write_shard(tmp_path, "samples", "r2", [{**new, "run_id": "r2"}], 0)
    write_shard(tmp_path, "failures", "r2", [{**new_failure, "run_id": "r2"}], 0)
    con = open_catalog(tmp_path)
    rows = con.execute(
        "SELECT sample_id, latency_ms, queue_ms, retry_ms FROM samples ORDER BY sample_id"
    ).fetchall()
    assert rows == [("new", 200.0, 10_100.0, 0.0), ("old", 10_300.0, None, None)]
    failures = con.execute("SELECT sample_id, queue_ms FROM failures ORDER BY 1").fetchall()
    assert failures == [("f-new", 10_100.0), ("f-old", None)]
    timing = con.execute(
        "SELECT samples, latency_ms_p50, queue_ms_p50, retry_ms_mean FROM teachers"
    ).fetchall()
    assert timing == [(2, 200.0, 10_100.0, 0.0)]
    # A database file's views glob the same shards.
    write_catalog(tmp_path, tmp_path / "catalog.duckdb")
    with duckdb.connect(str(tmp_path / "catalog.duckdb")) as db:
        assert db.execute("SELECT count(queue_ms), count(*) FROM samples").fetchall() == [(1, 2)]


def test_teachers_view_times_one_request_rows_only(tmp_path: Path) -> None:
    """A conversation's or a repaired answer's times are sums over several requests: they
    are no one request's latency, so the per-teacher speed leaves them out."""
    timed = {"latency_ms": 100.0, "queue_ms": 50.0, "retry_ms": 0.0}
    rows: list[dict[str, object]] = [
        {**sample("a"), **timed},
        {**sample("b"), **timed, "latency_ms": 300.0},
        {**sample("c"), **timed, "latency_ms": 9_000.0, "schema_repairs": 2},
        {**sample("d"), **timed, "latency_ms": 9_000.0, "recipe_meta": '{"requests": 5}'},
    ]
    write_shard(tmp_path, "samples", "r1", rows, 0)
    rejected = {**sample("e"), **timed, "latency_ms": 500.0, "filter": "empty", "reason": "x"}
    write_shard(tmp_path, "rejected", "r1", [rejected], 0)
    con = open_catalog(tmp_path)
    view = con.execute("SELECT samples, latency_ms_p50, latency_ms_p90 FROM teachers").fetchall()
    # a, b and the rejected e (answered all the same): median 300, p90 between 300 and 500.
    assert view[0][:2] == (4, 300.0) and 300.0 < view[0][2] < 500.0


def test_spool_replay_takes_rows_with_and_without_the_timing_columns(tmp_path: Path) -> None:
    """A spool written before the split (no queue_ms/retry_ms keys) and one written after
    both replay into shards; the old rows' new columns are null."""
    old_spool = Spool(tmp_path, "r1")
    old_spool.append("samples", {**sample("a"), "latency_ms": 900.0})
    old_spool.append(
        "failures",
        {**sample("f"), "latency_ms": 5.0, "error_class": "timeout", "message": "slow"},
    )
    old_spool.close()
    new_spool = Spool(tmp_path, "r1")
    new_spool.append(
        "samples", {**sample("b"), "latency_ms": 90.0, "queue_ms": 800.0, "retry_ms": 10.0}
    )
    new_spool.close()
    assert recover(tmp_path, "r1") == {"samples": 2, "rejected": 0, "failures": 1}
    con = open_catalog(tmp_path)
    rows = con.execute(
        "SELECT sample_id, latency_ms, queue_ms, retry_ms FROM samples ORDER BY 1"
    ).fetchall()
    assert rows == [("a", 900.0, None, None), ("b", 90.0, 800.0, 10.0)]
    assert con.execute("SELECT queue_ms FROM failures").fetchall() == [(None,)]


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


#: Columns that hold accounting once kept as JSON in recipe_meta.
_ACCOUNTING = {
    "requests",
    "user_teacher",
    "user_model_versions",
    "user_prompt_tokens",
    "user_completion_tokens",
    "user_cost_usd",
}


def _before_typed_accounting(table: str) -> pa.Schema:
    """``table``'s schema as shards were written while a conversation's accounting (and a
    failure's paid usage) lived in recipe_meta: no user_*/requests columns, and failures
    without the usage columns."""
    dropped = set(_ACCOUNTING)
    if table == "failures":
        dropped |= {"teacher_model_version", "cost_usd"}
        dropped |= {name for name in TABLES[table].names if name.endswith("_tokens")}
    return pa.schema([f for f in TABLES[table] if f.name not in dropped])


def test_shards_with_accounting_in_recipe_meta_read_with_typed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversation row of the old layout (its user teacher's share and request count in
    recipe_meta JSON) and one of the new (typed columns) in one dataset: the teachers view
    charges both the same way, the old rows' new columns read as null, and compaction
    rewrites a partition mixing both layouts."""
    totals = {"prompt_tokens": 100, "completion_tokens": 50, "cost_usd": 1.0}
    timed = {"latency_ms": 900.0, "queue_ms": 10.0, "retry_ms": 0.0}
    share = {"user_prompt_tokens": 40, "user_completion_tokens": 20, "user_cost_usd": 0.4}
    old_meta = {"turns": 3, "requests": 5, "user_teacher": "t1", **share}
    base = {**sample("x"), "teacher_name": "t0", **totals, **timed}
    old = {**base, "sample_id": "old", "recipe_meta": json.dumps(old_meta)}
    new = {
        **base,
        "sample_id": "new",
        "recipe_meta": '{"turns": 3}',
        "requests": 5,
        "user_teacher": "t1",
        "user_model_versions": ["m-1"],
        **share,
    }
    plain = {**sample("plain"), "teacher_name": "t0", **timed, "latency_ms": 200.0}
    paid = {"completion_tokens": 7, "cost_usd": 0.07}
    old_failure = {
        **old,
        "sample_id": "f-old",
        "error_class": "conversation_interrupted",
        "recipe_meta": json.dumps({**paid, "role": "assistant", "teacher": "t0"}),
    }
    new_failure = {**new, **paid, "sample_id": "f-new", "error_class": "conversation_interrupted"}
    for table in ("samples", "failures"):
        monkeypatch.setitem(TABLES, table, _before_typed_accounting(table))
    write_shard(tmp_path, "samples", "r1", [old], 0)
    write_shard(tmp_path, "failures", "r1", [old_failure], 0)
    monkeypatch.undo()
    old_file = committed_shards(tmp_path, "samples", "r1")[0]
    assert "user_cost_usd" not in pq.read_schema(old_file).names  # really an old shard
    old_failures = pq.read_schema(committed_shards(tmp_path, "failures", "r1")[0]).names
    assert "completion_tokens" not in old_failures
    write_shard(tmp_path, "samples", "r1", [new, plain], 1)
    write_shard(tmp_path, "failures", "r1", [new_failure], 1)

    def check() -> None:
        con = open_catalog(tmp_path)
        typed = con.execute(
            "SELECT sample_id, requests, user_teacher, user_cost_usd FROM samples ORDER BY 1"
        ).fetchall()
        assert typed == [("new", 5, "t1", 0.4), ("old", None, None, None), ("plain",) + (None,) * 3]
        view = con.execute(
            """SELECT teacher_name, samples, prompt_tokens, completion_tokens,
                      round(cost_usd, 6), latency_ms_p50 FROM teachers"""
        ).fetchall()
        # Each conversation: t0 answered 60 + 30 tokens for 0.6, t1 (the user) 40 + 20 for
        # 0.4; only the one-request row times t0 (a conversation's latency is a sum).
        assert view == [("t0", 3, 2 * 60 + 3, 2 * 30 + 3, 1.2, 200.0), ("t1", 0, 80, 40, 0.8, None)]
        failures = con.execute(
            "SELECT sample_id, completion_tokens, cost_usd FROM failures_log ORDER BY 1"
        ).fetchall()
        assert failures == [("f-new", 7, 0.07), ("f-old", None, None)]

    check()
    rewritten = {(r.table, r.shards_before, r.shards_after) for r in compact(tmp_path).results}
    assert rewritten == {("samples", 2, 1), ("failures", 2, 1)}  # both layouts, as one shard
    check()


_DELIVERY = ("delivery", "provider_batch_id")


def test_shards_before_delivery_read_as_online_beside_batch_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards written before the delivery columns existed (no such columns in the file) and
    new ones, online and batch, in one dataset: the views read the old rows as 'online' with
    no batch id, in samples, rejected and failures alike, before and after compaction, and
    a catalog file (whose views glob the folders) agrees."""
    batch = {"delivery": "batch", "provider_batch_id": "batch_abc"}
    online = {"delivery": "online", "provider_batch_id": None}
    reject = {"filter": "empty", "reason": "empty", "detail": None}
    failed = {"error_class": "expired", "http_status": None, "message": "batch expired"}
    for table in ("samples", "rejected", "failures"):
        old_layout = pa.schema([f for f in TABLES[table] if f.name not in _DELIVERY])
        monkeypatch.setitem(TABLES, table, old_layout)
    write_shard(tmp_path, "samples", "r1", [sample("old")], 0)
    write_shard(tmp_path, "rejected", "r1", [sample("old-r") | reject], 0)
    write_shard(tmp_path, "failures", "r1", [sample("old-f") | failed], 0)
    monkeypatch.undo()
    for table in ("samples", "rejected", "failures"):
        names = pq.read_schema(committed_shards(tmp_path, table, "r1")[0]).names
        assert "delivery" not in names  # really an old shard
    write_shard(tmp_path, "samples", "r1", [sample("on") | online, sample("b") | batch], 1)
    write_shard(tmp_path, "rejected", "r1", [sample("b-r") | batch | reject], 1)
    write_shard(tmp_path, "failures", "r1", [sample("b-f") | batch | failed], 1)
    expected = {
        "samples": [("b", "batch", "batch_abc"), ("old", "online", None), ("on", "online", None)],
        "rejected": [("b-r", "batch", "batch_abc"), ("old-r", "online", None)],
        "failures_log": [("b-f", "batch", "batch_abc"), ("old-f", "online", None)],
    }

    def check(con: duckdb.DuckDBPyConnection) -> None:
        for view, rows in expected.items():
            query = f"SELECT sample_id, delivery, provider_batch_id FROM {view} ORDER BY 1"
            assert con.execute(query).fetchall() == rows, view
        paid = "SELECT delivery, count(*) FROM samples GROUP BY 1 ORDER BY 1"
        assert con.execute(paid).fetchall() == [("batch", 1), ("online", 2)]

    check(open_catalog(tmp_path))
    rewritten = {(r.table, r.shards_before, r.shards_after) for r in compact(tmp_path).results}
    assert rewritten == {("samples", 2, 1), ("rejected", 2, 1), ("failures", 2, 1)}
    merged = pq.read_table(committed_shards(tmp_path, "samples", "r1")[0])
    assert sorted(merged.column("delivery").to_pylist(), key=str) == [None, "batch", "online"]
    check(open_catalog(tmp_path))
    database = tmp_path / "catalog.duckdb"
    write_catalog(tmp_path, database)
    with duckdb.connect(str(database), read_only=True) as con:
        check(con)


def test_read_shard_refuses_a_missing_column_and_fills_it_from_a_schema(tmp_path: Path) -> None:
    """Shards written before a column existed: asked for it alone, read_shard raises (the
    recipes' stage reader skips such shards); with the table's schema it reads it as nulls."""
    shard = tmp_path / "old.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"]}), shard)
    with pytest.raises(pa.ArrowInvalid, match="no column 'stage'"):
        read_shard(shard, columns=["sample_id", "stage"])
    schema = pa.schema([("stage", pa.string()), ("sample_id", pa.large_string())])
    table = read_shard(shard, schema=schema)
    assert table.schema == schema
    assert table.to_pylist() == [
        {"stage": None, "sample_id": "a"},
        {"stage": None, "sample_id": "b"},
    ]
