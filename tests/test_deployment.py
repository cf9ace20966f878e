"""The whole scheduled-deployment path: prefect.yaml -> deploy -> worker -> Completed -> shards.

A real process work pool and worker against the session's Prefect server; the deployment
runs the example job against its in-process emulator.
"""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.storage.catalog import open_catalog

from .conftest import REPO

pytestmark = pytest.mark.slow


def prefect(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_deploy_trigger_worker_completes(prefect_api: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    prefect("work-pool", "create", "distillery", "--type", "process", "--overwrite", env=env)
    prefect("--no-prompt", "deploy", "--name", "emulator-nightly", env=env)
    output = tmp_path / "deployed"
    run = prefect(
        "deployment",
        "run",
        "generate-job/emulator-nightly",
        "--param",
        f"output={output}",
        "--param",
        "run_id=nightly-1",
        env=env,
    )
    assert "nightly-1" in run or "Created flow run" in run
    prefect("worker", "start", "--pool", "distillery", "--run-once", env=env, timeout=240)

    async def final_state() -> str:
        from prefect import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["emulator-nightly"])
                )
            )
        assert len(runs) >= 1
        return str(runs[0].state.type.value if runs[0].state else None)

    assert asyncio.run(final_state()) == "COMPLETED"
    con = open_catalog(output)
    assert con.execute("SELECT run_id, count(*) FROM samples GROUP BY 1").fetchall() == [
        ("nightly-1", 240)
    ]
