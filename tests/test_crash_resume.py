"""Promise 2, for real: kill -9 and Ctrl-C mid-run, then the same command resumes.

Nothing duplicated, nothing re-bought beyond what was in flight at a kill, every shard readable.
"""

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.storage.catalog import open_catalog

from .conftest import write_job

pytestmark = pytest.mark.slow

PROMPTS = 240
CONCURRENCY = 8


def start_run(config: Path, prefect_api: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "crash"],
        env={**os.environ, "EMULATOR_API_KEY": "k", "PREFECT_API_URL": prefect_api},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_requests(
    emulator: RunningEmulator, at_least: int, process: subprocess.Popen[str]
) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        requests = emulator.stats()["requests"]
        assert isinstance(requests, int)
        if requests >= at_least:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("the run sent no requests in time")


def every_shard_readable(output: Path) -> None:
    for shard in output.rglob("part-*.parquet"):
        duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{shard}')").fetchall()


def job(tmp_path: Path, url: str) -> Path:
    config = write_job(tmp_path, url, prompts=PROMPTS)
    text = config.read_text().replace("concurrency: 8", f"concurrency: {CONCURRENCY}")
    config.write_text(text.replace("batch_size: 5", "batch_size: 40"))
    return config


def _kill_chain(prefect_api: str, directory: Path, seed: int, kills_wanted: int) -> None:
    """Kill -9 one run ``kills_wanted`` times mid-flight, then let it finish; check the result."""
    rng = random.Random(seed)
    kills = 0
    directory.mkdir()
    with RunningEmulator(EmulatorOptions(seed=seed, latency_ms=40)) as emulator:
        config = job(directory, emulator.url)
        while kills < kills_wanted:
            process = start_run(config, prefect_api)
            sent_before = emulator.stats()["requests"]
            assert isinstance(sent_before, int)
            if wait_for_requests(emulator, sent_before + rng.randint(1, 25), process):
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.communicate(timeout=60)
            every_shard_readable(directory / "out")
        final = start_run(config, prefect_api)
        _, stderr = final.communicate(timeout=180)
        assert final.returncode == 0, stderr
        served = emulator.stats()["served_ok"]
    con = open_catalog(directory / "out")
    answers = con.execute(
        """SELECT count(*), count(DISTINCT sample_id) FROM
           (SELECT sample_id FROM samples UNION ALL SELECT sample_id FROM rejected)"""
    ).fetchall()
    assert answers == [(PROMPTS, PROMPTS)]  # every prompt answered once, none twice
    assert isinstance(served, int)
    # Bought twice: only answers that were in flight when a process was killed.
    assert served - PROMPTS <= kills * CONCURRENCY
    every_shard_readable(directory / "out")
    assert not list((directory / "out").rglob("*.tmp"))


def test_kill_9_at_random_moments_then_resume(prefect_api: str, tmp_path: Path) -> None:
    # Ten kills in all, as two independent runs side by side (each kill costs a process
    # start-up, which two cores can overlap).
    with ThreadPoolExecutor(2) as pool:
        chains = [
            pool.submit(_kill_chain, prefect_api, tmp_path / f"chain{i}", 1234 + i, 5)
            for i in range(2)
        ]
        for chain in chains:
            chain.result()


def test_ctrl_c_stops_gracefully_and_resumes_without_rebuying(
    prefect_api: str, tmp_path: Path
) -> None:
    with RunningEmulator(EmulatorOptions(seed=4, latency_ms=40)) as emulator:
        config = job(tmp_path, emulator.url)
        process = start_run(config, prefect_api)
        assert wait_for_requests(emulator, 30, process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, stderr
        assert "resume with: distillery run" in stderr and "--run-id crash" in stderr
        stopped_at = open_catalog(tmp_path / "out").execute("SELECT count(*) FROM samples")
        partial = stopped_at.fetchall()[0][0]
        assert 0 < partial < PROMPTS
        resumed = start_run(config, prefect_api)
        _, stderr = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, stderr
        served = emulator.stats()["served_ok"]
    con = open_catalog(tmp_path / "out")
    assert con.execute("SELECT count(DISTINCT sample_id), count(*) FROM samples").fetchall() == [
        (PROMPTS, PROMPTS)
    ]
    assert served == PROMPTS  # every answer in flight at Ctrl-C was kept: nothing bought twice
    status = con.execute("SELECT status, invocations FROM runs").fetchall()
    assert status == [("completed", 2)]
