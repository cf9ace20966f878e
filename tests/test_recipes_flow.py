"""Recipes end to end: the real flow, the emulator over loopback HTTP, DuckDB over the shards."""

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from distillery.config import load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.flows.generate import generate
from distillery.generators.batch import TeacherPool, run_batch
from distillery.generators.prompts import load_prompts
from distillery.storage.catalog import open_catalog

from .conftest import batch_before_commit, write_job


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "k")


def _served(emulator: RunningEmulator) -> int:
    served = emulator.stats()["served_ok"]
    assert isinstance(served, int)
    return served


@pytest.mark.slow  # 40 requests and 8 gradings, two teachers
def test_conversations_one_row_each_with_every_turn_and_summed_usage(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    recipe = f"""recipe: {{type: conversation, turns: 3, user_teacher: t1}}
curation:
  judge:
    teacher: {{name: grader, provider: anthropic, model: claude-3-5-haiku,
              base_url: "{emulator.url}", api_key_env: EMULATOR_API_KEY}}
    threshold: 1
"""
    job = load_config(write_job(tmp_path, emulator.url, prompts=4, teachers=2, extra=recipe))
    summary = asyncio.run(generate(job=job, run_id="chat"))
    assert summary.samples == 8 and summary.failures == 0
    # Per conversation: 3 assistant answers and 2 user turns; then one grading each.
    assert _served(emulator) == 8 * 5 + 8
    # The summary counts what went over HTTP for the answers, not one request a conversation.
    assert summary.requests_planned == 8 and summary.http_requests == 8 * 5
    con = open_catalog(job.output)
    rows = con.execute(
        """SELECT messages, conversation, response_text, recipe, stage,
                  prompt_tokens, completion_tokens, attempts, recipe_meta, requests,
                  user_teacher, user_prompt_tokens, user_completion_tokens
           FROM samples ORDER BY prompt_id, teacher_name"""
    ).fetchall()
    assert len(rows) == 8
    graded = con.execute("SELECT count(judge_score) FROM samples").fetchall()
    assert graded == [(8,)]  # the judge grades each conversation's last answer
    for messages, chat, response, recipe_name, stage, tokens_in, tokens_out, *rest in rows:
        attempts, meta, requests, user_teacher, user_tokens_in, user_tokens_out = rest
        assert (recipe_name, stage) == ("conversation", "conversation")
        assert chat[: len(messages)] == messages  # the prompt first, as sent
        roles = [m["role"] for m in chat[len(messages) :]]
        assert roles == ["assistant", "user", "assistant", "user", "assistant"]
        assert response == chat[-1]["content"]
        assert attempts == 5
        assert json.loads(meta) == {"turns": 3}  # accounting is in typed columns, not JSON
        assert user_teacher == "t1" and requests == 5
        # Usage is the sum over every turn: more than the user teacher's share alone.
        assert tokens_in > user_tokens_in > 0
        assert tokens_out > user_tokens_out > 0
    # The teachers view charges t1 (playing the user in every conversation) with its turns in
    # t0's conversations: per teacher, what it answered; in total, every row's usage once.
    per_row = con.execute(
        """SELECT teacher_name, sum(prompt_tokens), sum(completion_tokens), sum(cost_usd),
                  sum(user_prompt_tokens), sum(user_completion_tokens), sum(user_cost_usd)
           FROM samples GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    view = con.execute(
        "SELECT teacher_name, samples, prompt_tokens, completion_tokens, cost_usd FROM teachers"
    ).fetchall()
    (
        (_, t0_in, t0_out, t0_cost, moved_in, moved_out, moved_cost),
        (_, t1_in, t1_out, t1_cost, *_),
    ) = per_row
    assert moved_cost > 0
    assert [v[:4] for v in view] == [
        ("t0", 4, t0_in - moved_in, t0_out - moved_out),
        ("t1", 4, t1_in + moved_in, t1_out + moved_out),
    ]
    assert view[0][4] == pytest.approx(t0_cost - moved_cost)
    assert view[1][4] == pytest.approx(t1_cost + moved_cost)
    # Resume sends nothing.
    again = asyncio.run(generate(job=job, run_id="chat"))
    assert again.requests_planned == 0 and again.requests_skipped == 8
    assert _served(emulator) == 48


def test_conversation_failing_half_way_keeps_its_paid_turns(
    prefect_api: str, tmp_path: Path
) -> None:
    options = EmulatorOptions(seed=3, fault_rate=0.35, faults=["500"])
    with RunningEmulator(options) as emulator:
        recipe = "recipe: {type: conversation, turns: 3}\n"
        job = load_config(write_job(tmp_path, emulator.url, prompts=16, extra=recipe))
        summary = asyncio.run(generate(job=job, run_id="flaky"))
        served = _served(emulator)
    assert summary.failures > 0 and summary.samples > 0
    con = open_catalog(job.output)
    partial = con.execute(
        """SELECT len(conversation) - len(messages), message, completion_tokens
           FROM failures_log WHERE error_class = 'server_error'"""
    ).fetchall()
    assert len(partial) == summary.failures
    assert all(" turn " in message and "failed" in message for _, message, _ in partial)
    assert any(turns > 0 for turns, _, _ in partial)  # some failed after answers were paid
    for turns, _, completion_tokens in partial:
        if turns:
            assert completion_tokens > 0
    # Every answer the emulator gave is a turn in a stored row: nothing paid for is lost.
    kept = con.execute("SELECT sum(len(conversation) - len(messages)) FROM samples").fetchall()
    assert int(kept[0][0]) + sum(turns for turns, _, _ in partial) == served


def test_a_crash_mid_conversation_leaves_every_paid_turn_in_failures_log(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    recipe = "recipe: {type: conversation, turns: 3}\n"
    job = load_config(write_job(tmp_path, emulator.url, prompts=3, extra=recipe))
    items, ctx, spool = batch_before_commit(job, "crash")
    spooled: list[tuple[str, Mapping[str, Any]]] = []

    def crash_before_the_last_turn(table: str, row: Mapping[str, Any]) -> None:
        # The process "dies" before any finished conversation reaches the spool.
        if table == "failures":
            spool.append(table, row)
            spooled.append((table, row))

    async def interrupted() -> None:
        async with TeacherPool(job) as pool:
            await run_batch(items, pool, ctx, sink=crash_before_the_last_turn)

    asyncio.run(interrupted())
    spool.close()
    assert len(spooled) == 3 * 4  # every turn but the last of each conversation
    assert {row["error_class"] for _, row in spooled} == {"conversation_interrupted"}
    roles = [json.loads(row["recipe_meta"])["role"] for _, row in spooled]
    assert roles.count("assistant") == 3 * 2 and roles.count("user") == 3 * 2
    paid = _served(emulator)
    assert paid == 3 * 5

    summary = asyncio.run(generate(job=job, run_id="crash"))
    assert summary.samples == 3
    con = open_catalog(job.output)
    log = con.execute(
        """SELECT count(*), sum(completion_tokens)
           FROM failures_log WHERE error_class = 'conversation_interrupted'"""
    ).fetchall()
    assert log[0][0] == 12 and log[0][1] > 0
    # The resumed conversations answered them; the failures view shows nothing open.
    assert con.execute("SELECT count(*) FROM failures").fetchall() == [(0,)]


@pytest.mark.slow  # ~100 requests over three stages
def test_self_instruct_new_instructions_deduplicated_then_answered(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    recipe = (
        "recipe: {type: self_instruct, seeds_per_request: 3, instructions_per_request: 6, "
        "rounds: 2}\n"
    )
    job = load_config(write_job(tmp_path, emulator.url, prompts=12, teachers=2, extra=recipe))
    summary = asyncio.run(generate(job=job, run_id="si"))
    assert summary.failures == 0
    con = open_catalog(job.output)
    stages = dict(
        (tuple(k), v)
        for *k, v in con.execute(
            "SELECT stage, generation, count(*) FROM samples GROUP BY ALL"
        ).fetchall()
    )
    assert stages[("instructions", 1)] == 4  # 12 seeds, 3 per request, one generator (t0)
    assert stages[("instructions", 2)] > 0 and stages[("answer", 2)] > 0
    assert con.execute(
        "SELECT count(DISTINCT teacher_name) FROM samples WHERE stage = 'instructions'"
    ).fetchall() == [(1,)]
    # Each answer's instruction is one of the items of its parent's list, and both teachers
    # answer every instruction.
    orphans = con.execute(
        """SELECT count(*) FROM samples a LEFT JOIN samples p ON a.parent_sample_id = p.sample_id
           WHERE a.stage = 'answer' AND (p.stage IS DISTINCT FROM 'instructions'
              OR p.generation <> a.generation OR strpos(p.response_text, a.prompt) = 0)"""
    ).fetchall()
    assert orphans == [(0,)]
    per_prompt = con.execute(
        "SELECT DISTINCT count(*) FROM samples WHERE stage = 'answer' GROUP BY prompt_id"
    ).fetchall()
    assert per_prompt == [(2,)]
    # The emulator repeats seed tasks now and then; none of them is answered again, and no
    # instruction is answered twice.
    seeds = [p.messages[-1]["content"] for p in load_prompts(job.prompts)]
    lists = con.execute("SELECT response_text FROM samples WHERE stage = 'instructions'")
    repeated = sum(text.count(seed) for (text,) in lists.fetchall() for seed in seeds)
    assert repeated > 0
    answered = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT prompt FROM samples WHERE stage = 'answer'"
        ).fetchall()
    ]
    assert not set(answered) & set(seeds)
    assert len({a.lower() for a in answered}) == len(answered)
    # Round 2 is shown what round 1 added: its requests point at round-1 lists.
    parents = con.execute(
        """SELECT DISTINCT p.generation FROM samples c JOIN samples p
           ON c.parent_sample_id = p.sample_id
           WHERE c.stage = 'instructions' AND c.generation = 2"""
    ).fetchall()
    assert parents == [(1,)]

    served = _served(emulator)
    again = asyncio.run(generate(job=job, run_id="si"))
    assert again.requests_planned == 0 and again.requests_skipped == summary.requests_planned
    assert _served(emulator) == served


@pytest.mark.slow  # ~70 requests over three stages
def test_evol_instruct_lineage_from_child_to_parent_and_resume(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    recipe = (
        "recipe: {type: evol_instruct, generations: 2, evolver: t1, answer_seeds: true,\n"
        "         operations: [deepen, constrain, concretize, reasoning, breadth]}\n"
    )
    job = load_config(write_job(tmp_path, emulator.url, prompts=10, teachers=2, extra=recipe))
    summary = asyncio.run(generate(job=job, run_id="evol"))
    assert summary.failures == 0
    con = open_catalog(job.output)
    first = con.execute(
        """SELECT count(*), count(parent_sample_id), bool_and(teacher_name = 't1')
           FROM samples WHERE stage = 'evolve' AND generation = 1"""
    ).fetchall()
    assert first == [(10, 0, True)]  # seeds have no parent sample
    # A generation-2 rewrite's parent is the generation-1 rewrite that wrote its instruction.
    links = con.execute(
        """SELECT c.prompt_id, p.prompt_id, c.operation, c.response_text, p.response_text
           FROM samples c JOIN samples p ON c.parent_sample_id = p.sample_id
           WHERE c.stage = 'evolve' AND c.generation = 2"""
    ).fetchall()
    assert links
    orphans = con.execute(
        """SELECT count(*) FROM samples c ANTI JOIN samples p ON c.parent_sample_id = p.sample_id
           WHERE c.stage = 'evolve' AND c.generation = 2"""
    ).fetchall()
    assert orphans == [(0,)]
    for child, parent, operation, child_text, parent_text in links:
        assert child == f"{parent}>{operation}"
        assert child_text.startswith(parent_text.strip())  # the emulator appends a demand
    # Each evolved instruction is answered by both teachers, pointing at its evolve row.
    answers = con.execute(
        """SELECT count(*), count(DISTINCT a.prompt_id),
                  bool_and('evolve/' || a.prompt_id = e.prompt_id
                           AND a.operation = e.operation AND a.generation = e.generation
                           AND a.prompt = e.response_text)
           FROM samples a JOIN samples e ON a.parent_sample_id = e.sample_id
           WHERE a.stage = 'answer'"""
    ).fetchall()
    evolved = answers[0][1]
    assert answers[0][0] == 2 * evolved and answers[0][2] is True
    seeds_answered = con.execute(
        "SELECT count(*) FROM samples WHERE stage = 'answer' AND generation = 0"
    ).fetchall()
    assert seeds_answered == [(20,)]
    # Rewrites are near copies of their parent by design: dedup leaves them alone.
    assert con.execute("SELECT count(*) FROM rejected WHERE stage = 'evolve'").fetchall() == [(0,)]

    served = _served(emulator)
    again = asyncio.run(generate(job=job, run_id="evol"))
    assert again.requests_planned == 0 and again.requests_skipped == summary.requests_planned
    assert _served(emulator) == served
