"""Runs with ``delivery: batch`` teachers, for real: a Prefect server, the emulator's batch APIs
over loopback, the run's journal, Parquet read back with DuckDB.

What a user is promised (docs/batch.md): a batch teacher's requests go as provider
submissions at the batch price, beside online teachers; a run waits ``wait_s`` at most and a
re-run collects; a ``kill -9`` anywhere and the same command again loses nothing and buys
nothing twice; an expired submission keeps what finished and the rest is sent again; the
budget is reserved when a submission is made.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillery.config import JobConfig, load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.flows.generate import RunSummary, generate
from distillery.generators.pricing import cost_usd
from distillery.generators.records import teacher_facts
from distillery.storage.catalog import open_catalog
from distillery.storage.failpoints import ENV, KILLED
from distillery.storage.submissions import Journal

from .conftest import write_prompts
from .test_cli import summary_text

pytestmark = pytest.mark.slow

KEY = "batch-test-key"
PROMPTS = 12
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
#: How each provider lists its batches, and how many requests one holds.
LISTS = {
    "openai": ("/v1/batches", "data", {"authorization": f"Bearer {KEY}"}),
    "anthropic": ("/v1/messages/batches", "data", {"x-api-key": KEY}),
}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", KEY)


def batch_job(
    tmp_path: Path,
    url: str,
    provider: str = "openai",
    *,
    online: bool = True,
    wait_s: float = 60,
    max_requests: int = 5,
    extra: str = "",
) -> JobConfig:
    """``PROMPTS`` prompts to an online OpenAI teacher ``t0`` (unless not ``online``) and a
    batch teacher ``b1`` of ``provider``, ``max_requests`` per submission."""
    write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    base = url + ("/v1" if provider == "openai" else "")
    online_teacher = f"""
  - name: t0
    provider: openai
    model: gpt-4o-mini
    base_url: {url}/v1
    api_key_env: EMULATOR_API_KEY
    params: {{temperature: 0.1, max_tokens: 300}}"""
    config = tmp_path / "job.yaml"
    config.write_text(
        f"""name: batch-job
prompts:
  path: prompts.jsonl
teachers:{online_teacher if online else ""}
  - name: b1
    provider: {provider}
    model: {MODELS[provider]}
    base_url: {base}
    api_key_env: EMULATOR_API_KEY
    params: {{temperature: 0.3, max_tokens: 300}}
    delivery: batch
    submissions: {{max_requests: {max_requests}, poll_interval_s: 0.05, wait_s: {wait_s}}}
batch_size: 5
output: out
{extra}"""
    )
    return load_config(config)


def run(job: JobConfig, run_id: str = "r1") -> RunSummary:
    return asyncio.run(generate(job=job, run_id=run_id))


def batches_at(emulator: RunningEmulator, provider: str = "openai") -> list[dict[str, Any]]:
    """The batches the provider holds, behind distillery's back."""
    path, key, headers = LISTS[provider]
    listed = httpx.get(emulator.url + path, headers=headers, params={"limit": 100}).json()[key]
    assert isinstance(listed, list)
    return listed


def bought(emulator: RunningEmulator, provider: str = "openai") -> int:
    """Requests in every batch the provider was asked to make."""
    return sum(
        sum(b["request_counts"].values())
        if provider == "anthropic"
        else b["request_counts"]["total"]
        for b in batches_at(emulator, provider)
    )


async def _final_state(flow_run_id: str | None) -> Any:
    """The flow run's final state as the Prefect UI shows it."""
    from uuid import UUID

    from prefect import get_client

    async with get_client() as client:
        flow_run = await client.read_flow_run(UUID(str(flow_run_id)))
    return flow_run.state


async def _submission_artifacts(flow_run_id: str | None) -> list[object]:
    """Every version of the run's submissions table, oldest first."""
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]),
                key=ArtifactFilterKey(any_=["batch-job-submissions"]),
            )
        )
    return [a.data for a in sorted(found, key=lambda a: a.created or 0)]


def rows(output: Path, sql: str) -> list[tuple[Any, ...]]:
    return open_catalog(output).execute(sql).fetchall()


def one_sample_each(output: Path, teachers: tuple[str, ...] = ("t0", "b1")) -> None:
    """Every prompt has exactly one sample of each teacher: nothing lost, nothing doubled."""
    found = rows(output, "SELECT prompt_id, teacher_name, count(*) FROM samples GROUP BY ALL")
    assert {(p, t): n for p, t, n in found} == {
        (f"p{i}", t): 1 for i in range(PROMPTS) for t in teachers
    }


# --------------------------------------------------------------------------- the whole way


def test_a_batch_teacher_beside_an_online_one(prefect_api: str, tmp_path: Path) -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=0.3)) as emulator:
        job = batch_job(tmp_path, emulator.url)
        summary = run(job)
        assert summary.status == "completed", summary
        assert (summary.samples, summary.failures, summary.requests_planned) == (24, 0, 24)
        assert summary.submissions_open == 0
        output = Path(job.output)
        one_sample_each(output)
        assert len(batches_at(emulator)) == 3 and bought(emulator) == PROMPTS  # 5 + 5 + 2
        by_delivery = rows(
            output,
            "SELECT teacher_name, delivery, count(DISTINCT provider_batch_id), "
            "count(*) FILTER (WHERE teacher_model_version IS NULL OR response_id IS NULL) "
            "FROM samples GROUP BY ALL ORDER BY 1",
        )
        assert by_delivery == [("b1", "batch", 3, 0), ("t0", "online", 0, 0)]
        # The batch price: half of what the same tokens cost online.
        price = teacher_facts(job)["b1"].price
        tokens = rows(
            output,
            "SELECT prompt_tokens, completion_tokens, cost_usd FROM samples "
            "WHERE teacher_name = 'b1'",
        )
        for prompt, completion, cost in tokens:
            assert cost == pytest.approx(cost_usd(price, prompt, completion) / 2)  # type: ignore[operator]
        versions = asyncio.run(_submission_artifacts(summary.flow_run_id))
        assert len(versions) >= 2  # made, then updated as the submissions went on
        table = json.loads(str(versions[-1]))
        assert [(r["teacher"], r["step"], r["requests"]) for r in table] == [
            ("b1", "collected", 5),
            ("b1", "collected", 5),
            ("b1", "collected", 2),
        ]
        assert {r["provider_batch_id"] for r in table} == {b["id"] for b in batches_at(emulator)}

        again = run(job)
        assert (again.status, again.requests_planned, again.requests_skipped) == (
            "completed",
            0,
            24,
        )
        assert len(batches_at(emulator)) == 3  # nothing submitted twice
        one_sample_each(output)


def test_a_run_that_cannot_wait_ends_waiting_and_the_next_collects(
    prefect_api: str, tmp_path: Path
) -> None:
    # Long enough that no submission ends between its create and the one poll of a
    # wait_s: 0 run, however loaded the machine.
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=5.0)) as emulator:
        job = batch_job(tmp_path, emulator.url, online=False, wait_s=0)
        first = run(job)
        assert first.status == "waiting", first
        assert (first.submissions_open, first.requests_at_provider) == (3, PROMPTS)
        state = asyncio.run(_final_state(first.flow_run_id))
        assert (state.type.value, state.name) == ("COMPLETED", "Waiting")
        assert (
            state.message == "12 requests in 3 provider submissions; run r1 again to collect them"
        )
        assert first.samples == 0 and bought(emulator) == PROMPTS
        journal = Journal(Path(job.output), "r1")
        assert {r.step for r in journal.records()} == {"created"}
        # The next invocation (a scheduled one, say) may wait: wait_s is not the job's shape.
        second = run(batch_job(tmp_path, emulator.url, online=False, wait_s=60))
        assert second.status == "completed", second
        assert asyncio.run(_final_state(second.flow_run_id)).name == "Completed"
        assert (second.requests_planned, second.samples, second.collected_earlier) == (
            0,
            PROMPTS,
            PROMPTS,
        )
        assert {r.step for r in journal.records()} == {"collected"}
        assert bought(emulator) == PROMPTS
        one_sample_each(Path(job.output), ("b1",))
        printed = " ".join(summary_text(**second.model_dump()).split())
        assert "collected 12 answers and failures of submissions made earlier" in printed
        assert "not sent" not in printed and "submitted" not in printed
        status = rows(Path(job.output), "SELECT status, invocations FROM runs")
        assert status == [("completed", 2)]


def test_an_expired_submission_keeps_what_finished_and_the_rest_is_sent_again(
    prefect_api: str, tmp_path: Path
) -> None:
    options = EmulatorOptions(seed=7, batch_seconds=0.3, batch_expire_rate=1.0)
    with RunningEmulator(options) as emulator:
        job = batch_job(tmp_path, emulator.url, online=False, max_requests=PROMPTS)
        first = run(job)
        output = Path(job.output)
        expired = first.failures_by_class.get("expired", 0)
        assert 0 < expired < PROMPTS and first.samples == PROMPTS - expired, first
        kept = {r[0] for r in rows(output, "SELECT sample_id FROM samples")}
        failed = {r[0] for r in rows(output, "SELECT sample_id FROM failures")}
        assert not kept & failed and len(kept | failed) == PROMPTS
        assert first.status == "completed"  # a re-run sends what expired
    with RunningEmulator(EmulatorOptions(seed=8, batch_seconds=0.3)) as emulator:
        job = batch_job(tmp_path, emulator.url, online=False, max_requests=PROMPTS)
        second = run(job)
        assert (second.requests_planned, second.requests_skipped) == (expired, PROMPTS - expired)
        assert bought(emulator) == expired  # only what expired was bought again
        one_sample_each(output, ("b1",))


def test_the_budget_is_reserved_when_a_submission_is_made(prefect_api: str, tmp_path: Path) -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=0.3)) as emulator:
        job = batch_job(tmp_path, emulator.url, online=False)
        journal = Journal(Path(job.output), "r1")
        first = run(job.model_copy(update={"budget_usd": 1e-9}))
        assert first.status == "budget_reached", first
        assert bought(emulator) == 0
        assert {r.step for r in journal.records()} == {"prepared"}
        # Room for one submission's estimate (prompt tokens + max_tokens at the batch price).
        estimate = journal.records()[0].estimated_cost_usd
        second = run(job.model_copy(update={"budget_usd": estimate * 1.01}))
        assert second.status == "budget_reached", second
        assert bought(emulator) == 5  # one submission fit; the others stay prepared
        third = run(job)  # no budget
        assert third.status == "completed", third
        assert bought(emulator) == PROMPTS
        one_sample_each(Path(job.output), ("b1",))


def test_a_submission_the_provider_refuses_is_given_up_and_sent_again(
    prefect_api: str, tmp_path: Path
) -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=0.3)) as emulator:
        job = batch_job(tmp_path, emulator.url, online=False)
        journal = Journal(Path(job.output), "r1")
        run(job.model_copy(update={"budget_usd": 1e-9}))  # prepared, none sent
        first = journal.records()[0]
        lines = journal.requests_location(first.submission_id).local_path
        assert lines is not None
        with lines.open("rb") as handle:
            line = handle.readline()
        with lines.open("ab") as handle:  # a custom id twice: OpenAI refuses the whole file
            handle.write(line)
        second = run(job)
        assert second.status == "completed", second
        assert list(second.submission_problems) == [first.submission_id]
        assert "duplicate_custom_id" in second.submission_problems[first.submission_id]
        assert second.samples == PROMPTS - 5 and bought(emulator) == PROMPTS - 5
        printed = " ".join(summary_text(**second.model_dump()).split())
        assert f"submission {first.submission_id}: given up, sent again next run" in printed
        assert "0 sent, 0 already answered earlier, 12 in submissions made earlier" in printed
        third = run(job)
        assert (third.status, third.requests_planned, third.samples) == ("completed", 5, 5)
        one_sample_each(Path(job.output), ("b1",))


# --------------------------------------------------------------------------- kills


def cli(config: Path, prefect_api: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "r1"],
        env={**os.environ, "EMULATOR_API_KEY": KEY, "PREFECT_API_URL": prefect_api, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


KILL_POINTS = [
    ("openai", "submissions:line@3"),  # writing the first submission's files
    ("openai", "submissions:files-synced"),  # files written, record not saved
    ("openai", "submissions:saved-prepared@2"),  # two of three prepared
    ("openai", "submissions:saved-uploaded"),  # file uploaded, no batch
    ("openai", "submissions:saved-uploaded@2"),  # marked creating, create not sent
    ("openai", "submissions:created-unsaved"),  # batch created, its id lost
    ("anthropic", "submissions:created-unsaved"),  # the same, found by time and size
    ("openai", "submissions:saved-created"),  # created, not polled
    ("openai", "submissions:saved-ended"),  # ended, not collected
    ("openai", "submissions:chunk-committed"),  # collected in part, not marked
    ("openai", "submissions:saved-collected@2"),  # one of three collected
]


@pytest.mark.parametrize(("provider", "point"), KILL_POINTS)
def test_a_kill_anywhere_then_the_same_command_loses_and_buys_nothing(
    prefect_api: str, tmp_path: Path, provider: str, point: str
) -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=0.3)) as emulator:
        job = batch_job(tmp_path, emulator.url, provider)
        killed = cli(tmp_path / "job.yaml", prefect_api, **{ENV: point})
        _, err = killed.communicate(timeout=240)
        assert killed.returncode == KILLED, err[-2000:]
        summary = run(job)
        assert summary.status == "completed", summary
        one_sample_each(Path(job.output))
        assert bought(emulator, provider) == PROMPTS  # every batch request bought once
        failures = rows(Path(job.output), "SELECT count(*) FROM failures")
        assert failures == [(0,)]
        steps = Counter(r.step for r in Journal(Path(job.output), "r1").records())
        assert set(steps) == {"collected"}, steps


def test_sigterm_while_waiting_stops_at_once_and_the_next_run_collects(
    prefect_api: str, tmp_path: Path
) -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=30)) as emulator:
        job = batch_job(tmp_path, emulator.url, online=False, wait_s=600)
        process = cli(tmp_path / "job.yaml", prefect_api)
        journal = Journal(Path(job.output), "r1")
        deadline = time.monotonic() + 120
        while not [r for r in journal.records() if r.step == "created"]:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        while len([r for r in journal.records() if r.step == "created"]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err[-2000:]
        assert "--run-id r1" in err
        assert bought(emulator) == PROMPTS
        assert {r.step for r in journal.records()} == {"created"}  # left for the next run


def test_the_cli_exits_75_while_submissions_are_open(prefect_api: str, tmp_path: Path) -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=30)) as emulator:
        batch_job(tmp_path, emulator.url, online=False, wait_s=0)
        process = cli(tmp_path / "job.yaml", prefect_api)
        out, err = process.communicate(timeout=240)
        assert process.returncode == 75, err[-2000:]
        assert err.strip().splitlines()[-1] == (
            "error: 12 requests are with the provider's batch API; collect them later with: "
            f"distillery run {tmp_path / 'job.yaml'} --run-id r1"
        )
        assert "12 requests in 3 provider submissions, not ended yet" in " ".join(out.split())


def test_the_example_runs_all_three_batch_apis_on_the_emulator(
    prefect_api: str, tmp_path: Path
) -> None:
    example = Path(__file__).parent.parent / "examples" / "batch.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "distillery", "run", str(example), "--emulator"],
        env={**os.environ, "PREFECT_API_URL": prefect_api, "DISTILLERY_OUTPUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = rows(
        tmp_path,
        "SELECT teacher_name, delivery, count(*), count(DISTINCT provider_batch_id) "
        "FROM samples GROUP BY ALL ORDER BY 1",
    )
    assert found == [
        ("claude", "batch", 40, 1),
        ("gemini", "batch", 40, 1),
        ("gpt", "batch", 40, 2),
    ]
