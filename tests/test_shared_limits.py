"""Two worker processes, one teacher limit held by the Prefect server.

The emulator enforces the limit server-side (as a provider does), so any moment the two workers
together went over it would show up as a 429 it refused.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.storage.catalog import open_catalog

from .conftest import write_job

pytestmark = pytest.mark.slow

RPM, WINDOW_S, PROMPTS = 2400, 3.0, 100  # 120 requests per 3 s window, 40/s


def worker_job(directory: Path, url: str, name: str) -> Path:
    directory.mkdir()
    config = write_job(directory, url, prompts=PROMPTS)
    limits = f"    limits: {{rpm: {RPM}, window_s: {WINDOW_S}, shared: true}}"
    text = config.read_text().replace("    max_attempts: 2", f"    max_attempts: 2\n{limits}")
    config.write_text(text.replace("concurrency: 8", "concurrency: 16"))
    # Distinct prompts per worker: the run is split between them.
    prompts = directory / "prompts.jsonl"
    prompts.write_text(prompts.read_text().replace('"id": "p', f'"id": "{name}-p'))
    return config


def test_two_workers_share_one_limit(prefect_api: str, tmp_path: Path) -> None:
    options = EmulatorOptions(seed=5, latency_ms=20, rpm=RPM, window_s=WINDOW_S)
    with RunningEmulator(options) as emulator:
        configs = [worker_job(tmp_path / n, emulator.url, n) for n in ("a", "b")]
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
    assert stats["rate_limited"] == 0  # together they never went over the limit
    assert stats["served_ok"] == 2 * PROMPTS
    for config in configs:
        con = open_catalog(config.parent / "out")
        assert con.execute("SELECT count(DISTINCT sample_id) FROM samples").fetchall() == [
            (PROMPTS,)
        ]
