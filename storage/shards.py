"""Parquet shards, committed so that a reader never sees half a file or a half-written run.

Layout: ``DIR/<table>/run_id=<id>/part-NNNNN.parquet`` (hive partitioning by run), plus a
``_manifest.json`` per partition listing the committed shards.

The commit protocol, in order:

1. write the shard under a hidden temporary name and fsync it;
2. *hard-link* it to its final name — unlike a rename, a link never replaces an existing shard,
   so two writers can not clobber each other; the loser takes the next number;
3. record it in the partition's manifest, itself written to a temporary file, fsynced and
   renamed over the old one (a reader sees the old manifest or the new, never a mix).

The catalog reads only shards in manifests. A crash between 2 and 3 leaves a complete shard
outside the manifest, which :func:`reconcile` adopts when the run is resumed; a crash before 2
leaves only a ``.tmp`` file, which it deletes (its rows are still in the spool).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distillery.storage.schema import TABLES

_PART = re.compile(r"^part-(\d+)\.parquet$")
MANIFEST = "_manifest.json"
# ~8k rows of ~3.5 KB per row group: filtered reads and point lookups 1.7-3x faster than 64k
# at the same size on disk (BENCHMARKS.md, shard sizing).
ROW_GROUP_ROWS = 8_000


def partition_dir(output: Path, table: str, run_id: str) -> Path:
    return output / table / f"run_id={run_id}"


def next_part_number(directory: Path) -> int:
    """One past the highest shard number already in ``directory`` (0 when empty)."""
    if not directory.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in directory.iterdir() if (m := _PART.match(p.name))]
    return max(numbers, default=-1) + 1


def write_shard(
    output: Path, table: str, run_id: str, rows: list[dict[str, Any]] | pa.Table, part: int
) -> Path:
    """Write and commit ``rows`` as one shard of ``table``; returns its final path.

    ``rows`` are dicts or an Arrow table (cast to the table's schema). ``part`` is the
    preferred shard number; if taken, the next free one is used.
    """
    schema = TABLES[table]
    if isinstance(rows, pa.Table):
        arrow = rows.select(schema.names).cast(schema)
    else:
        arrow = pa.Table.from_pylist(rows, schema=schema)
    directory = partition_dir(output, table, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    final = _publish(directory, arrow, part)
    with _manifest_lock(directory):
        manifest, retired = _read_full_manifest(directory)
        manifest[final.name] = _entry(arrow.num_rows, final)
        _write_manifest(directory, manifest, retired)
    return final


def _publish(directory: Path, table: pa.Table, part: int) -> Path:
    """Steps 1-2 of the protocol: a complete, fsynced file under a fresh ``part-NNNNN`` name."""
    tmp = directory / f".part-{uuid.uuid4().hex}.parquet.tmp"
    try:
        with tmp.open("wb") as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            handle.flush()
            os.fsync(handle.fileno())
        while True:
            final = directory / f"part-{part:05d}.parquet"
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                part = max(part + 1, next_part_number(directory))
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)
    return final


def _entry(rows: int, path: Path) -> dict[str, Any]:
    return {
        "rows": rows,
        "bytes": path.stat().st_size,
        "committed_at": datetime.now(UTC).isoformat(),
    }


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _manifest_lock(directory: Path) -> Iterator[None]:
    with (directory / ".manifest.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Committed shards of a partition: file name -> {rows, bytes, committed_at}."""
    return _read_full_manifest(directory)[0]


def _read_full_manifest(directory: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(committed shards, retired shard names still to delete)."""
    try:
        loaded = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, []
    return loaded["shards"], list(loaded.get("retired", []))


def _write_manifest(
    directory: Path, shards: dict[str, dict[str, Any]], retired: list[str] | None = None
) -> None:
    tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    content = {"version": 1, "shards": shards, "retired": sorted(retired or [])}
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(directory / MANIFEST)
    _fsync_dir(directory)


def committed_shards(output: Path, table: str, run_id: str | None = None) -> list[Path]:
    """Paths of committed shards of ``table`` (of one run, or of all runs)."""
    root = output / table
    if not root.is_dir():
        return []
    directories = (
        [partition_dir(output, table, run_id)] if run_id else sorted(root.glob("run_id=*"))
    )
    paths: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            paths.extend(directory / name for name in sorted(read_manifest(directory)))
    return paths


def reconcile(output: Path, table: str, run_id: str) -> int:
    """Adopt complete shards a crash left outside the manifest; delete torn temporaries.

    Returns how many shards were adopted. Only safe while no other process writes this run.
    """
    directory = partition_dir(output, table, run_id)
    if not directory.is_dir():
        return 0
    for leftover in directory.glob(".part-*.parquet.tmp"):
        leftover.unlink(missing_ok=True)
    with _manifest_lock(directory):
        manifest, retired = _read_full_manifest(directory)
        for name in retired:
            (directory / name).unlink(missing_ok=True)
        orphans = [
            p
            for p in directory.glob("part-*.parquet")
            if p.name not in manifest and p.name not in retired
        ]
        for path in orphans:
            manifest[path.name] = _entry(pq.ParquetFile(path).metadata.num_rows, path)
        if orphans or retired:
            _write_manifest(directory, manifest)
    return len(orphans)


def replace_shards(directory: Path, old: list[str], table: pa.Table, part: int) -> Path | None:
    """Atomically swap the shards ``old`` of a partition for one shard holding ``table``.

    The new shard is committed and the old ones retired in the same manifest write; the old
    files are deleted afterwards (a crash in between leaves them listed as retired, and
    :func:`reconcile` deletes them instead of adopting them). Returns the new shard's path, or
    None when ``table`` is empty (the old shards are then just retired).
    """
    final = _publish(directory, table, part) if table.num_rows else None
    with _manifest_lock(directory):
        manifest, retired = _read_full_manifest(directory)
        for name in old:
            manifest.pop(name, None)
        if final is not None:
            manifest[final.name] = _entry(table.num_rows, final)
        _write_manifest(directory, manifest, [*retired, *old])
        for name in old:
            (directory / name).unlink(missing_ok=True)
        _write_manifest(directory, manifest, retired)
    return final


def read_column(output: Path, table: str, run_id: str, column: str) -> list[Any]:
    """All values of one column in a run's committed shards (empty if there are none)."""
    values: list[Any] = []
    for path in committed_shards(output, table, run_id):
        values.extend(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return values
