"""DuckDB views over a dataset directory.

The views are plain ``read_parquet`` over the hive-partitioned shards, so what ``distillery
query`` shows is exactly what any DuckDB user gets from the same files. A table with no shards
yet is an empty view of the right columns rather than an error.

- ``samples``: every committed sample. ``rejected``: samples set aside by a filter or dedup,
  with ``filter``, ``reason`` and ``duplicate_of``. Rows of shards written before the
  ``delivery`` column read it as ``online`` here (in the files it is absent: null).
- ``failures``: requests that failed for good and have no sample since (a re-run that succeeded
  retires the failure; the shard history stays queryable as ``failures_log``).
- ``runs``: one row per run id, all invocations of it folded together.
- ``teachers``: per teacher: samples, tokens, cost, returned model versions, terms tag, and
  the teacher's speed (``latency_ms_p50``/``_p90``) apart from our pacing (``queue_ms_p50``/
  ``_p90``: waits for the limiter) and retries (``retry_ms_mean``).

:func:`open_catalog` reads exactly the shards in the manifests (the committed ones).
:func:`write_catalog` writes a DuckDB database file for other clients (the DuckDB CLI, a
notebook); its views glob the directories, so shards written later show up without rewriting it.

On object storage (``s3://``) DuckDB cannot read the files itself (its httpfs extension is not
available offline), so each table's committed shards are registered as a pyarrow dataset over
pyarrow's S3 filesystem and the same views are built on top. A database file cannot hold such
views, so :func:`write_catalog` refuses remote outputs.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path, PurePosixPath

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from distillery.errors import UserInputError
from distillery.names import run_id_of_folder
from distillery.storage.location import Location, Where, as_location
from distillery.storage.schema import TABLES
from distillery.storage.shards import committed_shards

logger = logging.getLogger(__name__)

#: The accounting columns the teachers view reads, with recipe_meta for older shards.
_ACCOUNTING = (
    "recipe_meta, requests, user_teacher, user_prompt_tokens, user_completion_tokens, user_cost_usd"
)


def _source(con: duckdb.DuckDBPyConnection, location: Location, table: str, live: bool) -> str:
    """A FROM clause over ``table``'s shards: the committed ones, or (``live``) a glob.

    Shards outside a manifest are leftovers of a crash, adopted or dropped when their run
    resumes; only the static list excludes them.
    """
    if location.local_path is None:
        return _remote_source(con, location, table)
    output = location.local_path
    files = _valid(committed_shards(output, table), table)
    if not files:
        return _empty(con, table)
    if live:
        root = output.resolve() / table
        # A folder that is not a run id breaks DuckDB's hive partitioning of the whole glob,
        # and a glob cannot leave it out: then each valid partition is globbed on its own
        # (later runs appear once the catalog is written again).
        if any(run_id_of_folder(name) is None for name in _partition_folders(root)):
            folders = sorted(name for name in _partition_folders(root) if run_id_of_folder(name))
        else:
            folders = ["run_id=*"]
        patterns = ", ".join(
            "'" + str(root / folder / "*.parquet").replace("'", "''") + "'" for folder in folders
        )
        scan = f"read_parquet([{patterns}], hive_partitioning = true, union_by_name = true)"
    else:
        listed = ", ".join("'" + str(path).replace("'", "''") + "'" for path in files)
        scan = f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"
    # Every column of the schema, even if all shards predate it (null then): queries and
    # rewrites (dedup) that name a newer column work on older datasets too.
    return f"(SELECT * FROM {scan} UNION ALL BY NAME SELECT * FROM {_empty(con, table)})"


#: Columns whose absence in shards written before them means a known value, not "unknown":
#: every answer was bought online until batch delivery existed.
_BEFORE_COLUMN = {"delivery": "'online'"}


def _columns(table: str) -> str:
    """``*``, with the columns of :data:`_BEFORE_COLUMN` read as their value where null."""
    known = [name for name in _BEFORE_COLUMN if name in TABLES[table].names]
    if not known:
        return "*"
    filled = ", ".join(f"coalesce({name}, {_BEFORE_COLUMN[name]}) AS {name}" for name in known)
    return f"* REPLACE ({filled})"


def _partition_folders(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("run_id=")]


def _valid(files: list[Where], table: str) -> list[Where]:
    """The shards in partitions whose folder names a valid run id; the others are skipped
    with a warning. Such a folder (``run_id=x\\n``, made before run ids were checked whole)
    made DuckDB refuse the hive partitioning of every shard, so every query failed."""
    kept: list[Where] = []
    skipped: set[str] = set()
    for shard in files:
        folder = PurePosixPath(str(shard)).parent.name
        if run_id_of_folder(folder) is None:
            skipped.add(folder)
        else:
            kept.append(shard)
    for folder in sorted(skipped):
        logger.warning(
            "%s/%r: skipped, not a valid run id folder (rename it to query its shards)",
            table,
            folder,
        )
    return kept


def _empty(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """A zero-row relation with every column of ``table``'s schema, DuckDB-typed."""
    columns = ", ".join(
        f'CAST(NULL AS {sql_type}) AS "{name}"' for name, sql_type in _duckdb_columns(table)
    )
    con.execute(f"CREATE OR REPLACE VIEW _empty_{table} AS SELECT {columns} LIMIT 0")
    return f"_empty_{table}"


@cache
def _duckdb_columns(table: str) -> tuple[tuple[str, str], ...]:
    """``table``'s columns as DuckDB names them, worked out once per process.

    Registering an empty Arrow table costs ~15 ms per table and connection — a few per run and
    per query; the DuckDB types it maps to never change, so later catalogs cast NULLs instead.
    """
    scratch = duckdb.connect()
    try:
        scratch.register("_empty_arrow", pa.Table.from_pylist([], schema=TABLES[table]))
        described = scratch.execute("DESCRIBE SELECT * FROM _empty_arrow").fetchall()
    finally:
        scratch.close()
    return tuple((str(row[0]), str(row[1])) for row in described)


def _remote_source(con: duckdb.DuckDBPyConnection, location: Location, table: str) -> str:
    """The committed shards in object storage, as a pyarrow dataset DuckDB scans lazily.

    The table's schema is given, so shards written before a column existed read it as null
    (what ``union_by_name`` does locally); ``run_id`` is a column of every file.
    """
    files = _valid(committed_shards(location, table), table)
    if not files:
        return _empty(con, table)
    dataset = pads.dataset(
        [shard.fs_path for shard in files],
        schema=TABLES[table],
        format="parquet",
        filesystem=location.filesystem,
    )
    con.register(f"_remote_{table}", dataset)
    return f"_remote_{table}"


def open_catalog(output: Path | str | Location) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the dataset's views over its committed shards."""
    con = duckdb.connect()
    define_views(con, output, live=False)
    return con


def write_catalog(output: Path | str | Location, database: Path) -> None:
    """Create (or refresh) a DuckDB database file with the dataset's views (local data only)."""
    location = as_location(output)
    if location.local_path is None:
        raise UserInputError(
            f"{location.uri}: a catalog file cannot cover object storage here (its views would "
            f"need DuckDB's httpfs extension); use: distillery query --data {location.uri} SQL"
        )
    con = duckdb.connect(str(database))
    try:
        define_views(con, output, live=True)
    finally:
        con.close()


def define_views(con: duckdb.DuckDBPyConnection, output: Path | str | Location, live: bool) -> None:
    location = as_location(output)
    for view, table in (
        ("samples", "samples"),
        ("rejected", "rejected"),
        ("failures_log", "failures"),
        ("run_log", "runs"),
    ):
        source = _source(con, location, table, live)
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT {_columns(table)} FROM {source}")
    con.execute(
        """
        CREATE OR REPLACE VIEW failures AS
        SELECT * FROM failures_log f
        WHERE NOT EXISTS (
            SELECT 1 FROM samples s WHERE s.run_id = f.run_id AND s.sample_id = f.sample_id
        )
        QUALIFY row_number() OVER (PARTITION BY run_id, sample_id ORDER BY created_at DESC) = 1
        """
    )
    con.execute(
        """
        CREATE OR REPLACE VIEW runs AS
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
        f AS (SELECT run_id, count(*) AS failures FROM failures GROUP BY run_id),
        r AS (SELECT run_id, count(*) AS rejected FROM rejected GROUP BY run_id)
        SELECT log.run_id, log.dataset, log.config_hash, log.status, log.started_at,
               log.ended_at, log.invocations,
               coalesce(s.samples, 0) AS samples, coalesce(r.rejected, 0) AS rejected,
               coalesce(f.failures, 0) AS failures,
               coalesce(s.prompt_tokens, 0) AS prompt_tokens,
               coalesce(s.completion_tokens, 0) AS completion_tokens
        FROM log LEFT JOIN s USING (run_id) LEFT JOIN f USING (run_id)
        LEFT JOIN r USING (run_id)
        ORDER BY log.started_at
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE VIEW teachers AS
        WITH rows AS (
            SELECT *, 'kept' AS outcome FROM (
                SELECT teacher_name, teacher_provider, teacher_model, teacher_model_version,
                       usage_terms, created_at, prompt_tokens, completion_tokens, cost_usd,
                       {_ACCOUNTING}, schema_repairs, latency_ms, queue_ms, retry_ms
                FROM samples)
            UNION ALL BY NAME
            SELECT *, 'dropped' AS outcome FROM (
                SELECT teacher_name, cost_usd, {_ACCOUNTING}, schema_repairs, latency_ms,
                       queue_ms, retry_ms FROM rejected)
        ),
        answered AS (
            -- A conversation's row sums every turn; the share of a different teacher that
            -- played the user (user_*) is that teacher's, not the assistant's. Shards written
            -- before the user_* and requests columns hold them in recipe_meta.
            SELECT * EXCLUDE (recipe_meta) REPLACE (
                       coalesce(requests, TRY_CAST(recipe_meta->>'requests' AS BIGINT))
                           AS requests,
                       coalesce(user_teacher, recipe_meta->>'user_teacher') AS user_teacher,
                       coalesce(user_prompt_tokens,
                                CAST(recipe_meta->>'user_prompt_tokens' AS BIGINT))
                           AS user_prompt_tokens,
                       coalesce(user_completion_tokens,
                                CAST(recipe_meta->>'user_completion_tokens' AS BIGINT))
                           AS user_completion_tokens,
                       coalesce(user_cost_usd, CAST(recipe_meta->>'user_cost_usd' AS DOUBLE))
                           AS user_cost_usd)
            FROM rows
        ),
        timing AS (
            -- Per request, so only rows of one request (not a conversation's or a repaired
            -- answer's, whose times are sums), and only rows written since latency_ms was
            -- split from queue_ms and retry_ms (before, latency_ms held all three).
            SELECT teacher_name,
                   quantile_cont(latency_ms, 0.5) AS latency_ms_p50,
                   quantile_cont(latency_ms, 0.9) AS latency_ms_p90,
                   quantile_cont(queue_ms, 0.5) AS queue_ms_p50,
                   quantile_cont(queue_ms, 0.9) AS queue_ms_p90,
                   avg(retry_ms) AS retry_ms_mean
            FROM answered
            WHERE queue_ms IS NOT NULL AND coalesce(schema_repairs, 0) = 0
              AND coalesce(requests, 1) = 1
            GROUP BY teacher_name
        ),
        shares AS (
            SELECT * REPLACE (
                       CASE WHEN user_teacher <> teacher_name THEN user_teacher END
                           AS user_teacher)
            FROM answered
        ),
        own AS (
            SELECT *,
                   prompt_tokens - if(user_teacher IS NULL, 0, coalesce(user_prompt_tokens, 0))
                       AS own_prompt_tokens,
                   completion_tokens
                       - if(user_teacher IS NULL, 0, coalesce(user_completion_tokens, 0))
                       AS own_completion_tokens,
                   cost_usd - if(user_teacher IS NULL, 0, coalesce(user_cost_usd, 0))
                       AS own_cost_usd
            FROM shares
        ),
        kept AS (
            SELECT teacher_name, teacher_provider, teacher_model,
                   list(DISTINCT teacher_model_version ORDER BY teacher_model_version)
                       AS model_versions,
                   list(DISTINCT usage_terms ORDER BY usage_terms) AS usage_terms,
                   count(*) AS samples,
                   sum(own_prompt_tokens) AS prompt_tokens,
                   sum(own_completion_tokens) AS completion_tokens,
                   sum(own_cost_usd) AS cost_usd,
                   min(created_at) AS first_sample_at,
                   max(created_at) AS last_sample_at
            FROM own WHERE outcome = 'kept'
            GROUP BY teacher_name, teacher_provider, teacher_model
        ),
        played AS (
            SELECT user_teacher AS teacher_name,
                   sum(user_prompt_tokens) FILTER (outcome = 'kept') AS prompt_tokens,
                   sum(user_completion_tokens) FILTER (outcome = 'kept') AS completion_tokens,
                   sum(user_cost_usd) FILTER (outcome = 'kept') AS cost_usd,
                   sum(user_cost_usd) FILTER (outcome = 'dropped') AS rejected_cost_usd
            FROM shares WHERE user_teacher IS NOT NULL GROUP BY user_teacher
        ),
        dropped AS (
            SELECT teacher_name, count(*) AS rejected, sum(own_cost_usd) AS rejected_cost_usd
            FROM own WHERE outcome = 'dropped' GROUP BY teacher_name
        ),
        failed AS (SELECT teacher_name, count(*) AS failures FROM failures GROUP BY ALL),
        merged AS (
            SELECT coalesce(kept.teacher_name, played.teacher_name) AS teacher_name,
                   kept.teacher_provider, kept.teacher_model, kept.model_versions,
                   kept.usage_terms, coalesce(kept.samples, 0) AS samples,
                   CASE WHEN played.teacher_name IS NULL THEN kept.prompt_tokens
                        ELSE coalesce(kept.prompt_tokens, 0)
                             + coalesce(played.prompt_tokens, 0) END AS prompt_tokens,
                   CASE WHEN played.teacher_name IS NULL THEN kept.completion_tokens
                        ELSE coalesce(kept.completion_tokens, 0)
                             + coalesce(played.completion_tokens, 0) END AS completion_tokens,
                   CASE WHEN played.teacher_name IS NULL THEN kept.cost_usd
                        ELSE coalesce(kept.cost_usd, 0) + coalesce(played.cost_usd, 0) END
                       AS cost_usd,
                   kept.first_sample_at, kept.last_sample_at,
                   played.rejected_cost_usd AS played_rejected_cost_usd
            FROM kept FULL OUTER JOIN played USING (teacher_name)
        )
        SELECT merged.* EXCLUDE (played_rejected_cost_usd),
               coalesce(dropped.rejected, 0) AS rejected,
               CASE WHEN played_rejected_cost_usd IS NULL THEN dropped.rejected_cost_usd
                    ELSE coalesce(dropped.rejected_cost_usd, 0) + played_rejected_cost_usd END
                   AS rejected_cost_usd,
               coalesce(failed.failures, 0) AS failures,
               timing.* EXCLUDE (teacher_name)
        FROM merged LEFT JOIN dropped USING (teacher_name) LEFT JOIN failed USING (teacher_name)
        LEFT JOIN timing USING (teacher_name)
        ORDER BY teacher_name
        """
    )
