"""Duplicate removal over a run and its history, in DuckDB, then an atomic rewrite of the run.

Exact and near duplicates need the whole run and everything earlier, so they are decided once
the run's batches are committed: :func:`distillery.generators.curation.dedup.find_duplicates`
probes history through DuckDB joins on stored keys (``content_hash``, ``dedup_bands``) rather
than an in-memory index. The run's rejected rows are committed to ``rejected`` first (skipping
any already there), then the run's sample shards are swapped for the kept rows in one manifest
write — so a crash in between is repaired by running the same dedup again, which finds the same
duplicates and has nothing left to add.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from distillery.config import DedupConfig
from distillery.generators.curation.dedup import find_duplicates
from distillery.generators.recipes.base import INTERMEDIATE_STAGES
from distillery.storage.catalog import open_catalog
from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location, as_location
from distillery.storage.run_lock import run_writer
from distillery.storage.schema import REJECTED_SCHEMA, SAMPLE_SCHEMA
from distillery.storage.shards import (
    ROW_GROUP_ROWS,
    next_part_number,
    partition_dir,
    read_column,
    read_manifest,
    reconcile,
    replace_shards,
    write_shard,
)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _arrow(con: duckdb.DuckDBPyConnection, query: str, run_id: str) -> pa.Table:
    table = con.sql(query, params={"run": run_id}).to_arrow_table()
    assert isinstance(table, pa.Table)
    return table


def earlier_runs(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """Runs that started before ``run_id`` first did (its history for dedup), read through
    an open catalog ``con``."""
    rows = con.execute(
        """SELECT run_id FROM runs
           WHERE run_id <> $run AND started_at < coalesce(
               (SELECT started_at FROM runs WHERE run_id = $run), now())
           ORDER BY started_at""",
        {"run": run_id},
    ).fetchall()
    return [str(row[0]) for row in rows]


def dedup_run(
    output: Path | Location, run_id: str, history: list[str] | None, config: DedupConfig
) -> dict[str, int]:
    """Move the run's duplicates to ``rejected``; returns how many, by reason.

    ``history``: the runs to compare with; None for every run that started before this one
    (:func:`earlier_runs`, read through the same catalog: opening one costs ~0.1-0.3 s).
    """
    output = as_location(output)
    with run_writer(output, run_id, "dedup"):
        return _dedup_run(output, run_id, history, config)


def _dedup_run(
    output: Location, run_id: str, history: list[str] | None, config: DedupConfig
) -> dict[str, int]:
    for name in ("samples", "rejected", "failures"):
        reconcile(output, name, run_id)
    # The shards the catalog reads are the ones the rewrite replaces, and no others.
    read = sorted(read_manifest(partition_dir(output, "samples", run_id)))
    con = open_catalog(output)
    if history is None:
        history = earlier_runs(con, run_id)
    scope = ", ".join(_quote(r) for r in [run_id, *history])
    bands = "dedup_bands" if config.near else "NULL::UBIGINT[]"
    # A recipe's intermediate rows (instructions to answer) are not training samples: an
    # evolved instruction is a near copy of its parent by design.
    stages = ", ".join(_quote(stage) for stage in INTERMEDIATE_STAGES)
    not_intermediate = f"coalesce(stage, '') NOT IN ({stages})"
    # One row per sample id and side: two copies of one sample (left by two processes that
    # wrote the same run before runs had a writer lock) are one sample, never each other's
    # duplicates — deciding one a duplicate of the other would reject both.
    con.execute(
        f"""CREATE TEMP VIEW dedup_source AS
            SELECT sample_id, epoch_us(created_at) AS rank, run_id = {_quote(run_id)} AS is_new,
                   content_hash, {bands} AS bands, response_text
            FROM samples WHERE run_id IN ({scope}) AND {not_intermediate}
            QUALIFY row_number() OVER (
                PARTITION BY sample_id, run_id = {_quote(run_id)} ORDER BY created_at, run_id
            ) = 1"""
    )
    result = find_duplicates(con, "dedup_source", threshold=config.threshold)
    copies = con.execute(
        "SELECT count(*) - count(DISTINCT sample_id) FROM samples WHERE run_id = $run",
        {"run": run_id},
    ).fetchall()[0][0]
    if not result.duplicates and not copies:
        return {}
    con.register("decisions", result.to_arrow())
    already = set(read_column(output, "rejected", run_id, "sample_id"))
    rejected = _arrow(
        con,
        """SELECT s.*, 'dedup' AS filter, d.reason, NULL::VARCHAR AS detail, d.duplicate_of
           FROM samples s JOIN decisions d USING (sample_id) WHERE s.run_id = $run
           QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at) = 1""",
        run_id,
    )
    fresh = [
        i for i, sid in enumerate(rejected.column("sample_id").to_pylist()) if sid not in already
    ]
    if fresh:
        table = rejected.take(pa.array(fresh, pa.int64())).select(REJECTED_SCHEMA.names)
        directory = partition_dir(output, "rejected", run_id)
        write_shard(output, "rejected", run_id, table, next_part_number(directory))
    failpoint("dedup:rejected-written")
    kept: pa.RecordBatchReader = con.sql(
        """SELECT s.* FROM samples s ANTI JOIN decisions d USING (sample_id)
           WHERE s.run_id = $run
           QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at) = 1""",
        params={"run": run_id},
    ).to_arrow_reader(ROW_GROUP_ROWS)
    samples_dir = partition_dir(output, "samples", run_id)
    # The kept rows stream from DuckDB into the new shard, a row group at a time.
    replace_shards(
        samples_dir,
        read,
        (
            pa.Table.from_batches([batch]).select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
            for batch in kept
        ),
        next_part_number(samples_dir),
    )
    return dict(Counter(d.reason for d in result.duplicates))


@task(name="dedup-run", task_run_name="dedup-{run_id}", cache_policy=NO_CACHE)
def dedup_run_task(
    output: Path | Location, run_id: str, history: list[str] | None, config: DedupConfig
) -> dict[str, int]:
    removed = dedup_run(output, run_id, history, config)
    get_run_logger().info("run %s: removed %s", run_id, removed or "no duplicates")
    return removed


@flow(name="dedup", flow_run_name="dedup/{output}", persist_result=False)
def dedup_dataset(
    output: Path | str, config: DedupConfig | None = None
) -> dict[str, dict[str, int]]:
    """Re-run dedup over every run of a dataset, oldest first (e.g. after merging datasets).

    Each run is compared with itself and the runs before it, so the oldest copy always wins.
    ``output`` is a local directory or an object-storage URI (``s3://bucket/prefix``).
    """
    config = config or DedupConfig()
    location = as_location(output)
    con = open_catalog(location)
    order = [
        str(row[0])
        for row in con.execute(
            """SELECT run_id FROM (SELECT run_id, min(created_at) AS first FROM samples
               GROUP BY ALL) ORDER BY first, run_id"""
        ).fetchall()
    ]
    return {
        run_id: dedup_run_task(location, run_id, order[:position], config)
        for position, run_id in enumerate(order)
    }
