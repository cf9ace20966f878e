"""A run id reused with a changed job is refused, naming what changed; operational changes
(budget, limits, concurrency) are not changes of the job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from distillery.config import load_config
from distillery.emulator import RunningEmulator
from distillery.errors import UserInputError
from distillery.flows.generate import generate
from distillery.flows.job_changes import differences

from .conftest import write_job


def test_differences_name_each_changed_leaf() -> None:
    before = {"teachers": {"t0": {"params": {"temperature": 0.1, "seed": 1}}}, "n": 1}
    after = {"teachers": {"t0": {"params": {"temperature": 0.7, "seed": 1}}}, "n": 2}
    assert differences(before, after) == ["n: 1 -> 2", "teachers.t0.params.temperature: 0.1 -> 0.7"]
    assert differences(before, before) == []


@pytest.mark.slow
def test_a_resume_with_another_temperature_is_refused_unless_allowed(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "k")
    config = write_job(tmp_path, emulator.url, prompts=4)
    first = asyncio.run(generate(job=load_config(config), run_id="r"))
    assert first.samples == 4
    # Operational changes are how a run is finished: accepted.
    text = config.read_text()
    config.write_text(text.replace("concurrency: 8", "concurrency: 2\n    budget_usd: 5"))
    again = asyncio.run(generate(job=load_config(config), run_id="r"))
    assert again.requests_planned == 0
    config.write_text(text.replace("temperature: 0.1", "temperature: 0.7"))
    changed = load_config(config)
    with pytest.raises(UserInputError) as refused:
        asyncio.run(generate(job=changed, run_id="r"))
    message = str(refused.value)
    assert "\n" not in message
    assert "teachers.t0.params.temperature: 0.1 -> 0.7" in message
    assert "--allow-changed-job" in message
    allowed = asyncio.run(generate(job=changed, run_id="r", allow_changed_job=True))
    assert allowed.status == "completed" and allowed.requests_planned == 4
    # The new job is now the run's: resuming with it again is no change.
    asyncio.run(generate(job=changed, run_id="r"))
