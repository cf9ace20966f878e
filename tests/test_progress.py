"""What the progress line says: counts, and what the end of a run is waiting for."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from rich.console import Console

from distillery.config import load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.flows.terminal import ProgressBar, duration, waiting
from distillery.generators.batch import TeacherPool

from .conftest import batch_before_commit, write_job


def test_durations_and_what_is_out_read_short() -> None:
    assert [duration(s) for s in (4.9, 250, 3725)] == ["4s", "4m10s", "1h02m"]
    assert waiting((3, 250.0)) == "3 out, longest 4m10s"
    assert waiting((0, 0.0)) == ""


def test_without_a_terminal_it_writes_plain_lines_naming_what_is_out() -> None:
    # A scheduled run's log: a live bar would draw nothing there.
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=80)
    with ProgressBar(console) as bar:
        bar.planned(10, 0)
        bar.watching(lambda: (2, 75.0))
        bar.advanced(3, 1)
    lines = buffer.getvalue().splitlines()
    assert lines[-1].startswith("generating 3/10, ")
    assert "1 failed" in lines[-1] and lines[-1].endswith("; 2 out, longest 1m15s")
    assert "━" not in buffer.getvalue()  # no bar drawn into the file


@pytest.mark.slow
def test_the_pool_knows_what_is_out_and_for_how_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "k")

    async def scenario(url: str) -> None:
        job = load_config(write_job(tmp_path, url, prompts=2))
        items, _ctx, spool = batch_before_commit(job, "r")
        spool.discard()
        async with TeacherPool(job) as pool:
            assert pool.in_flight() == (0, 0.0)
            sent = [asyncio.create_task(pool.request(item)) for item in items]
            while pool.in_flight()[0] < len(items):
                await asyncio.sleep(0.01)
            count, longest = pool.in_flight()
            assert count == 2 and longest >= 0.0
            await asyncio.gather(*sent)
            assert pool.in_flight() == (0, 0.0)

    with RunningEmulator(EmulatorOptions(seed=1, latency_ms=500)) as emulator:
        asyncio.run(scenario(emulator.url))
