"""Filters and duplicate removal through the real flow, within a run and across runs."""

import asyncio
import json
from pathlib import Path

import pytest

from distillery.config import load_config
from distillery.emulator import RunningEmulator
from distillery.flows.curate import dedup_dataset
from distillery.flows.generate import generate
from distillery.generators.batch import TeacherPool, run_batch
from distillery.storage.catalog import open_catalog

from .conftest import batch_before_commit, write_job

pytestmark = pytest.mark.slow

CURATION = """curation:
  filters: [{type: empty}, {type: length, min_tokens: 60}]
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "k")


def test_filters_and_dedup_within_and_across_runs(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = write_job(tmp_path, emulator.url, prompts=30, extra=CURATION)
    prompts = tmp_path / "prompts.jsonl"
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    # Two more prompts with new ids but the text of p0 and p1: the emulator answers them alike.
    records += [{**records[0], "id": "copy-0"}, {**records[1], "id": "copy-1"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    job = load_config(config)

    first = asyncio.run(generate(job=job, run_id="a"))
    con = open_catalog(job.output)
    reasons = dict(con.execute("SELECT reason, count(*) FROM rejected GROUP BY ALL").fetchall())
    assert reasons.get("too_short", 0) > 0  # the length filter dropped some answers
    kept, rejected = first.samples, sum(first.rejected.values())
    assert kept + rejected == 32 and kept > 0
    assert con.execute("SELECT count(*) FROM samples").fetchall() == [(kept,)]
    short = con.execute("SELECT count(*) FROM samples WHERE completion_tokens < 60").fetchall()
    assert short == [(0,)]
    twins = con.execute(
        """SELECT r.prompt_id, s.prompt_id, r.response_text = s.response_text
           FROM rejected r JOIN samples s ON r.duplicate_of = s.sample_id
           WHERE r.reason = 'duplicate' ORDER BY 1"""
    ).fetchall()
    # Each copy is either a duplicate of its original (kept) or too short like it.
    for copy, original, same in twins:
        assert (copy, original, same) in {("copy-0", "p0", True), ("copy-1", "p1", True)}
    assert len(twins) == sum(
        1
        for p in ("p0", "p1")
        if con.execute("SELECT count(*) FROM samples WHERE prompt_id = ?", [p]).fetchall()[0][0]
    )

    served = emulator.stats()["served_ok"]
    assert isinstance(served, int)
    second = asyncio.run(generate(job=job, run_id="b"))
    # Same prompts, same teacher: every answer duplicates run a's, so run b keeps nothing new.
    assert second.samples == 0
    con = open_catalog(job.output)
    cross = con.execute(
        """SELECT count(*), bool_and(s.run_id = 'a') FROM rejected r
           JOIN samples s ON r.duplicate_of = s.sample_id WHERE r.run_id = 'b'"""
    ).fetchall()
    # Every answer run a kept or rejected as a duplicate is, in run b, a duplicate of run a's.
    assert cross == [(kept + reasons.get("duplicate", 0), True)]

    again = asyncio.run(generate(job=job, run_id="b"))
    assert again.requests_planned == 0  # rejected answers count as answered: nothing re-bought
    assert emulator.stats()["served_ok"] == served + 32

    # Re-running dedup over the whole dataset finds nothing more to remove.
    removed = dedup_dataset(Path(job.output))
    assert all(not counts for counts in removed.values())
    totals = con.execute("SELECT count(*) FROM samples").fetchall()
    assert open_catalog(job.output).execute("SELECT count(*) FROM samples").fetchall() == totals


def test_emulated_duplicates_are_found(prefect_api: str, tmp_path: Path) -> None:
    from distillery.emulator import EmulatorOptions

    options = EmulatorOptions(seed=9, dup_rate=0.15, near_dup_rate=0.15)
    with RunningEmulator(options) as emulator:
        job = load_config(write_job(tmp_path, emulator.url, prompts=200))
        summary = asyncio.run(generate(job=job, run_id="dups"))
        stats = emulator.stats()
    exact, near = stats["dup_answers"], stats["near_dup_answers"]
    assert isinstance(exact, int) and isinstance(near, int) and exact > 10 and near > 10
    # Every verbatim copy is caught as a duplicate (a copy of a copy stays exact).
    assert summary.rejected.get("duplicate", 0) == exact
    # Lightly edited copies (Jaccard >= 0.86) are caught as near duplicates.
    assert summary.rejected.get("near_duplicate", 0) >= 0.95 * near
    assert summary.samples + sum(summary.rejected.values()) == 200


def _judge(url: str) -> str:
    """A job's curation section: an Anthropic-format judge on the emulator, threshold 6."""
    return f"""curation:
  judge:
    teacher: {{name: grader, provider: anthropic, model: claude-3-5-haiku,
              base_url: "{url}", api_key_env: EMULATOR_API_KEY, concurrency: 4}}
    threshold: 6
"""


def test_llm_judge_grades_through_its_own_client(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    judge = _judge(emulator.url)
    job = load_config(write_job(tmp_path, emulator.url, prompts=40, extra=judge))
    summary = asyncio.run(generate(job=job, run_id="judged"))
    con = open_catalog(job.output)
    low = con.execute(
        "SELECT count(*), bool_and(judge_score < 6), bool_and(detail LIKE 'score % < 6') "
        "FROM rejected WHERE filter = 'judge' AND reason = 'low_score'"
    ).fetchall()[0]
    kept = con.execute(
        """SELECT count(*), bool_and(judge_score >= 6), bool_and(judge_teacher = 'grader'),
                  bool_and(judge_model_version LIKE 'claude-3-5-haiku-%'),
                  bool_and(judge_cost_usd > 0)
           FROM samples"""
    ).fetchall()[0]
    assert low[0] > 0 and low[1] and low[2]
    assert kept[0] > 0 and all(kept[1:])
    assert summary.rejected.get("low_score") == low[0]
    assert low[0] + kept[0] + sum(v for k, v in summary.rejected.items() if k != "low_score") == 40


def test_answers_replayed_from_a_spool_are_judged(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A batch spools each answer as it arrives and grades them afterwards: a process killed
    in between leaves ungraded answers, which the resume grades before committing them."""
    judge = _judge(emulator.url)
    job = load_config(write_job(tmp_path, emulator.url, prompts=12, extra=judge))
    items, ctx, spool = batch_before_commit(job, "r")

    async def killed_before_grading() -> None:
        async with TeacherPool(job) as pool:
            await run_batch(items, pool, ctx, sink=spool.append)

    asyncio.run(killed_before_grading())
    spool.close()  # the process "dies": answers spooled, nothing graded or committed
    asked = int(str(emulator.stats()["requests"]))
    summary = asyncio.run(generate(job=job, run_id="r"))
    assert summary.requests_skipped == 12 and summary.requests_planned == 0  # nothing re-bought
    con = open_catalog(job.output)
    rows = con.execute(
        """SELECT count(*), count(judge_score), bool_and(judge_teacher = 'grader')
           FROM (SELECT judge_score, judge_teacher FROM samples
                 UNION ALL SELECT judge_score, judge_teacher FROM rejected)"""
    ).fetchall()[0]
    assert rows == (12, 12, True)
    low = con.execute(
        "SELECT count(*) FROM rejected WHERE filter = 'judge' AND judge_score < 6"
    ).fetchall()[0][0]
    assert low > 0  # the threshold applied to replayed answers too
    assert int(str(emulator.stats()["requests"])) - asked == 12  # one grading per answer
