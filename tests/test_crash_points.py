"""A kill at every step of compaction and dedup leaves a dataset its manifests describe.

Each case ends a real process at a named step (``storage/failpoints.py``: ``os._exit``, as
``kill -9`` would: no cleanup runs), then checks what a reader sees at once, and what a repair
(the next compaction, dedup or resumed run, all of which reconcile first) leaves: every row
exactly once, nothing doubled, nothing lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from distillery.config import DedupConfig
from distillery.flows.curate import dedup_run
from distillery.generators.records import content_hash
from distillery.storage.catalog import open_catalog
from distillery.storage.compact import compact
from distillery.storage.failpoints import ENV, KILLED
from distillery.storage.schema import TABLES
from distillery.storage.shards import read_manifest, write_shard
from distillery.storage.spool import replay

from .test_storage import sample

COMPACTION_STEPS = [
    "replace:published",  # merged shard published, manifest not written
    "replace:committed",  # manifest swapped, old files not deleted
    "replace:deleted",  # old files deleted, retired list not cleared
    "replace:published@2",  # the second group's merge, after the first committed
    "replace:committed@2",
]
DEDUP_STEPS = [
    "write:published",  # the rejected shard published, not in the manifest
    "dedup:rejected-written",  # rejected committed, samples not yet rewritten
    "replace:published",
    "replace:committed",
    "replace:deleted",
]


def crash_at(step: str, code: str, *args: str) -> None:
    """Run ``code`` in a fresh interpreter that dies at ``step``."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, ENV: step},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == KILLED, result.stderr  # it did reach the step


def ids(output: Path, table: str) -> Counter[str]:
    rows = open_catalog(output).execute(f"SELECT sample_id FROM {table}").fetchall()
    return Counter(str(row[0]) for row in rows)


def only_listed_files(output: Path) -> None:
    """Every Parquet file on disk is one a manifest names (no orphan, no leftover)."""
    for directory in [d for table in TABLES for d in (output / table).glob("run_id=*")]:
        listed = set(read_manifest(directory))
        assert {p.name for p in directory.glob("*.parquet")} == listed, directory
        assert not list(directory.glob(".*.tmp"))


def small_shards(output: Path) -> set[str]:
    for index in range(7):
        write_shard(output, "samples", "r1", [sample(f"s{index}"), sample(f"t{index}")], 0)
    return {f"{p}{i}" for p in "st" for i in range(7)}


COMPACT = "import sys; from pathlib import Path; from distillery.storage.compact import compact; "
COMPACT += "compact(Path(sys.argv[1]), target_rows=6)"


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_kill_in_compaction_loses_and_doubles_nothing(tmp_path: Path, step: str) -> None:
    expected = small_shards(tmp_path)
    crash_at(step, COMPACT, str(tmp_path))
    # A reader right after the crash sees every row once: the manifest is the only truth.
    assert ids(tmp_path, "samples") == Counter(expected)
    # The resume of the run repairs the partition (this used to adopt the merged shard as an
    # orphan beside the shards it merged: every row twice).
    replay(tmp_path, "r1").commit()
    assert ids(tmp_path, "samples") == Counter(expected)
    only_listed_files(tmp_path)
    compact(tmp_path, target_rows=6)
    assert ids(tmp_path, "samples") == Counter(expected)
    only_listed_files(tmp_path)


def with_duplicates(output: Path) -> None:
    """An earlier run, and run r1 whose rows repeat it and each other."""
    start = datetime.now(UTC) - timedelta(hours=1)

    def row(sample_id: str, run_id: str, text: str, minutes: int) -> dict[str, Any]:
        return {
            **sample(sample_id, run_id),
            "response_text": text,
            "content_hash": content_hash(text),
            "created_at": start + timedelta(minutes=minutes),
        }

    write_shard(output, "runs", "r0", [run_record("r0", start)], 0)
    write_shard(output, "runs", "r1", [run_record("r1", start + timedelta(minutes=5))], 0)
    write_shard(output, "samples", "r0", [row("old", "r0", "the answer is 42", 0)], 0)
    texts = ["the answer is 42", "alpha beta", "alpha beta", "gamma", "delta", "gamma"]
    for part in range(3):
        rows = [row(f"n{i}", "r1", texts[i], 10 + i) for i in range(len(texts)) if i % 3 == part]
        write_shard(output, "samples", "r1", rows, 0)


def run_record(run_id: str, started: datetime) -> dict[str, Any]:
    return {"run_id": run_id, "invocation_id": run_id, "started_at": started, "status": "done"}


DEDUP = "import sys; from pathlib import Path; from distillery.config import DedupConfig; "
DEDUP += "from distillery.flows.curate import dedup_run; "
DEDUP += "dedup_run(Path(sys.argv[1]), 'r1', None, DedupConfig())"


def reference(tmp_path: Path) -> tuple[Counter[str], Counter[str]]:
    clean = tmp_path / "reference"
    with_duplicates(clean)
    removed = dedup_run(clean, "r1", None, DedupConfig())
    assert removed == {"duplicate": 3}  # n0 (history), n2 and n5 (earlier rows of r1)
    return ids(clean, "samples"), ids(clean, "rejected")


@pytest.mark.parametrize("step", DEDUP_STEPS)
def test_kill_in_dedup_then_dedup_again_is_the_clean_result(tmp_path: Path, step: str) -> None:
    samples, rejected = reference(tmp_path)
    output = tmp_path / "data"
    with_duplicates(output)
    crash_at(step, DEDUP, str(output))
    # Right after the crash: every sample of r1 is still there, once.
    assert set(ids(output, "samples")) >= set(samples)
    assert max(ids(output, "samples").values()) == 1
    dedup_run(output, "r1", None, DedupConfig())
    assert (ids(output, "samples"), ids(output, "rejected")) == (samples, rejected)
    only_listed_files(output)


def test_two_copies_of_one_sample_are_not_each_others_duplicates(tmp_path: Path) -> None:
    # What two processes writing one run left behind before runs had a writer lock: every
    # sample twice. Dedup used to reject both copies of each as the other's duplicate.
    rows = [sample(f"s{i}") | {"response_text": f"text {i}"} for i in range(4)]
    for row in rows:
        row["content_hash"] = content_hash(str(row["response_text"]))
    write_shard(tmp_path, "samples", "r1", rows, 0)
    write_shard(tmp_path, "samples", "r1", rows, 0)
    assert dedup_run(tmp_path, "r1", [], DedupConfig()) == {}
    assert ids(tmp_path, "samples") == Counter(f"s{i}" for i in range(4))
    assert ids(tmp_path, "rejected") == Counter()
