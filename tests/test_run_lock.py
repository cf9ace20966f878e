"""One writer per run: a second process on the same run id and output is refused, names the
holder, and sends nothing; a lock left by a killed process is taken over at once."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.storage.catalog import open_catalog
from distillery.storage.compact import compact
from distillery.storage.location import Location
from distillery.storage.run_lock import (
    LEASE_TTL_S,
    RunBusyError,
    RunLease,
    lock_path,
    run_writer,
)
from distillery.storage.shards import write_shard

from .conftest import write_job
from .test_storage import sample

HOLD = """
import sys, time
from pathlib import Path
from distillery.storage.run_lock import run_writer
with run_writer(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def hold(output: Path, run_id: str) -> subprocess.Popen[str]:
    """Another process holding the run's lock until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output), run_id], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_with_the_holder_and_a_killed_holder_frees_it(
    tmp_path: Path,
) -> None:
    holder = hold(tmp_path, "r1")
    try:
        with pytest.raises(RunBusyError) as refused, run_writer(tmp_path, "r1"):
            pass
        message = str(refused.value)
        assert "\n" not in message
        assert "run r1" in message and f"pid {holder.pid}" in message
        assert socket.gethostname() in message
        assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", message)
        with run_writer(tmp_path, "r2"):  # another run of the same output is free
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 left the lock file behind; the kernel released the lock itself.
    assert lock_path(tmp_path, "r1").exists()
    with run_writer(tmp_path, "r1"):
        pass


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with run_writer(tmp_path, "r1"), run_writer(tmp_path, "r1", "dedup"):
        pass
    with run_writer(tmp_path, "r1"):  # and released once the outer one ends
        pass


def test_compaction_skips_a_run_being_written_and_names_it(tmp_path: Path) -> None:
    for index in range(3):
        write_shard(tmp_path, "samples", "busy", [sample(f"b{index}", "busy")], 0)
        write_shard(tmp_path, "samples", "idle", [sample(f"i{index}", "idle")], 0)
    holder = hold(tmp_path, "busy")
    try:
        done = compact(tmp_path, target_rows=10)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [(r.run_id, r.shards_after) for r in done.results] == [("idle", 1)]
    assert list(done.skipped) == ["busy"] and f"pid {holder.pid}" in done.skipped["busy"]


class MemoryObject(Location):
    """One object in memory: enough of a Location for the lease's read/replace/delete."""

    uri = fs_path = "mem://lease"
    local_path = None

    def __init__(self) -> None:
        self.content: bytes | None = None

    filesystem = property(lambda self: None)

    def child(self, *names: str) -> Location:
        raise NotImplementedError

    def is_dir(self) -> bool:
        return False

    def names(self) -> list[str]:
        return []

    def subdirs(self) -> list[str]:
        return []

    def ensure_dir(self) -> None:
        pass

    def size(self) -> int:
        return len(self.content or b"")

    def read_bytes(self) -> bytes | None:
        return self.content

    def replace(self, content: bytes) -> None:
        self.content = content

    def delete(self) -> None:
        self.content = None

    def lock(self):
        raise NotImplementedError

    def publish(self, write, part, stem="part"):
        raise NotImplementedError


def test_an_object_storage_lease_is_refused_while_renewed_and_taken_over_once_expired() -> None:
    now = [1_000.0]
    lease_object = MemoryObject()

    def lease() -> RunLease:
        return RunLease(lease_object, "r1", "run", clock=lambda: now[0], sleep=lambda s: None)

    first = lease()
    first.acquire()
    try:
        now[0] += LEASE_TTL_S / 2
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}"):
            lease().acquire()
        now[0] += LEASE_TTL_S  # the holder stopped renewing (died)
        second = lease()
        second.acquire()
        second.release()
        assert lease_object.content is None  # released: nothing left behind
    finally:
        first._stop.set()


@pytest.mark.slow
def test_two_runs_of_one_run_id_started_together_buy_each_answer_once(
    prefect_api: str, tmp_path: Path
) -> None:
    prompts = 120
    # 120 answers of 0.6 s at concurrency 8 keep the first run sending ~9 s: on a loaded
    # machine a 2 s run could end before its twin had started, and the two never overlap.
    with RunningEmulator(EmulatorOptions(seed=3, latency_ms=600)) as emulator:
        config = write_job(tmp_path, emulator.url, prompts=prompts)
        command = [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "same"]
        env = {**os.environ, "EMULATOR_API_KEY": "k", "PREFECT_API_URL": prefect_api}
        runs = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        results = [
            (p.wait(timeout=240), p.stderr.read().decode() if p.stderr else "") for p in runs
        ]
        served = emulator.stats()["served_ok"]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(stderr for code, stderr in results if code == 1)
    lines = [line for line in refused.splitlines() if line.strip()]
    assert len(lines) == 1 and "run same is being written by" in lines[0], refused
    assert served == prompts  # nothing bought twice
    rows = open_catalog(tmp_path / "out").execute("SELECT sample_id FROM samples").fetchall()
    assert len(Counter(rows)) == prompts and max(Counter(rows).values()) == 1
    # Started one after the other, the second resumes the finished run and sends nothing.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
