"""The write-ahead spool: every answer on disk the moment it arrives.

A teacher's answer is paid for when it arrives, long before its batch is written as a Parquet
shard. So each row is appended to the batch's spool file (JSON lines, flushed per row) first;
the shard is built after, and the spool is deleted only once the shard is committed. A process
killed in between leaves a spool, which the next invocation of the same run replays into shards
before it sends anything — skipping rows whose sample is already committed, so a crash between
shard commit and spool deletion duplicates nothing.

``flush`` hands each line to the OS (it survives the process being killed); ``fsync`` runs every
:data:`FSYNC_EVERY` rows and at close, bounding what a power cut could take.

The spool is always local, since object storage has no appends: ``DIR/_spool`` for a local
dataset, ``$DISTILLERY_HOME/spool/<hash of the URI>/`` for one in object storage (``s3://``).
So a run on object storage that crashed is recovered by resuming it on the same machine (or one
sharing ``$DISTILLERY_HOME``); elsewhere, the spooled answers are sent again.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson

from distillery.home import distillery_home
from distillery.storage.location import Location, as_location, spool_key
from distillery.storage.rows import FailureRow, RejectedRow, SampleRow
from distillery.storage.schema import TABLES

FSYNC_EVERY = 64
_TIMESTAMP_COLUMNS = {
    name: {f.name for f in schema if str(f.type).startswith("timestamp")}
    for name, schema in TABLES.items()
}


def spool_root(output: Path | Location) -> Path:
    """Where a dataset's spools (and its runs' writer locks) live: always local."""
    location = as_location(output)
    if location.local_path is not None:
        return location.local_path / "_spool"
    return distillery_home() / "spool" / spool_key(location)


def spool_dir(output: Path | Location, run_id: str) -> Path:
    return spool_root(output) / f"run_id={run_id}"


class Spool:
    """One batch's append-only spool file."""

    def __init__(self, output: Path | Location, run_id: str) -> None:
        directory = spool_dir(output, run_id)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{uuid.uuid4().hex}.jsonl"
        self._handle: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._unsynced = 0

    def append(self, table: str, row: Mapping[str, object]) -> None:
        """Write one row (a :data:`~distillery.storage.rows.Row`, typed where it was made) and
        hand it to the OS before returning."""
        assert self._handle is not None, "spool already closed"
        self._handle.write(_line({"table": table, "row": row}))
        self._handle.flush()
        self._unsynced += 1
        if self._unsynced >= FSYNC_EVERY:
            os.fsync(self._handle.fileno())
            self._unsynced = 0

    def close(self) -> None:
        """Flush, fsync and close; the file is closed even when the disk refuses the rest."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                handle.close()
            raise
        handle.close()

    def discard(self) -> None:
        """Delete the spool: its rows are in committed shards now."""
        self.close()
        self.path.unlink(missing_ok=True)


def _line(record: Mapping[str, object]) -> str:
    """One JSON line. orjson (installed with Prefect; datetimes in ISO 8601 as ``isoformat``)
    is an order of magnitude faster than ``json`` (BENCHMARKS.md, "Flow overhead"), which
    still serves whatever orjson refuses (a non-string key, an integer beyond 64 bits) so no
    row is ever lost to it."""
    try:
        return orjson.dumps(record, default=_encode).decode() + "\n"
    except TypeError:
        return json.dumps(record, default=_encode) + "\n"


def _encode(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot spool a {type(value).__name__}")


def read_spool(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) pairs of a spool file; a torn last line (killed mid-write, or a disk that
    filled up) is skipped — even one cut inside a UTF-8 character, hence bytes per line.

    The rows are as spooled, of whichever version wrote them (a column it did not know is
    absent): :func:`replay` reads them as the row type of their table."""
    with path.open("rb") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, or UnicodeDecodeError of a torn character
                continue
            table, row = record["table"], record["row"]
            for column in _TIMESTAMP_COLUMNS.get(table, ()):
                if isinstance(row.get(column), str):
                    row[column] = datetime.fromisoformat(row[column])
            yield table, row


def leftover_spools(output: Path | Location, run_id: str) -> list[Path]:
    directory = spool_dir(output, run_id)
    return sorted(directory.glob("*.jsonl")) if directory.is_dir() else []


Curate = Callable[[list[SampleRow]], tuple[list[SampleRow], list[RejectedRow]]]


@dataclass
class Replay:
    """What a run's leftover spools hold that its shards do not, before anything is written.

    The spools stay until :meth:`commit`: a process dying in between (say, while the judge
    grades ``samples``) replays them again, and rows committed by then are skipped.
    """

    output: Location
    run_id: str
    samples: list[SampleRow]
    rejected: list[RejectedRow]
    failures: list[FailureRow]
    spools: list[Path]

    def commit(self) -> dict[str, int]:
        """Write the rows as new shards, then delete the spools; rows written, by table."""
        from distillery.storage.shards import write_shard

        recovered = {"samples": 0, "rejected": 0, "failures": 0}
        tables = (("samples", self.samples), ("rejected", self.rejected))
        for table, rows in (*tables, ("failures", self.failures)):
            if rows:
                write_shard(self.output, table, self.run_id, rows, 0)
                recovered[table] = len(rows)
        for path in self.spools:
            path.unlink(missing_ok=True)
        return recovered


def replay(output: Path | Location, run_id: str, curate: Curate | None = None) -> Replay:
    """Adopt complete shards a crash left outside the manifest, and read every leftover spool:
    rows not committed yet, answers passed through ``curate`` (the run's filters) as a batch
    would. Nothing is written or deleted until :meth:`Replay.commit`."""
    from distillery.storage.shards import read_column, reconcile

    output = as_location(output)
    for table in ("samples", "rejected", "failures"):
        reconcile(output, table, run_id)
    spools = leftover_spools(output, run_id)
    if not spools:
        return Replay(output, run_id, [], [], [], [])
    answered = {
        sample_id
        for table in ("samples", "rejected")
        for sample_id in read_column(output, table, run_id, "sample_id")
    }
    failed = {
        (sid, ts.isoformat())
        for sid, ts in zip(
            read_column(output, "failures", run_id, "sample_id"),
            read_column(output, "failures", run_id, "created_at"),
            strict=True,
        )
    }
    answers: list[SampleRow] = []
    failures: list[FailureRow] = []
    for path in spools:
        for table, row in read_spool(path):
            if table == "failures":
                key = (row["sample_id"], row["created_at"].isoformat())
                if key not in failed:
                    failed.add(key)
                    failures.append(cast(FailureRow, row))
            elif row["sample_id"] not in answered:
                answered.add(row["sample_id"])
                answers.append(cast(SampleRow, row))
    kept, rejected = curate(answers) if curate is not None else (answers, [])
    return Replay(output, run_id, kept, rejected, failures, spools)


def recover(output: Path | Location, run_id: str, curate: Curate | None = None) -> dict[str, int]:
    """Bring a run's storage to a clean state before it resumes; returns rows recovered by table.

    Adopts complete shards a crash left outside the manifest, then replays every leftover spool
    into new shards — skipping rows already committed, and passing answers through ``curate``
    (the run's filters) as a batch would — and only then deletes the spools.
    """
    return replay(output, run_id, curate).commit()
