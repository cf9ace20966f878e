"""Reasoning end to end: a real run against the emulator (three wire formats, some traces
withheld), DuckDB reading the reasoning columns, and the chat-JSONL export in both styles."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillery.cli import app
from distillery.config import load_config
from distillery.emulator import EmulatorOptions
from distillery.emulator.retarget import emulated
from distillery.flows.generate import generate
from distillery.generators.filters import parse_filters
from distillery.generators.tokens import count_tokens
from distillery.storage.catalog import open_catalog

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_reasoning_run_columns_and_export(prefect_api: str, tmp_path: Path) -> None:
    job = load_config(REPO / "examples" / "reasoning.yaml")
    job = job.model_copy(update={"output": tmp_path / "out"})
    # A fourth teacher: OpenAI's own reasoning model, whose trace is never returned.
    hidden = job.teachers[0].model_copy(
        update={
            "name": "o4",
            "provider": "openai",
            "model": "o4-mini",
            "params": job.teachers[0].params.model_copy(update={"max_tokens": None}),
            "reasoning": job.teachers[0].reasoning.model_copy(  # type: ignore[union-attr]
                update={"budget_tokens": None, "effort": "low"}
            ),
        }
    )
    # Keep the samples without a usable trace this time: the export must skip them.
    filters = [
        {"type": "empty"},
        {"type": "reasoning_length", "max_tokens": 150, "require_trace": False},
    ]
    curation = job.curation.model_copy(update={"filters": parse_filters(filters)})
    job = job.model_copy(update={"teachers": [*job.teachers, hidden], "curation": curation})
    options = EmulatorOptions(seed=5, reasoning_redact_rate=0.3)
    with emulated(job, options) as (retargeted, _):
        summary = asyncio.run(generate(job=retargeted, run_id="think"))
    assert summary.status == "completed" and summary.failures == 0

    con = open_catalog(job.output)
    shown = dict(
        con.execute(
            """SELECT teacher_name || ':' || reasoning_visibility, count(*)
               FROM (SELECT * FROM samples UNION ALL BY NAME SELECT * FROM rejected)
               GROUP BY ALL"""
        ).fetchall()
    )
    total = sum(shown.values())
    assert total == 24 * 4
    allowed = {
        "claude-thinking": {"summary", "redacted"},
        "gemini-thinking": {"summary", "hidden"},
        "r1": {"full", "hidden"},
        "o4": {"hidden"},
    }
    for key in shown:
        name, visibility = key.split(":")
        assert visibility in allowed[name], key
    withheld = shown.get("claude-thinking:redacted", 0) + shown.get("r1:hidden", 0)
    assert 0 < withheld < 48  # ~30% of the traces of those two teachers
    assert shown["o4:hidden"] == 24

    # Each row: the trace apart from the answer, nulls exactly where nothing was shown.
    bad = con.execute(
        """SELECT count(*) FROM samples
           WHERE (reasoning_visibility IN ('full', 'summary')) <> (reasoning_text IS NOT NULL)
              OR position('<think>' IN response_text) > 0
              OR (reasoning_visibility = 'hidden' AND NOT reasoning_tokens > 0)"""
    ).fetchall()[0][0]
    assert bad == 0
    # The reasoning settings are lineage: in the params column of every row.
    efforts = con.execute(
        "SELECT DISTINCT teacher_name, params->'reasoning'->>'budget_tokens' FROM samples "
        "WHERE teacher_name LIKE '%thinking' ORDER BY 1"
    ).fetchall()
    assert efforts == [("claude-thinking", "2048"), ("gemini-thinking", "1024")]
    # Gemini bills thoughts as output: completion = answer + thoughts, priced once.
    rows = con.execute(
        """SELECT response_text, reasoning_tokens, completion_tokens, prompt_tokens, cost_usd
           FROM samples WHERE teacher_name = 'gemini-thinking'"""
    ).fetchall()
    assert rows
    for text, thoughts, completion, prompt, cost in rows:
        assert completion == thoughts + count_tokens(text, "gemini-2.5-flash")
        assert cost == pytest.approx((prompt * 0.30 + completion * 2.50) / 1e6)
    # The filter's rejects keep their traces.
    rejected = con.execute(
        "SELECT reason, reasoning_visibility, reasoning_text IS NOT NULL FROM rejected "
        "WHERE filter = 'reasoning_length'"
    ).fetchall()
    assert rejected, "the trace filter rejected nothing"
    for reason, _visibility, has_text in rejected:
        assert (reason, has_text) == ("trace_too_long", True)

    kept = dict(
        con.execute("SELECT reasoning_visibility, count(*) FROM samples GROUP BY ALL").fetchall()
    )
    usable = kept.get("full", 0) + kept.get("summary", 0)
    runner = CliRunner()
    data = str(job.output)

    think = tmp_path / "think.jsonl"
    result = runner.invoke(app, ["export", "--data", data, "-o", str(think), "--with-reasoning"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in think.read_text().splitlines()]
    assert len(lines) == usable
    skipped = sum(kept.values()) - usable
    assert f"skipped {skipped} without a usable trace" in result.output
    assert f"{kept['hidden']} hidden" in result.output
    for line in lines:
        assistant = line["messages"][-1]
        assert assistant["role"] == "assistant"
        assert assistant["content"].startswith("<think>\n")
        trace, _, answer = (
            assistant["content"].removeprefix("<think>\n").partition("\n</think>\n\n")
        )
        assert trace and answer
        assert line["messages"][0]["role"] == "user"

    field = tmp_path / "field.jsonl"
    result = runner.invoke(
        app,
        [
            "export",
            "--data",
            data,
            "-o",
            str(field),
            "--with-reasoning",
            "--reasoning-style",
            "field",
            "--reasoning-key",
            "reasoning_content",
        ],
    )
    assert result.exit_code == 0, result.output
    by_field = [json.loads(line) for line in field.read_text().splitlines()]
    assert [line["sample_id"] for line in by_field] == [line["sample_id"] for line in lines]
    for line, thought in zip(by_field, lines, strict=True):
        assistant = line["messages"][-1]
        assert "<think>" not in assistant["content"]
        assert thought["messages"][-1]["content"] == (
            f"<think>\n{assistant['reasoning_content']}\n</think>\n\n{assistant['content']}"
        )

    plain = tmp_path / "plain.jsonl"
    result = runner.invoke(app, ["export", "--data", data, "-o", str(plain)])
    assert result.exit_code == 0 and "skipped" not in result.output
    plain_lines = [json.loads(line) for line in plain.read_text().splitlines()]
    assert len(plain_lines) == sum(kept.values())
    assert all(set(line["messages"][-1]) == {"role", "content"} for line in plain_lines)

    result = runner.invoke(
        app, ["export", "--data", data, "-o", str(plain), "--where", "no_such_column = 1"]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--where" in result.output
    assert len(plain.read_text().splitlines()) == sum(kept.values())  # untouched
