"""The sample ids a run has already answered: what a resume must not send again.

A sample id in the run's ``samples`` or ``rejected`` shards was paid for; one only in
``failures`` is tried again. A resume of a million-request run asks "is this id done?" a
million times, so the ids are held as one sorted numpy array of fixed-width bytes (32 bytes an
id, searched by bisection) rather than a Python set of strings (~100 bytes an id): the ids
stream in shard by shard and the plan asks about them prompt by prompt, so neither side is ever
a list of everything (BENCHMARKS.md, "Memory of a run").
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillery.storage.location import Location
from distillery.storage.shards import committed_shards, read_shard

#: The tables whose rows count as answered.
ANSWERED_TABLES = ("samples", "rejected")


class DoneIds:
    """A sorted, duplicate-free array of sample ids with ``in`` and ``len``."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self._ids = np.unique(ids) if ids is not None else np.empty(0, dtype="S1")

    @classmethod
    def of_run(cls, output: Location, run_id: str) -> DoneIds:
        """The ids in the run's committed samples and rejected shards, read a shard at a time."""
        parts = [
            np.array(
                read_shard(shard, columns=["sample_id"]).column("sample_id").to_pylist(),
                dtype="S",
            )
            for table in ANSWERED_TABLES
            for shard in committed_shards(output, table, run_id)
        ]
        parts = [part for part in parts if part.size]
        return cls(np.concatenate(parts) if parts else None)

    @classmethod
    def of_submission(cls, output: Location, run_id: str, provider_batch_id: str) -> DoneIds:
        """The ids a collection of provider batch ``provider_batch_id`` already committed, as
        samples, rejections or failures: a collection stopped half-way is taken up again
        without writing a row twice."""
        parts = []
        for table in (*ANSWERED_TABLES, "failures"):
            for shard in committed_shards(output, table, run_id):
                rows = read_shard(shard, columns=["sample_id", "provider_batch_id"])
                # A null provider_batch_id (an online row) compares as null: filtered out.
                mine = pc.equal(rows.column("provider_batch_id"), pa.scalar(provider_batch_id))
                ids = rows.filter(mine).column("sample_id").to_pylist()
                if ids:
                    parts.append(np.array(ids, dtype="S"))
        return cls(np.concatenate(parts) if parts else None)

    def union(self, other: DoneIds) -> DoneIds:
        """The ids of both."""
        if not other._ids.size:
            return self
        if not self._ids.size:
            return other
        return DoneIds(np.concatenate([self._ids, other._ids]))

    def __contains__(self, sample_id: object) -> bool:
        if not self._ids.size or not isinstance(sample_id, str):
            return False
        key = sample_id.encode()
        at = int(np.searchsorted(self._ids, key))
        return at < self._ids.size and bytes(self._ids[at]) == key

    def __len__(self) -> int:
        return int(self._ids.size)
