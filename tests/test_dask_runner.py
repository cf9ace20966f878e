"""``task_runner: {type: dask}``: batches on Dask worker processes, a teacher's limit divided
between them, a stop reaching them all — a real LocalCluster, a real Prefect flow run, a
limiting emulator over loopback, and DuckDB reading the shards."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from subprocess import PIPE, Popen

import pytest

from distillery.config import TaskRunnerConfig, load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.errors import ConfigError, FatalRunError
from distillery.flows.dask_runner import DaskBatches, dask_task_runner, process_share
from distillery.flows.generate import generate
from distillery.generators.batch import WorkItem
from distillery.generators.prompts import Prompt
from distillery.storage.catalog import open_catalog
from distillery.storage.spool import leftover_spools

from .conftest import write_job


def _job(tmp_path: Path, url: str, extra: str, limits: str = "", prompts: int = 12) -> Path:
    config = write_job(tmp_path, url, prompts=prompts, extra=extra)
    if limits:
        text = config.read_text()
        config.write_text(text.replace("    max_attempts: 2", f"    max_attempts: 2\n{limits}"))
    return config


@pytest.mark.parametrize(
    ("extra", "limits", "message"),
    [
        (
            "budget_usd: 5\ntask_runner: {type: dask}",
            "",
            "config: budget_usd is enforced in one process only",
        ),
        (
            "task_runner: {type: dask, address: 'tcp://10.0.0.5:8786'}",
            "    limits: {rpm: 600}",
            "teachers[0].limits.shared must be true with a remote Dask cluster",
        ),
        (
            "task_runner: {type: dask}",
            "    budget_usd: 2",
            "config: teachers[0].budget_usd is enforced in one process only",
        ),
        ("task_runner: {address: 'tcp://10.0.0.5:8786'}", "", "address needs type: dask"),
        (
            "task_runner: {type: dask, address: 'tcp://h:8786', workers: 4}",
            "",
            "workers sizes a local cluster",
        ),
        ("task_runner: {type: dask, address: 'h:8786'}", "", "task_runner.address: String"),
        ("task_runner: {type: ray}", "", "task_runner.type: Input should be 'thread' or 'dask'"),
    ],
)
def test_what_a_dask_run_can_not_enforce_is_one_line(
    tmp_path: Path, extra: str, limits: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_job(tmp_path, "http://127.0.0.1:9", extra, limits))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_remote_cluster_with_shared_limits_is_accepted(tmp_path: Path) -> None:
    extra = "task_runner: {type: dask, address: 'tcp://10.0.0.5:8786'}"
    job = load_config(
        _job(tmp_path, "http://127.0.0.1:9", extra, "    limits: {rpm: 600, shared: true}")
    )
    assert job.task_runner.address == "tcp://10.0.0.5:8786"


def test_the_runner_does_not_change_the_config_hash(tmp_path: Path) -> None:
    """Lineage: resuming a run under another runner must not look like another config."""
    job = load_config(_job(tmp_path, "http://127.0.0.1:9", ""))
    dask = job.model_copy(update={"task_runner": TaskRunnerConfig(type="dask", workers=3)})
    slower = job.model_copy(update={"batch_size": 7})
    assert dask.config_hash() == job.config_hash() != slower.config_hash()


def test_each_process_gets_an_even_share(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    config = _job(tmp_path / "a", "http://127.0.0.1:9", "", "    limits: {rpm: 900, tpm: 3000}")
    config.write_text(config.read_text().replace("concurrency: 8", "concurrency: 7"))
    job = load_config(config)
    share = process_share(job, 3).teachers[0]
    assert (share.concurrency, share.limits.rpm, share.limits.tpm) == (2, 300, 1000)
    # Sample ids do not depend on limits or concurrency: both runners name a sample the same.
    assert WorkItem(_prompt(), share).sample_id == WorkItem(_prompt(), job.teachers[0]).sample_id
    shared = job.teachers[0].model_copy(
        update={"limits": job.teachers[0].limits.model_copy(update={"shared": True})}
    )
    held = process_share(job.model_copy(update={"teachers": [shared]}), 3).teachers[0]
    assert (held.concurrency, held.limits.rpm) == (2, 900)  # the Prefect server holds it


def _prompt() -> Prompt:
    return Prompt("p0", [{"role": "user", "content": "hi"}])


def test_without_prefect_dask_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if it were not installed: the import system raises ImportError for None entries.
    monkeypatch.setitem(sys.modules, "prefect_dask", None)
    monkeypatch.setitem(sys.modules, "prefect_dask.task_runners", None)
    with pytest.raises(ConfigError, match=r"pip install 'distillery\[dask\]'"):
        dask_task_runner(TaskRunnerConfig(type="dask"))


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    import dask

    # Imported first: it registers its config defaults, which the override below must not
    # undo when it restores the config it found.
    import distributed  # noqa: F401

    extra = "task_runner: {type: dask, address: 'tcp://127.0.0.1:9'}"
    job = load_config(_job(tmp_path, "http://127.0.0.1:9", extra))

    async def start() -> None:
        async with DaskBatches(job, "unreachable"):
            raise AssertionError("connected to a closed port")

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(FatalRunError) as caught,
    ):
        asyncio.run(start())
    assert str(caught.value).startswith("task_runner: cannot start or reach tcp://127.0.0.1:9: ")
    assert "\n" not in str(caught.value)


PROMPTS = 60
RPM, WINDOW = 1200, 2.0  # 40 requests in any 2 s, so 20 per worker process


def _wait_for_requests(emulator: RunningEmulator, at_least: int, process: Popen[str]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        requests = emulator.stats()["requests"]
        assert isinstance(requests, int)
        if requests >= at_least:
            return
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=60)
    raise AssertionError(f"the run sent fewer than {at_least} requests: {stderr[-2000:]}")


@pytest.mark.slow
def test_a_local_cluster_shares_the_limit_and_stops_on_ctrl_c(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "test-key-123")  # inherited by the worker processes
    options = EmulatorOptions(seed=5, latency_ms=20, rpm=RPM, window_s=WINDOW)
    with RunningEmulator(options) as emulator:
        limits = f"    limits: {{rpm: {RPM}, window_s: {WINDOW}}}"
        extra = "task_runner: {type: dask, workers: 2, threads_per_worker: 2}"
        config = _job(tmp_path, emulator.url, extra, limits, prompts=PROMPTS)
        job = load_config(config)
        process = Popen(
            [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "dask"],
            env={**os.environ, "PREFECT_API_URL": prefect_api},
            stdout=PIPE,
            stderr=PIPE,
            text=True,
            start_new_session=True,
        )
        _wait_for_requests(emulator, 10, process)
        # A terminal's Ctrl-C: SIGINT to the whole process group, the cluster's workers too.
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 130, stderr[-2000:]
        assert "--run-id dask" in stderr
        con = open_catalog(job.output)
        partial = con.execute("SELECT count(*) FROM samples").fetchall()[0][0]
        assert 0 < partial < PROMPTS  # batches stopped, and what had been sent was kept
        resumed = asyncio.run(generate(job=job, run_id="dask"))
        stats = emulator.stats()

    assert resumed.status == "completed" and resumed.requests_skipped == partial
    con = open_catalog(job.output)
    counts = con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchall()
    assert counts == [(PROMPTS, PROMPTS)]  # every prompt answered exactly once
    # Every answer in flight at Ctrl-C landed and was kept by its worker: nothing bought twice.
    assert stats["served_ok"] == PROMPTS
    assert leftover_spools(Path(job.output), "dask") == []
    assert con.execute("SELECT status, invocations FROM runs").fetchall() == [("completed", 2)]
    # The two processes together stayed under the teacher's limit: the emulator, enforcing it
    # as a provider does, refused nothing.
    assert stats["rate_limited"] == 0
    # The batches really ran in two processes, neither of them this one.
    assert len(resumed.processes) >= 2
    assert all(not p.endswith(f":{os.getpid()}") for p in resumed.processes)
    # Lineage from the workers: each sample names its batch's task run.
    missing = con.execute("SELECT count(*) FILTER (task_run_id IS NULL) FROM samples")
    assert missing.fetchall() == [(0,)]
