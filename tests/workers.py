"""Run one job split across worker processes that share a teacher limit (used by two tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.storage.catalog import open_catalog

from .conftest import write_job


def worker_job(directory: Path, url: str, name: str, prompts: int, rpm: int, window: float) -> Path:
    """A worker's share of the job: distinct prompts, the same teacher and shared limit."""
    directory.mkdir(parents=True)
    config = write_job(directory, url, prompts=prompts)
    limits = f"    limits: {{rpm: {rpm}, window_s: {window}, shared: true}}"
    text = config.read_text().replace("    max_attempts: 2", f"    max_attempts: 2\n{limits}")
    config.write_text(text.replace("concurrency: 8", "concurrency: 16"))
    prompts_file = directory / "prompts.jsonl"
    prompts_file.write_text(prompts_file.read_text().replace('"id": "p', f'"id": "{name}-p'))
    return config


def run_split_job(
    tmp_path: Path, prefect_api: str, prompts: int, rpm: int, window: float
) -> dict[str, object]:
    """Two worker processes against one limiting emulator; returns its stats."""
    options = EmulatorOptions(seed=5, latency_ms=20, rpm=rpm, window_s=window)
    with RunningEmulator(options) as emulator:
        configs = [
            worker_job(tmp_path / n, emulator.url, n, prompts, rpm, window) for n in ("a", "b")
        ]
        env = {**os.environ, "EMULATOR_API_KEY": "k", "PREFECT_API_URL": prefect_api}
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "distillery", "run", str(c), "--run-id", "shared"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in configs
        ]
        for worker in workers:
            _, stderr = worker.communicate(timeout=240)
            assert worker.returncode == 0, stderr[-2000:]
        stats = emulator.stats()
    for config in configs:
        con = open_catalog(config.parent / "out")
        assert con.execute("SELECT count(DISTINCT sample_id) FROM samples").fetchall() == [
            (prompts,)
        ]
    return stats
