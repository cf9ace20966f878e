"""Datasets in object storage (``s3://bucket/prefix``), against moto's S3 server on loopback.

The server is moto's real HTTP server (``ThreadedMotoServer``), reached the way a user reaches
an S3-compatible store: ``AWS_ENDPOINT_URL`` and the other standard AWS variables, read by
pyarrow's S3 filesystem. Every test gets a bucket of its own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pyarrow as pa
import pytest
from moto.server import ThreadedMotoServer

from distillery.config import load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.errors import UserInputError
from distillery.storage.catalog import open_catalog, write_catalog
from distillery.storage.compact import compact
from distillery.storage.location import (
    Location,
    ObjectStoreLocation,
    as_location,
    normalise_uri,
)
from distillery.storage.schema import TABLES
from distillery.storage.shards import (
    MANIFEST,
    committed_shards,
    next_part_number,
    partition_dir,
    read_column,
    read_manifest,
    reconcile,
    write_shard,
)
from distillery.storage.spool import Spool, leftover_spools, recover, spool_dir

from .conftest import write_job
from .test_cli import cli, one_error_line


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, and the AWS environment pointing at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_REGION", "us-east-1")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    """A new, empty bucket; returns its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def keys(s3: Any, bucket: str) -> list[str]:
    """Every object in the bucket, as S3 itself lists them (not through pyarrow)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def sample(sample_id: str, run_id: str = "r1") -> dict[str, object]:
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
        "prompt_tokens": 3,
        "completion_tokens": 3,
    }


def test_uris_are_normalised_and_unsupported_schemes_refused(tmp_path: Path) -> None:
    assert normalise_uri("s3://bkt//a/b/") == "s3://bkt/a/b"
    assert normalise_uri("S3://bkt") == "s3://bkt"
    with pytest.raises(ValueError, match="unsupported URI scheme 'gs'"):
        normalise_uri("gs://bkt/a")
    with pytest.raises(ValueError, match="expected s3://bucket/prefix"):
        normalise_uri("s3:///a")
    with pytest.raises(UserInputError, match="unsupported URI scheme"):
        as_location("hdfs://namenode/data")
    assert as_location(tmp_path).local_path == tmp_path
    config = write_job(tmp_path, "http://127.0.0.1:9")
    config.write_text(config.read_text().replace("output: out", "output: s3://bkt/jobs/x/"))
    assert load_config(config).output == "s3://bkt/jobs/x"  # not resolved against the file
    local = write_job(tmp_path, "http://127.0.0.1:9")
    assert load_config(local).output == tmp_path / "out"


def test_shards_manifests_and_catalog_on_s3(bucket: str, s3: Any) -> None:
    output = as_location(f"s3://{bucket}/data")
    first = write_shard(output, "samples", "r1", [sample("a"), sample("b")], 0)
    second = write_shard(output, "samples", "r1", [sample("c")], 0)  # part 0 is taken
    write_shard(output, "samples", "r2", [sample("d", "r2")], 0)
    assert isinstance(first, ObjectStoreLocation)
    assert first.name.startswith("part-00000-") and second.name.startswith("part-00001-")
    directory = partition_dir(output, "samples", "r1")
    assert next_part_number(directory) == 2
    manifest = read_manifest(directory)
    assert sorted(manifest) == sorted([first.name, second.name])
    assert [entry["rows"] for _, entry in sorted(manifest.items())] == [2, 1]
    assert manifest[first.name]["bytes"] == first.size()
    assert sorted(read_column(output, "samples", "r1", "sample_id")) == ["a", "b", "c"]
    assert committed_shards(output, "samples", "r1") == [first, second]
    # Only whole shards and manifests are in the bucket: nothing temporary, nothing else.
    prefix = "data/samples/run_id="
    assert keys(s3, bucket) == sorted(
        [
            f"{prefix}r1/{first.name}",
            f"{prefix}r1/{second.name}",
            f"{prefix}r1/{MANIFEST}",
            *[f"{prefix}r2/{shard.name}" for shard in committed_shards(output, "samples", "r2")],
            f"{prefix}r2/{MANIFEST}",
        ]
    )
    con = open_catalog(f"s3://{bucket}/data")
    by_run = con.execute("SELECT run_id, count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall()
    assert by_run == [("r1", 3), ("r2", 1)]
    assert con.execute("SELECT DISTINCT params->>'temperature' FROM samples").fetchall() == [
        ("0.5",)
    ]
    teachers = con.execute("SELECT teacher_name, samples, rejected FROM teachers").fetchall()
    assert teachers == [("t", 4, 0)]
    for view in ("rejected", "failures", "failures_log", "runs", "run_log"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]


def test_views_have_the_local_columns_and_types(bucket: str, tmp_path: Path) -> None:
    failure = {**sample("f"), "error_class": "timeout", "http_status": None, "message": "m"}
    rejected = {**sample("z"), "filter": "empty", "reason": "empty"}
    now = datetime.now(UTC)
    run = {"run_id": "r1", "invocation_id": "i", "started_at": now, "ended_at": now}
    remote = as_location(f"s3://{bucket}/data")
    for table, row in (
        ("samples", sample("a")),
        ("rejected", rejected),
        ("failures", failure),
        ("runs", run),
    ):
        write_shard(tmp_path, table, "r1", [row], 0)
        write_shard(remote, table, "r1", [row], 0)
    local_con, remote_con = open_catalog(tmp_path), open_catalog(remote)
    for view in ("samples", "rejected", "failures", "failures_log", "runs", "run_log", "teachers"):
        described = [
            [row[:2] for row in con.execute(f"DESCRIBE {view}").fetchall()]
            for con in (local_con, remote_con)
        ]
        assert described[0] == described[1], view
        assert remote_con.execute(f"SELECT count(*) FROM {view}").fetchall() == [(1,)], view
    for view in ("samples", "rejected", "failures_log"):  # rows without a delivery: online
        for con in (local_con, remote_con):
            assert con.execute(f"SELECT delivery FROM {view}").fetchall() == [("online",)]


def test_catalog_reads_only_committed_shards_and_reconcile_repairs_on_s3(
    bucket: str, s3: Any
) -> None:
    output = as_location(f"s3://{bucket}/data")
    committed = write_shard(output, "samples", "r1", [sample("a")], 0)
    directory = partition_dir(output, "samples", "r1")
    content = committed.read_bytes()
    assert content is not None
    # A crash between the shard's PUT and the manifest's leaves a whole shard the manifest lacks.
    orphan = directory.child("part-00007-0123456789ab.parquet")
    s3.put_object(Bucket=bucket, Key=orphan.fs_path.split("/", 1)[1], Body=content)
    assert open_catalog(output).execute("SELECT count(*) FROM samples").fetchall() == [(1,)]
    assert reconcile(output, "samples", "r1") == 1
    assert sorted(read_manifest(directory)) == sorted([committed.name, orphan.name])
    assert open_catalog(output).execute("SELECT count(*) FROM samples").fetchall() == [(2,)]
    # A crash after a swap but before the old shards were deleted leaves them listed as
    # retired: reconcile deletes them rather than adopting them.
    manifest = json.loads(directory.child(MANIFEST).read_bytes() or b"{}")
    manifest["shards"].pop(orphan.name)
    manifest["retired"] = [orphan.name]
    directory.child(MANIFEST).replace(json.dumps(manifest).encode())
    assert reconcile(output, "samples", "r1") == 0
    assert orphan.read_bytes() is None
    assert read_column(output, "samples", "r1", "sample_id") == ["a"]


def test_shards_from_before_the_queue_split_read_with_new_ones_on_s3(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old shard without queue_ms/retry_ms and a new one, in object storage: the explicit
    schema the remote views read with gives the old rows nulls (locally, union_by_name)."""
    output = as_location(f"s3://{bucket}/data")
    old_schema = pa.schema([f for f in TABLES["samples"] if f.name not in ("queue_ms", "retry_ms")])
    monkeypatch.setitem(TABLES, "samples", old_schema)
    write_shard(output, "samples", "r1", [{**sample("old"), "latency_ms": 10_300.0}], 0)
    monkeypatch.undo()
    timed = {"latency_ms": 200.0, "queue_ms": 10_100.0, "retry_ms": 0.0}
    write_shard(output, "samples", "r2", [{**sample("new", "r2"), **timed}], 0)
    con = open_catalog(output)
    rows = con.execute(
        "SELECT sample_id, latency_ms, queue_ms, retry_ms FROM samples ORDER BY 1"
    ).fetchall()
    assert rows == [("new", 200.0, 10_100.0, 0.0), ("old", 10_300.0, None, None)]
    assert con.execute("SELECT latency_ms_p50, queue_ms_p50 FROM teachers").fetchall() == [
        (200.0, 10_100.0)
    ]


def test_compaction_on_s3(bucket: str, s3: Any) -> None:
    output = as_location(f"s3://{bucket}/data")
    for index in range(7):
        write_shard(output, "samples", "r1", [sample(f"s{index}"), sample(f"t{index}")], 0)
    query = "SELECT list_sort(list(sample_id)) FROM samples"
    before = open_catalog(output).execute(query).fetchall()
    results = compact(output, target_rows=6).results
    assert [(r.shards_before, r.shards_after, r.rows) for r in results] == [(7, 3, 12)]
    assert open_catalog(output).execute(query).fetchall() == before
    parquet = [key for key in keys(s3, bucket) if key.endswith(".parquet")]
    assert len(parquet) == 3  # the merged shards' sources are deleted
    assert {key.rsplit("/", 1)[1] for key in parquet} == set(
        read_manifest(partition_dir(output, "samples", "r1"))
    )
    assert compact(output, target_rows=6).results == []


def test_spool_stays_local_and_recovery_writes_to_s3(bucket: str, s3: Any) -> None:
    output = as_location(f"s3://{bucket}/data")
    spool = Spool(output, "r1")
    home = Path(os.environ["DISTILLERY_HOME"])
    assert spool.path.is_relative_to(home / "spool")
    assert spool_dir(as_location(f"s3://{bucket}/data/"), "r1") == spool.path.parent  # stable
    spool.append("samples", sample("a"))
    spool.append("samples", sample("b"))
    spool.close()
    # The process died after committing "a", before discarding the spool.
    write_shard(output, "samples", "r1", [sample("a")], 0)
    assert recover(output, "r1") == {"samples": 1, "rejected": 0, "failures": 0}
    assert not leftover_spools(output, "r1")
    assert sorted(read_column(output, "samples", "r1", "sample_id")) == ["a", "b"]
    assert not any("_spool" in key for key in keys(s3, bucket))


def test_writers_in_one_process_never_lose_a_commit(bucket: str) -> None:
    output = as_location(f"s3://{bucket}/data")

    def write(index: int) -> None:
        write_shard(output, "samples", "r1", [sample(f"s{index}")], 0)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_manifest(partition_dir(output, "samples", "r1"))) == 8
    assert sorted(read_column(output, "samples", "r1", "sample_id")) == [f"s{i}" for i in range(8)]


@pytest.mark.slow
def test_catalog_file_and_unreachable_data_are_one_line_errors(bucket: str, tmp_path: Path) -> None:
    write_shard(as_location(f"s3://{bucket}/data"), "samples", "r1", [sample("a")], 0)
    with pytest.raises(UserInputError, match="httpfs"):
        write_catalog(f"s3://{bucket}/data", tmp_path / "c.duckdb")
    database = cli("catalog", "--db", str(tmp_path / "c.duckdb"), "-d", f"s3://{bucket}/data")
    assert database.returncode == 2 and "httpfs" in one_error_line(database)
    missing = cli("query", "-d", "s3://no-such-bucket-here/data", "SELECT 1")
    assert missing.returncode == 2
    assert "bucket 'no-such-bucket-here' does not exist" in one_error_line(missing)
    empty = cli("query", "-d", f"s3://{bucket}/nothing-here", "SELECT 1")
    assert empty.returncode == 2 and "no dataset there" in one_error_line(empty)
    down = cli(
        "query",
        "-d",
        f"s3://{bucket}/data",
        "SELECT 1",
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    assert down.returncode == 2 and "cannot reach the bucket" in one_error_line(down)
    scheme = cli("query", "-d", "gs://bkt/data", "SELECT 1")
    assert scheme.returncode == 2 and "unsupported URI scheme 'gs'" in one_error_line(scheme)


@pytest.mark.slow
def test_cli_run_query_rerun_and_compact_on_s3(
    prefect_api: str, bucket: str, s3: Any, tmp_path: Path
) -> None:
    data = f"s3://{bucket}/datasets/demo"
    env = {"EMULATOR_API_KEY": "k", "PREFECT_API_URL": prefect_api}
    # Verbatim repeats make dedup swap the run's sample shards (replace_shards) on S3 too.
    with RunningEmulator(EmulatorOptions(seed=7, dup_rate=0.3)) as emulator:
        config = write_job(tmp_path, emulator.url, prompts=12)
        first = cli("run", str(config), "--output", data, "--run-id", "s3-run", env=env)
        assert first.returncode == 0, first.stderr
        assert data in first.stdout
        counts = cli(
            "query",
            "--data",
            data,
            "-f",
            "json",
            "SELECT (SELECT count(*) FROM samples) AS samples, "
            "(SELECT count(DISTINCT sample_id) FROM samples) AS ids, "
            "(SELECT count(*) FROM rejected WHERE reason = 'duplicate') AS duplicates, "
            "(SELECT count(*) FROM rejected) AS rejected",
        )
        assert counts.returncode == 0, counts.stderr
        [before] = json.loads(counts.stdout)
        assert before["samples"] == before["ids"] > 0
        assert before["duplicates"] > 0
        assert before["samples"] + before["rejected"] == 12

        again = cli("run", str(config), "--output", data, "--run-id", "s3-run", env=env)
        assert again.returncode == 0, again.stderr
        assert "12 already answered" in again.stdout
        recount = cli("query", "--data", data, "-f", "json", counts.args[-1])
        assert json.loads(recount.stdout) == [before]  # the re-run added nothing
    runs = cli("query", "-d", data, "-f", "csv", "SELECT run_id, invocations, status FROM runs")
    assert runs.stdout.splitlines() == ["run_id,invocations,status", "s3-run,2,completed"]
    shown = cli("lineage", "-d", data, "--", _first_sample(data))
    assert shown.returncode == 0 and "teacher_model_version" in shown.stdout

    assert not (tmp_path / "out").exists()  # --output replaced the config's local directory
    assert not leftover_spools(as_location(data), "s3-run")  # the local spool was emptied
    objects = [key for key in keys(s3, bucket) if not key.endswith("/")]
    assert all(key.startswith("datasets/demo/") for key in objects)
    names = {key.rsplit("/", 1)[1] for key in objects}
    assert names - {MANIFEST} and all(
        name == MANIFEST or (name.startswith(("part-", "compacted-")) and name.endswith(".parquet"))
        for name in names
    )
    compacted = cli("compact", "--data", data)
    assert compacted.returncode == 0, compacted.stderr
    dedup = cli("dedup", "--data", data, env=env)
    assert dedup.returncode == 0, dedup.stderr
    assert "run s3-run: removed nothing" in dedup.stdout  # the run's duplicates already went


def _first_sample(data: str) -> str:
    location: Location = as_location(data)
    return str(sorted(read_column(location, "samples", "s3-run", "sample_id"))[0])


def test_a_run_on_s3_is_refused_to_a_second_machine_by_its_lease(
    bucket: str, s3: Any, tmp_path: Path
) -> None:
    # Two "machines": separate $DISTILLERY_HOME, so separate local locks; only the lease
    # object in the bucket stands between them.
    import subprocess
    import sys

    from distillery.storage.run_lock import RunBusyError, run_writer

    data = f"s3://{bucket}/data"
    hold = (
        "import sys, time; from distillery.storage.run_lock import run_writer\n"
        "with run_writer(sys.argv[1], 'r1'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, data],
        env={**os.environ, "DISTILLERY_HOME": str(tmp_path / "machine-b")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        assert f"{bucket}/data/_writers/run_id=r1.json" in {
            f"{bucket}/{k}" for k in keys(s3, bucket)
        }
        with pytest.raises(RunBusyError, match=f"pid {other.pid}"), run_writer(data, "r1"):
            pass
    finally:
        other.kill()
        other.wait()
    assert "data/_writers/run_id=r1.json" in keys(s3, bucket)  # a dead holder's lease stays...
    with run_writer(data, "r2"):  # ...and binds only its own run
        pass
    assert "data/_writers/run_id=r2.json" not in keys(s3, bucket)  # released on exit
