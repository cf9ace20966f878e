"""Seed datasets: prompts from a DuckDB query over an earlier output's real shards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from distillery.config import PromptsConfig, load_config
from distillery.emulator import RunningEmulator
from distillery.errors import ConfigError, UserInputError
from distillery.flows.generate import generate
from distillery.generators.prompts import load_prompts
from distillery.storage.catalog import open_catalog
from distillery.storage.shards import write_shard

from .conftest import write_job


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "test-key-123")


def _dataset(directory: Path) -> Path:
    """Two committed sample rows, written the way a run writes them."""
    rows = [
        {
            "sample_id": f"s{i}",
            "run_id": "r0",
            "prompt_id": f"p{i}",
            "sample_index": 0,
            "prompt": f"question {i}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"question {i}"},
            ],
            "teacher_name": "t0",
            "teacher_provider": "openai",
            "teacher_model": "gpt-4o-mini",
            "response_text": f"answer {i}",
        }
        for i in range(2)
    ]
    write_shard(directory, "samples", "r0", rows, 0)
    return directory


def _config(query: str, data: Path) -> PromptsConfig:
    return PromptsConfig(query=query, data=data)


def test_query_rows_become_prompts_keeping_ids_and_lineage(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "out")
    prompts = load_prompts(
        _config("SELECT prompt_id, sample_id, messages, teacher_name FROM samples", data)
    )
    assert [p.prompt_id for p in prompts] == ["p0", "p1"]
    assert prompts[1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question 1"},
    ]
    assert prompts[1].meta == {"source_sample_id": "s1", "teacher_name": "t0"}
    # A template sees the columns like a file's fields.
    templated = load_prompts(
        PromptsConfig(
            query="SELECT prompt, response_text FROM samples ORDER BY prompt",
            data=data,
            template="Improve this answer to '{{ prompt }}': {{ response_text }}",
        )
    )
    assert templated[0].messages == [
        {"role": "user", "content": "Improve this answer to 'question 0': answer 0"}
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELEC prompt FROM samples", "prompts.query: Parser Error"),
        ("SELECT prompt FROM nowhere", "prompts.query: Catalog Error"),
        ("SELECT prompt_id, teacher_name FROM samples", "needs a 'prompt' or 'messages' column"),
        ("SELECT prompt FROM samples WHERE false", "prompts.query: no prompts found"),
    ],
)
def test_bad_queries_are_one_line_naming_the_field(
    tmp_path: Path, query: str, expected: str
) -> None:
    data = _dataset(tmp_path / "out")
    with pytest.raises(UserInputError) as caught:
        load_prompts(_config(query, data))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_missing_or_empty_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"prompts.data: .*absent: no such directory"):
        load_prompts(_config("SELECT 'x' AS prompt", tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"prompts.data: .*no distillery output there"):
        load_prompts(_config("SELECT 'x' AS prompt", tmp_path / "empty"))


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ("{path: a.jsonl, query: 'SELECT 1'}", "give either path"),
        ("{query: 'SELECT 1'}", "query needs data"),
        ("{path: a.jsonl, data: out}", "data is only for query"),
    ],
)
def test_prompt_source_config_errors(tmp_path: Path, prompts: str, expected: str) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        f"prompts: {prompts}\nteachers: [{{name: t, provider: openai, model: m, "
        "base_url: 'http://x/v1'}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert f"prompts: {expected}" in str(caught.value)


@pytest.mark.slow
def test_regenerate_rejected_answers_with_another_teacher(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    # First run: the filter rejects the answers to three prompts.
    first = load_config(
        write_job(
            tmp_path,
            emulator.url,
            prompts=8,
            extra="""curation:
  filters: [{type: regex, field: prompt, exclude: ['case [135]\\.']}]""",
        )
    )
    summary = asyncio.run(generate(job=first, run_id="first"))
    assert (summary.samples, summary.rejected) == (5, {"regex_excluded": 3})

    # Second run, same output: those prompts again, to another teacher.
    seed_job = tmp_path / "regen.yaml"
    seed_job.write_text(
        f"""name: regen
prompts:
  query: >-
    SELECT prompt_id, sample_id, messages FROM rejected
    WHERE filter = 'regex' AND run_id = 'first'
  data: out
teachers:
  - name: other
    provider: openai
    model: gpt-4.1-mini
    base_url: {emulator.url}/v1
    api_key_env: EMULATOR_API_KEY
output: out
"""
    )
    regen = load_config(seed_job)
    again = asyncio.run(generate(job=regen, run_id="regen"))
    assert (again.prompts, again.samples) == (3, 3)
    linked = (
        open_catalog(regen.output)
        .execute(
            """SELECT s.prompt_id, s.teacher_name, r.teacher_name, s.messages = r.messages
               FROM samples s JOIN rejected r
                 ON r.sample_id = s.prompt_meta->>'source_sample_id'
               WHERE s.run_id = 'regen' ORDER BY 1"""
        )
        .fetchall()
    )
    assert linked == [(f"p{i}", "other", "t0", True) for i in (1, 3, 5)]
    served = emulator.stats()["served_ok"]
    assert asyncio.run(generate(job=regen, run_id="regen")).requests_planned == 0
    assert emulator.stats()["served_ok"] == served
