"""Parquet shards, committed so that a reader never sees half a file or a half-written run.

Layout: ``DIR/<table>/run_id=<id>/part-NNNNN.parquet`` (hive partitioning by run), plus a
``_manifest.json`` per partition listing the committed shards. ``DIR`` is a local directory or
an object-storage prefix (``s3://bucket/prefix``, where shards are named
``part-NNNNN-<random>.parquet``); :mod:`distillery.storage.location` implements each step for
both.

The commit protocol, in order:

1. write the shard under a hidden temporary name and fsync it (object storage: build it in
   memory);
2. *hard-link* it to its final name — unlike a rename, a link never replaces an existing shard,
   so two writers can not clobber each other; the loser takes the next number (object storage:
   one PUT under a name with a random suffix, which no other writer can pick);
3. record it in the partition's manifest, itself written to a temporary file, fsynced and
   renamed over the old one (object storage: one PUT) — a reader sees the old manifest or the
   new, never a mix.

The catalog reads only shards in manifests: the manifest is the only truth. A crash between 2
and 3 leaves a complete shard outside the manifest, which :func:`reconcile` adopts when the run
is resumed; a crash before 2 leaves only a ``.tmp`` file, which it deletes (its rows are still
in the spool).

A *rewrite* of committed rows (compaction, dedup: :func:`replace_shards`) publishes its shard as
``compacted-NNNNN…`` instead, and swaps it for the shards it replaces in one manifest write. A
``compacted-`` file the manifest does not name is a swap that never committed — its rows are all
still in the shards it was to replace — so :func:`reconcile` deletes it rather than adopting it
(adopting it would double every row). Every step of both is killed in turn by
``tests/test_crash_points.py``.

Functions taking a dataset accept a local ``Path`` (and then return Paths, as they always did)
or a :class:`~distillery.storage.location.Location` (and then return Locations).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location, Where, as_location, like, next_number
from distillery.storage.schema import TABLES

MANIFEST = "_manifest.json"
# Shards of new rows, and rewrites of committed rows (see the module docstring).
NEW_STEM = "part"
REWRITE_STEM = "compacted"
# ~8k rows of ~3.5 KB per row group: filtered reads and point lookups faster than with 64k
# at the same size on disk (BENCHMARKS.md, "Shard sizing").
ROW_GROUP_ROWS = 8_000


def partition_dir(output: Where, table: str, run_id: str) -> Where:
    return like(output, as_location(output).child(table, f"run_id={run_id}"))


def next_part_number(directory: Path | Location) -> int:
    """One past the highest shard number already in ``directory`` (0 when empty)."""
    return next_number(as_location(directory).names())


def write_shard(
    output: Where, table: str, run_id: str, rows: Sequence[Mapping[str, Any]] | pa.Table, part: int
) -> Where:
    """Write and commit ``rows`` as one shard of ``table``; returns its final path.

    ``rows`` are dicts or an Arrow table (cast to the table's schema). ``part`` is the
    preferred shard number; if taken, the next free one is used.
    """
    schema = TABLES[table]
    if isinstance(rows, pa.Table):
        arrow = rows.select(schema.names).cast(schema)
    else:
        arrow = pa.Table.from_pylist(rows, schema=schema)
    directory = as_location(output).child(table, f"run_id={run_id}")
    directory.ensure_dir()
    final, size = _publish(directory, arrow, part)
    failpoint("write:published")
    with directory.lock():
        manifest, retired = _read_full_manifest(directory)
        manifest[final.name] = _entry(arrow.num_rows, size)
        _write_manifest(directory, manifest, retired)
    return like(output, final)


def _publish(directory: Location, table: pa.Table, part: int) -> tuple[Location, int]:
    """Steps 1-2 of the protocol: a complete shard under a fresh ``part-NNNNN`` name."""

    def write(sink: BinaryIO) -> None:
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)

    return directory.publish(write, part, NEW_STEM)


def _publish_rewrite(
    directory: Location, rows: RewriteRows, part: int
) -> tuple[Location, int, int] | None:
    """Steps 1-2 for a rewrite: (shard, bytes, rows) under a fresh ``compacted-NNNNN`` name, or
    None when there are no rows. A stream is written a row group at a time."""
    chunks = _non_empty([rows] if isinstance(rows, pa.Table) else rows)
    first = next(chunks, None)
    if first is None:
        return None
    written = 0

    def write(sink: BinaryIO) -> None:
        nonlocal written
        with pq.ParquetWriter(sink, first.schema, compression="zstd") as writer:
            for group in _row_groups(itertools.chain([first], chunks)):
                writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
                written += group.num_rows

    final, size = directory.publish(write, part, REWRITE_STEM)
    return final, size, written


def _non_empty(chunks: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[pa.Table]:
    for chunk in chunks:
        if chunk.num_rows:
            yield chunk if isinstance(chunk, pa.Table) else pa.Table.from_batches([chunk])


def _row_groups(chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The stream re-cut into tables of ``ROW_GROUP_ROWS`` rows (the last one shorter), so a
    rewrite's row groups are the size a batch's shard has, whatever size the chunks come in."""
    pending: list[pa.Table] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += chunk.num_rows
        if held >= ROW_GROUP_ROWS:
            joined = pa.concat_tables(pending)
            full = held - held % ROW_GROUP_ROWS
            yield joined.slice(0, full)
            rest = joined.slice(full)
            pending, held = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if held:
        yield pa.concat_tables(pending)


def _entry(rows: int, size: int) -> dict[str, Any]:
    return {
        "rows": rows,
        "bytes": size,
        "committed_at": datetime.now(UTC).isoformat(),
    }


def read_manifest(directory: Path | Location) -> dict[str, dict[str, Any]]:
    """Committed shards of a partition: file name -> {rows, bytes, committed_at}."""
    return _read_full_manifest(as_location(directory))[0]


def _read_full_manifest(directory: Location) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(committed shards, retired shard names still to delete)."""
    content = directory.child(MANIFEST).read_bytes()
    if content is None:
        return {}, []
    loaded = json.loads(content.decode("utf-8"))
    return loaded["shards"], list(loaded.get("retired", []))


def _write_manifest(
    directory: Location, shards: dict[str, dict[str, Any]], retired: list[str] | None = None
) -> None:
    content = {"version": 1, "shards": shards, "retired": sorted(retired or [])}
    text = json.dumps(content, indent=1, sort_keys=True)
    directory.child(MANIFEST).replace(text.encode("utf-8"))


def committed_shards(output: Where, table: str, run_id: str | None = None) -> list[Where]:
    """Paths of committed shards of ``table`` (of one run, or of all runs)."""
    root = as_location(output).child(table)
    if not root.is_dir():
        return []
    directories = (
        [root.child(f"run_id={run_id}")]
        if run_id
        else [root.child(name) for name in sorted(root.subdirs()) if name.startswith("run_id=")]
    )
    return [
        like(output, directory.child(name))
        for directory in directories
        for name in sorted(read_manifest(directory))
    ]


def reconcile(output: Path | Location, table: str, run_id: str) -> int:
    """Bring a partition back to what its manifest says after a crash; returns shards adopted.

    Complete new-row shards outside the manifest (``part-*``: a crash between publishing and
    recording them) are adopted — their rows are nowhere else committed. Rewrites outside the
    manifest (``compacted-*``: a swap that never committed) and retired shards are deleted:
    their rows are in the shards the manifest names. Torn temporaries are deleted. Only run it
    while holding the run's writer lock (:mod:`distillery.storage.run_lock`): a rewrite another
    process is about to commit looks exactly like one that never will.
    """
    directory = as_location(output).child(table, f"run_id={run_id}")
    if not directory.is_dir():
        return 0
    for name in directory.names():
        if fnmatchcase(name, ".part-*.parquet.tmp"):
            directory.child(name).delete()
    with directory.lock():
        manifest, retired = _read_full_manifest(directory)
        for name in retired:
            directory.child(name).delete()
        unlisted = [
            name
            for name in sorted(directory.names())
            if name.endswith(".parquet") and name not in manifest and name not in retired
        ]
        for name in unlisted:
            if name.startswith(f"{REWRITE_STEM}-"):
                directory.child(name).delete()
        orphans = [directory.child(n) for n in unlisted if n.startswith(f"{NEW_STEM}-")]
        for shard in orphans:
            manifest[shard.name] = _entry(_num_rows(shard), shard.size())
        if orphans or retired:
            _write_manifest(directory, manifest)
    return len(orphans)


#: Rows for a rewrite: one Arrow table, or a stream of tables or record batches of one schema
#: (compaction reads its shards one at a time; dedup streams DuckDB's result), so a rewrite
#: never holds more than a row group's worth of rows (BENCHMARKS.md, "Memory of a run").
RewriteRows = pa.Table | Iterable[pa.Table | pa.RecordBatch]


def replace_shards(directory: Where, old: list[str], rows: RewriteRows, part: int) -> Where | None:
    """Atomically swap the shards ``old`` of a partition for one shard holding ``rows``.

    The new shard is committed and the old ones retired in the same manifest write; the old
    files are deleted afterwards (a crash in between leaves them listed as retired, and
    :func:`reconcile` deletes them instead of adopting them). Returns the new shard's path, or
    None when there are no rows (the old shards are then just retired).
    """
    final = _replace(as_location(directory), old, rows, part)
    return like(directory, final) if final is not None else None


def _replace(directory: Location, old: list[str], rows: RewriteRows, part: int) -> Location | None:
    final = _publish_rewrite(directory, rows, part)
    failpoint("replace:published")
    with directory.lock():
        manifest, retired = _read_full_manifest(directory)
        missing = [name for name in old if name not in manifest]
        if missing:
            # Rows read from shards that are no longer committed: the rewrite is stale.
            if final is not None:
                final[0].delete()
            raise RuntimeError(f"{directory}: shards {missing} changed during the rewrite")
        for name in old:
            manifest.pop(name, None)
        if final is not None:
            manifest[final[0].name] = _entry(final[2], final[1])
        _write_manifest(directory, manifest, [*retired, *old])
        failpoint("replace:committed")
        for name in old:
            directory.child(name).delete()
        failpoint("replace:deleted")
        _write_manifest(directory, manifest, retired)
    return final[0] if final is not None else None


def read_shard(
    shard: Path | Location, columns: list[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """One shard as an Arrow table: ``columns`` of it, or all; with ``schema``, conformed to
    it (its types, its order, nulls for columns a shard written before them lacks).

    A local shard is read through ``ParquetFile`` rather than ``pq.read_table``: the dataset
    layer behind the latter keeps ~30-50 MB more resident once used, which a run reading
    its shards at the end (compaction, counts) paid on top of its peak (BENCHMARKS.md,
    "Memory of a run").
    """
    location = as_location(shard)
    if location.local_path is not None:
        file = pq.ParquetFile(location.local_path)
        present = set(file.schema_arrow.names)
        if schema is None:
            # ParquetFile.read leaves out a missing column where read_table refused: refuse
            # as it did (a shard written before the column existed; callers catch it).
            missing = [name for name in columns or [] if name not in present]
            if missing:
                raise pa.ArrowInvalid(f"{location.uri}: no column {missing[0]!r}")
            return file.read(columns=columns, use_threads=False)
        names = columns if columns is not None else schema.names
        table = file.read(columns=[n for n in names if n in present], use_threads=False)
        rows = file.metadata.num_rows
        fields = [schema.field(name) for name in names]
        arrays = [
            table.column(f.name).cast(f.type) if f.name in present else pa.nulls(rows, f.type)
            for f in fields
        ]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return pq.read_table(
        location.fs_path, columns=columns, schema=schema, filesystem=location.filesystem
    )


def _num_rows(shard: Location) -> int:
    if shard.local_path is not None:
        return pq.ParquetFile(shard.local_path).metadata.num_rows
    return pq.read_metadata(shard.fs_path, filesystem=shard.filesystem).num_rows


def read_column(output: Path | Location, table: str, run_id: str, column: str) -> list[Any]:
    """All values of one column in a run's committed shards (empty if there are none)."""
    values: list[Any] = []
    for shard in committed_shards(as_location(output), table, run_id):
        values.extend(read_shard(shard, columns=[column]).column(column).to_pylist())
    return values
