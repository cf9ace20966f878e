"""DuckDB views over a dataset directory: ``samples``, ``failures`` and ``runs``.

The views are plain ``read_parquet`` over the hive-partitioned shards, so what ``distillery
query`` shows is exactly what any DuckDB user gets from the same files. A table with no shards
yet is an empty view of the right columns rather than an error.

- ``samples``: every committed sample.
- ``failures``: requests that failed for good and have no sample since (a re-run that succeeded
  retires the failure; the shard history stays on disk as ``failures_log``).
- ``runs``: one row per run id, all invocations of it folded together.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from distillery.storage.schema import TABLES
from distillery.storage.shards import committed_shards


def _source(con: duckdb.DuckDBPyConnection, output: Path, table: str) -> str:
    """A FROM clause over the committed shards of ``table`` (shards outside a manifest are not
    read: they are leftovers of a crash, adopted or dropped when their run resumes)."""
    files = committed_shards(output, table)
    if files:
        listed = ", ".join("'" + str(path).replace("'", "''") + "'" for path in files)
        return f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"
    empty = f"_empty_{table}"
    con.register(empty, pa.Table.from_pylist([], schema=TABLES[table]))
    return empty


def open_catalog(output: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the dataset's views defined."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW samples AS SELECT * FROM {_source(con, output, 'samples')}")
    con.execute(f"CREATE VIEW failures_log AS SELECT * FROM {_source(con, output, 'failures')}")
    con.execute(f"CREATE VIEW run_log AS SELECT * FROM {_source(con, output, 'runs')}")
    con.execute(
        """
        CREATE VIEW failures AS
        SELECT * FROM failures_log f
        WHERE NOT EXISTS (
            SELECT 1 FROM samples s WHERE s.run_id = f.run_id AND s.sample_id = f.sample_id
        )
        QUALIFY row_number() OVER (PARTITION BY run_id, sample_id ORDER BY created_at DESC) = 1
        """
    )
    con.execute(
        """
        CREATE VIEW runs AS
        WITH log AS (
            SELECT run_id,
                   arg_max(dataset, ended_at) AS dataset,
                   arg_max(config_hash, ended_at) AS config_hash,
                   arg_max(status, ended_at) AS status,
                   min(started_at) AS started_at,
                   max(ended_at) AS ended_at,
                   count(*) AS invocations
            FROM run_log GROUP BY run_id
        ),
        s AS (
            SELECT run_id, count(*) AS samples,
                   sum(prompt_tokens) AS prompt_tokens,
                   sum(completion_tokens) AS completion_tokens
            FROM samples GROUP BY run_id
        ),
        f AS (SELECT run_id, count(*) AS failures FROM failures GROUP BY run_id)
        SELECT log.run_id, log.dataset, log.config_hash, log.status, log.started_at,
               log.ended_at, log.invocations,
               coalesce(s.samples, 0) AS samples, coalesce(f.failures, 0) AS failures,
               coalesce(s.prompt_tokens, 0) AS prompt_tokens,
               coalesce(s.completion_tokens, 0) AS completion_tokens
        FROM log LEFT JOIN s USING (run_id) LEFT JOIN f USING (run_id)
        ORDER BY log.started_at
        """
    )
    return con
