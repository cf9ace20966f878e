"""An attempt that takes far longer than the teacher has shown is retried, not waited on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from distillery.config import load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.flows.generate import generate
from distillery.generators import deadline as deadline_module
from distillery.generators.deadline import FLOOR_S, MULTIPLE, WARM_UP, AttemptDeadline
from distillery.storage.catalog import open_catalog

from .conftest import write_job


def test_the_deadline_follows_max_tokens_then_what_the_teacher_showed() -> None:
    deadline = AttemptDeadline(cap_s=600.0, max_tokens=300)
    assert deadline.seconds() == 60.0  # 30 s + 300 tokens at 10 tokens/s
    for _ in range(WARM_UP - 1):
        deadline.observe(0.2)
    assert deadline.seconds() == 60.0  # not enough answers seen yet
    deadline.observe(0.2)
    assert deadline.seconds() == FLOOR_S  # 4 x 0.2 s is too tight: the floor
    deadline.observe(10.0)
    assert deadline.seconds() == MULTIPLE * 10.0
    assert AttemptDeadline(cap_s=90.0, max_tokens=None).seconds() == 90.0  # timeout_s
    capped = AttemptDeadline(cap_s=20.0, max_tokens=4096)
    assert capped.seconds() == 20.0


@pytest.mark.slow
def test_a_hung_request_is_retried_after_its_deadline_not_the_read_timeout(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulator hangs 1 request in 20 for 600 s (the old flat read timeout). The run ends
    # long before: each hung attempt is cut at the deadline and retried (the test would hit
    # pytest's 300 s timeout otherwise). Shorter deadlines than the real ones keep it quick.
    monkeypatch.setenv("EMULATOR_API_KEY", "k")
    monkeypatch.setattr(deadline_module, "FIRST_S", 3.0)
    monkeypatch.setattr(deadline_module, "FLOOR_S", 2.0)
    options = EmulatorOptions(seed=3, fault_rate=0.05, faults=["timeout"], hang_s=600.0)
    with RunningEmulator(options) as emulator:
        config = write_job(tmp_path, emulator.url, prompts=80)
        text = config.read_text().replace("max_attempts: 2", "max_attempts: 4")
        config.write_text(text.replace("max_tokens: 300", "max_tokens: 20"))
        summary = asyncio.run(generate(job=load_config(config), run_id="hung"))
    assert summary.status == "completed" and summary.samples == 80
    rows = (
        open_catalog(tmp_path / "out")
        .execute(
            "SELECT attempt_statuses FROM samples WHERE list_contains(attempt_statuses, 'timeout')"
        )
        .fetchall()
    )
    assert rows, "no request drew the hang"
    assert all(statuses[-1] == "200" for (statuses,) in rows)
    assert summary.maybe_billed_twice >= len(rows)
