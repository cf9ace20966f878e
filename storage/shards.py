"""Parquet shards, written so that a reader never sees half a file.

Layout: ``DIR/<table>/run_id=<id>/part-NNNNN.parquet`` (hive partitioning by run). A shard is
written under a hidden temporary name, fsynced, then *linked* to its final name — unlike a
rename, a link never replaces an existing shard, so two writers can not clobber each other's
work; the loser takes the next number. Readers glob ``*.parquet`` and never see the ``.tmp``.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distillery.storage.schema import TABLES

_PART = re.compile(r"^part-(\d+)\.parquet$")
ROW_GROUP_ROWS = 64_000


def partition_dir(output: Path, table: str, run_id: str) -> Path:
    return output / table / f"run_id={run_id}"


def next_part_number(directory: Path) -> int:
    """One past the highest shard number already in ``directory`` (0 when empty)."""
    if not directory.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in directory.iterdir() if (m := _PART.match(p.name))]
    return max(numbers, default=-1) + 1


def write_shard(
    output: Path, table: str, run_id: str, rows: list[dict[str, object]], part: int
) -> Path:
    """Write ``rows`` as one shard of ``table``; returns its final path.

    ``part`` is the preferred shard number; if taken, the next free one is used.
    """
    schema = TABLES[table]
    directory = partition_dir(output, table, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pylist(rows, schema=schema)
    tmp = directory / f".part-{uuid.uuid4().hex}.parquet.tmp"
    try:
        with tmp.open("wb") as handle:
            pq.write_table(arrow, handle, compression="zstd", row_group_size=ROW_GROUP_ROWS)
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_column(output: Path, table: str, run_id: str, column: str) -> list[object]:
    """All values of one column in a run's committed shards (empty if there are none)."""
    directory = partition_dir(output, table, run_id)
    if not directory.is_dir():
        return []
    values: list[object] = []
    for path in sorted(directory.glob("part-*.parquet")):
        values.extend(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return values
