"""Every recipe in examples/recipes/ runs as docs/recipes.md says: against the emulator.

``distillery run X --emulator`` is :func:`emulated` around the generate flow; the flow runs
for real on the session's Prefect server and DuckDB reads what it wrote.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from distillery.config import load_config
from distillery.emulator.retarget import emulated
from distillery.flows.generate import RunSummary, generate
from distillery.storage.catalog import open_catalog

from .conftest import REPO

RECIPES = REPO / "examples" / "recipes"
pytestmark = pytest.mark.slow


def _run(name: str, run_id: str) -> tuple[RunSummary, Path]:
    job = load_config(RECIPES / f"{name}.yaml")
    with emulated(job) as (retargeted, _):
        summary = asyncio.run(generate(job=retargeted, run_id=run_id))
    assert isinstance(job.output, Path)
    return summary, job.output


@pytest.fixture(autouse=True)
def _output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILLERY_OUTPUT", str(tmp_path))


def test_routing_recipes(prefect_api: str, tmp_path: Path) -> None:
    summary, output = _run("routing-split", "split")
    assert (summary.status, summary.samples) == ("completed", 80)
    shares = dict(
        open_catalog(output)
        .execute("SELECT teacher_name, count(*) FROM samples WHERE route = 'split' GROUP BY ALL")
        .fetchall()
    )
    assert set(shares) == {"gpt", "claude", "gemini"} and sum(shares.values()) == 80
    assert shares["gpt"] > max(shares["claude"], shares["gemini"])  # weight 2 against 1

    summary, output = _run("routing-fallback", "fallback")
    assert (summary.status, summary.samples) == ("completed", 60)
    routes = dict(
        ((name, step), count)
        for name, step, count in open_catalog(output)
        .execute("SELECT teacher_name, route_step, count(*) FROM samples GROUP BY ALL")
        .fetchall()
    )
    assert set(routes) == {("strong", 0), ("cheap", 1)}  # the budget ran out part-way


def test_samples_then_seed_recipes(prefect_api: str, tmp_path: Path) -> None:
    summary, output = _run("samples-n", "samples")
    assert summary.samples + sum(summary.rejected.values()) == 120  # 30 prompts x n=4
    assert summary.rejected.get("too_short", 0) > 0, summary.rejected
    con = open_catalog(output)
    indices = con.execute(
        """SELECT sample_index, min(params->>'seed'), min(params->>'temperature')
           FROM (SELECT * FROM samples UNION ALL BY NAME SELECT * FROM rejected)
           GROUP BY ALL ORDER BY 1"""
    ).fetchall()
    assert indices == [(0, "100", "0.3"), (1, "101", "0.7"), (2, "102", "1.0"), (3, "103", "0.3")]

    rejected_prompts = con.execute(
        "SELECT count(DISTINCT prompt_id) FROM rejected WHERE filter = 'length'"
    ).fetchall()[0][0]
    summary, _ = _run("seed-rejected", "regen")
    assert (summary.prompts, summary.samples) == (rejected_prompts, rejected_prompts)
    linked = (
        open_catalog(output)
        .execute(
            """SELECT count(*) FROM samples s JOIN rejected r
                 ON r.sample_id = s.prompt_meta->>'source_sample_id'
               WHERE s.teacher_name = 'claude' AND r.prompt_id = s.prompt_id"""
        )
        .fetchall()
    )
    assert linked == [(rejected_prompts,)]


def test_conversation_and_instruction_synthesis_recipes(prefect_api: str, tmp_path: Path) -> None:
    summary, output = _run("conversation", "chat")
    assert (summary.status, summary.samples) == ("completed", 8)
    con = open_catalog(output)
    # 8 prompts, 3 answers and 2 user turns each, after the prompt's system and user messages.
    assert con.execute(
        "SELECT min(len(conversation)), max(len(conversation)) FROM samples"
    ).fetchall() == [(7, 7)]

    summary, output = _run("self-instruct", "si")
    assert summary.status == "completed"
    stages = open_catalog(output).execute(
        "SELECT stage, min(generation), max(generation) FROM samples GROUP BY ALL ORDER BY 1"
    )
    assert stages.fetchall() == [("answer", 1, 2), ("instructions", 1, 2)]

    summary, output = _run("evol-instruct", "evol")
    assert summary.status == "completed"
    counts = open_catalog(output).execute(
        """SELECT count(*) FILTER (stage = 'evolve' AND generation = 1),
                  count(*) FILTER (stage = 'answer' AND parent_sample_id IS NULL),
                  count(*) FILTER (stage = 'answer' AND generation = 2)
           FROM samples"""
    )
    first, orphans, second = counts.fetchall()[0]
    assert (first, orphans) == (10, 0) and second > 0
