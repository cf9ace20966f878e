"""Merge a partition's small shards into larger ones.

Every batch commits its own shard, so a long run leaves many small files; DuckDB scans fewer,
larger files faster (BENCHMARKS.md, "Shard sizing"). Compaction rewrites each run partition's
shards into shards of about ``target_rows`` and swaps them in with one manifest write, so a
reader sees either the old shards or the new ones, never both or neither; a crash at any step
leaves a partition its manifest still describes (``storage/shards.py``). :func:`compact` holds
each run's writer lock (:mod:`distillery.storage.run_lock`) while it rewrites the run, so it
never races the run itself: a run being written is skipped and named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillery.storage.location import Location, as_location
from distillery.storage.run_lock import RunBusyError, run_writer
from distillery.storage.schema import TABLES
from distillery.storage.shards import (
    next_part_number,
    read_manifest,
    read_shard,
    reconcile,
    replace_shards,
)

# ~50k rows per shard: as fast to query as one file per run (BENCHMARKS.md, "Shard sizing").
DEFAULT_TARGET_ROWS = 50_000


@dataclass(frozen=True)
class CompactionResult:
    table: str
    run_id: str
    shards_before: int
    shards_after: int
    rows: int


def compact_partition(
    directory: Path | Location, table: str, target_rows: int = DEFAULT_TARGET_ROWS
) -> CompactionResult | None:
    """Merge the small shards of one ``DIR/<table>/run_id=R`` partition; None if nothing to do."""
    location = as_location(directory)
    run_id = location.name.removeprefix("run_id=")
    manifest = read_manifest(location)
    small = sorted(name for name, entry in manifest.items() if entry["rows"] < target_rows)
    if len(small) < 2:
        return None
    groups: list[list[str]] = [[]]
    rows_in_group = 0
    for name in small:
        rows = int(manifest[name]["rows"])
        if groups[-1] and rows_in_group + rows > target_rows:
            groups.append([])
            rows_in_group = 0
        groups[-1].append(name)
        rows_in_group += rows
    schema = TABLES[table]
    written = 0
    total = 0
    for group in groups:
        if len(group) < 2:
            continue
        # Read one shard at a time as the new one is written: a merge holds a row group's
        # rows, not the group's ~50k (BENCHMARKS.md, "Memory of a run").
        shards = (read_shard(location.child(name), schema=schema) for name in group)
        replace_shards(location, group, shards, next_part_number(location))
        written += 1
        total += sum(int(manifest[name]["rows"]) for name in group)
    if not written:
        return None
    after = len(read_manifest(location))
    return CompactionResult(table, run_id, len(manifest), after, total)


@dataclass(frozen=True)
class Compaction:
    """What :func:`compact` did, and the runs it left alone because another process writes
    them (run id -> the one-line reason)."""

    results: list[CompactionResult]
    skipped: dict[str, str]


def compact(output: Path | Location, target_rows: int = DEFAULT_TARGET_ROWS) -> Compaction:
    """Compact every run partition of every table under ``output``, one run at a time under
    its writer lock (after repairing what a crash left in it)."""
    location = as_location(output)
    runs = sorted(
        {
            name.removeprefix("run_id=")
            for table in TABLES
            for name in location.child(table).subdirs()
            if name.startswith("run_id=")
        }
    )
    done = Compaction([], {})
    for run_id in runs:
        try:
            with run_writer(location, run_id, "compact"):
                for table in TABLES:
                    directory = location.child(table, f"run_id={run_id}")
                    if not directory.is_dir():
                        continue
                    reconcile(location, table, run_id)
                    result = compact_partition(directory, table, target_rows)
                    if result is not None:
                        done.results.append(result)
        except RunBusyError as busy:
            done.skipped[run_id] = str(busy)
    return done
