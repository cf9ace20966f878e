"""The generate flow for real: a Prefect server, the emulator over loopback, Parquet, DuckDB."""

import asyncio
import json
from pathlib import Path
from uuid import UUID

import pytest

from distillery.config import load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.errors import FatalRunError
from distillery.flows.generate import generate
from distillery.storage.catalog import open_catalog

from .conftest import write_job

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "test-key-123")


def test_flow_end_to_end_then_rerun_adds_nothing(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    job = load_config(write_job(tmp_path, emulator.url, prompts=12, teachers=2))
    summary = asyncio.run(generate(job=job, run_id="r1"))
    assert summary.status == "completed"
    assert (summary.samples, summary.failures, summary.requests_planned) == (24, 0, 24)
    stats = emulator.stats()
    assert stats["served_ok"] == 24

    con = open_catalog(job.output)
    rows = con.execute(
        """SELECT count(*), count(DISTINCT sample_id), count(DISTINCT task_run_id),
                  bool_and(teacher_model_version <> teacher_model),
                  bool_and(response_text <> '' AND response_id IS NOT NULL),
                  sum(completion_tokens), sum(prompt_tokens), min(flow_run_id)
           FROM samples"""
    ).fetchall()[0]
    count, distinct, tasks, versioned, answered, completion, prompt, flow_run_id = rows
    assert (count, distinct) == (24, 24)
    assert tasks == 3  # 12 prompts in batches of 5: one Prefect task per batch
    assert versioned and answered
    assert completion == stats["completion_tokens"] and prompt == stats["prompt_tokens"]
    assert flow_run_id == summary.flow_run_id
    hashes = con.execute(
        "SELECT count(DISTINCT request_hash), count(request_hash) FROM samples"
    ).fetchall()
    assert hashes == [(24, 24)]  # one fingerprint per distinct request, never missing
    params = con.execute(
        "SELECT DISTINCT teacher_name, params->>'temperature' FROM samples ORDER BY 1"
    ).fetchall()
    assert params == [("t0", "0.1"), ("t1", "0.2")]

    again = asyncio.run(generate(job=job, run_id="r1"))
    assert (again.requests_planned, again.requests_skipped, again.samples) == (0, 24, 0)
    assert emulator.stats()["served_ok"] == 24  # nothing bought twice
    con = open_catalog(job.output)
    assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchall() == [
        (24, 24)
    ]
    runs = con.execute("SELECT run_id, invocations, samples, status FROM runs").fetchall()
    assert runs == [("r1", 2, 24, "completed")]
    artifacts = asyncio.run(_artifacts(summary.flow_run_id))
    table = json.loads(str(artifacts["test-job-teachers"]))
    assert [(row["teacher"], row["samples"]) for row in table] == [("t0", 12), ("t1", 12)]
    card = str(artifacts["test-job-card"])
    assert "gpt-4o-mini-" in card and "openai-no-competing-models" in card
    assert float(str(artifacts["test-job-progress"])) == 100.0
    names = asyncio.run(_task_run_names(summary.flow_run_id))
    assert {n for n in names if n.startswith("batch-")} == {
        f"batch-{i:05d} [t0, t1]" for i in range(3)
    }


async def _task_run_names(flow_run_id: str | None) -> set[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))]))
        )
    return {run.name for run in runs}


async def _artifacts(flow_run_id: str | None) -> dict[str, object]:
    """The latest artifact of each key the first invocation's flow run created."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))])
            )
        )
    return {str(a.key): a.data for a in found}


def test_wrong_key_stops_the_run_naming_the_variable(prefect_api: str, tmp_path: Path) -> None:
    with RunningEmulator(EmulatorOptions(require_key="right-key")) as emulator:
        job = load_config(write_job(tmp_path, emulator.url, prompts=30))
        with pytest.raises(FatalRunError) as caught:
            asyncio.run(generate(job=job, run_id="bad-key"))
        requests = emulator.stats()["requests"]
    message = str(caught.value)
    assert "EMULATOR_API_KEY" in message and "test-key-123" not in message
    # Stopped at once: at most the requests already in flight, not one per prompt.
    assert isinstance(requests, int) and requests <= 8
    runs = open_catalog(job.output).execute("SELECT status, samples FROM runs").fetchall()
    assert runs == [("failed", 0)]


def test_failed_requests_become_failure_rows(prefect_api: str, tmp_path: Path) -> None:
    # Nothing listens on this port: every attempt is a connection error.
    job = load_config(write_job(tmp_path, "http://127.0.0.1:9", prompts=3))
    summary = asyncio.run(generate(job=job, run_id="down"))
    assert (summary.status, summary.samples, summary.failures) == ("failed", 0, 3)
    assert summary.failures_by_class == {"connection_error": 3}
    rows = (
        open_catalog(job.output)
        .execute("SELECT error_class, attempts, prompt_id FROM failures ORDER BY prompt_id")
        .fetchall()
    )
    assert rows == [("connection_error", 2, f"p{i}") for i in range(3)]


def test_budget_stops_sending_before_overshooting(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    # gpt-4o-mini: ~$0.0002 per answer here; $0.002 buys about ten of 40 prompts.
    job = load_config(write_job(tmp_path, emulator.url, prompts=40, extra="budget_usd: 0.002"))
    summary = asyncio.run(generate(job=job, run_id="budget"))
    assert summary.status == "budget_reached"
    assert 0 < summary.samples < 40
    # Overshoot bounded by what was in flight (concurrency 8) times one answer's cost.
    per_answer = summary.cost_usd / summary.samples
    assert summary.cost_usd <= 0.002 + 8 * per_answer
    assert emulator.stats()["served_ok"] == summary.samples
    # Resuming with the same budget sends nothing more: the earlier spend counts.
    again = asyncio.run(generate(job=job, run_id="budget"))
    assert again.samples == 0 and again.status == "budget_reached"
