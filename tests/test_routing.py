"""Routing and several samples per prompt: the pure parts, then real flows on the emulator."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from distillery.config import JobConfig, load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.errors import ConfigError
from distillery.flows.generate import generate
from distillery.generators.batch import plan_work
from distillery.generators.prompts import Prompt
from distillery.generators.routing import Router, sample_teacher, split_choice
from distillery.storage.catalog import open_catalog

from .conftest import write_prompts

DEAD = "http://127.0.0.1:9"  # nothing listens: every attempt is a connection error


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "test-key-123")


def _teacher(name: str, url: str, model: str = "gpt-4o-mini", extra: str = "") -> str:
    return f"""
  - name: {name}
    provider: openai
    model: {model}
    base_url: {url}/v1
    api_key_env: EMULATOR_API_KEY
    params: {{temperature: 0.3, max_tokens: 200, seed: 10}}
    concurrency: 8
    max_attempts: 1{extra}"""


def _job(directory: Path, teachers: str, extra: str = "", prompts: int = 12) -> JobConfig:
    write_prompts(directory / "prompts.jsonl", prompts)
    config = directory / "job.yaml"
    config.write_text(
        f"name: routed\nprompts:\n  path: prompts.jsonl\nteachers:{teachers}\n"
        f"batch_size: 5\noutput: out\n{extra}"
    )
    return load_config(config)


def _prompts(count: int) -> list[Prompt]:
    return [Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(count)]


# --- pure parts ------------------------------------------------------------------------------


def test_split_shares_follow_the_weights_and_never_move(tmp_path: Path) -> None:
    job = _job(
        tmp_path,
        _teacher("a", DEAD) + _teacher("b", DEAD) + _teacher("c", DEAD),
        "routing: {mode: split, weights: {a: 3, b: 1}}",  # c: no weight, never first
    )
    ids = [f"prompt-{i}" for i in range(800)]
    first = Counter(Router(job).chains(pid)[0][0].name for pid in ids)
    assert set(first) == {"a", "b"}
    # Each prompt is an independent draw with p = 0.75: the share's standard deviation is
    # sqrt(p(1-p)/N) = 0.015 for N = 800; four of them leave a 1-in-15,000 chance of a false
    # alarm for a fair hash (and the hash is fixed, so this test cannot flicker).
    share = first["a"] / len(ids)
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(ids))
    # Stable: a new router (another run, a resume) and another prompt order route alike.
    again = Router(job)
    assert all(again.chains(pid) == Router(job).chains(pid) for pid in reversed(ids))
    # Another seed is another assignment, with the same shares.
    reseeded = [split_choice(pid, ["a", "b"], [3, 1], seed=1) for pid in ids]
    original = [split_choice(pid, ["a", "b"], [3, 1], seed=0) for pid in ids]
    assert reseeded != original
    assert abs(reseeded.count(0) / len(ids) - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(ids))


def test_samples_get_distinct_seeds_and_a_temperature_schedule(tmp_path: Path) -> None:
    job = _job(tmp_path, _teacher("a", DEAD), "n: 4\ntemperatures: [0.2, 1.0]")
    base = job.teachers[0]
    asked = [sample_teacher(base, i, job.temperatures) for i in range(4)]
    assert [t.params.seed for t in asked] == [10, 11, 12, 13]
    assert [t.params.temperature for t in asked] == [0.2, 1.0, 0.2, 1.0]
    # Without a schedule, sample 0 is the teacher itself: n=1 runs keep their sample ids.
    assert sample_teacher(base, 0, None) is base
    assert sample_teacher(base, 2, None).params.seed == 12
    plan = plan_work(_prompts(3), Router(job), set())
    items = [item for prompt_items in plan for item in prompt_items]
    assert len(items) == 12 and len({item.sample_id for item in items}) == 12
    assert sorted({item.sample_index for item in items}) == [0, 1, 2, 3]


def test_plan_skips_chains_answered_by_any_of_their_teachers(tmp_path: Path) -> None:
    job = _job(tmp_path, _teacher("a", DEAD) + _teacher("b", DEAD), "routing: {mode: fallback}")
    router = Router(job)
    plan = plan_work(_prompts(4), router, set())
    assert [[(i.teacher.name, i.route, i.route_step) for i in p] for p in plan] == [
        [("a", "fallback", 0)]
    ] * 4
    # p0 answered by the fallback teacher b, p1 by a: only p2 and p3 remain, from a again.
    done = {plan[0][0].fallback().sample_id, plan[1][0].sample_id}  # type: ignore[union-attr]
    again = plan_work(_prompts(4), router, done)
    assert [p[0].prompt.prompt_id for p in again] == ["p2", "p3"]
    assert again[0][0].fallback() is not None and again[0][0].fallback().fallback() is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("routing: {mode: split, weights: {zz: 1}}", "routing.weights.zz: no teacher"),
        ("routing: {mode: all, weights: {a: 1}}", "routing: weights and fallback apply to"),
        ("routing: {mode: split, weights: {a: 0}}", "routing: weights: at least one"),
        ("routing: {mode: sideways}", "routing.mode: Input should be"),
        ("temperatures: [0.5, 2.5]", "temperatures[1]: must be within 0..2"),
        ("n: 0", "n: Input should be greater than or equal to 1"),
    ],
)
def test_bad_routing_is_one_line_naming_the_field(
    tmp_path: Path, extra: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _job(tmp_path, _teacher("a", DEAD), extra)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_plan_counts_requests_as_routed(tmp_path: Path) -> None:
    from distillery.generators.plan import plan_job

    job = _job(
        tmp_path,
        _teacher("a", DEAD) + _teacher("b", DEAD) + _teacher("c", DEAD),
        "routing: {mode: split, weights: {a: 1, b: 1}}\nn: 3",
    )
    prompts = _prompts(40)
    plans = {p.teacher: p.requests for p in plan_job(job, prompts)}
    router = Router(job)
    to_a = sum(router.chains(p.prompt_id)[0][0].name == "a" for p in prompts)
    assert plans == {"a": 3 * to_a, "b": 3 * (40 - to_a), "c": 0}
    fallback = job.model_copy(
        update={"routing": job.routing.model_copy(update={"mode": "fallback", "weights": None})}
    )
    assert [p.requests for p in plan_job(fallback, prompts)] == [120, 0, 0]


def test_summary_counts_a_failure_followed_by_a_fallback_as_not_final() -> None:
    from .test_cli import summary_text

    text = summary_text(
        width=160,
        status="completed",
        prompts=10,
        requests_planned=10,
        samples=8,
        failures=5,
        fell_back=4,
        failures_by_class={"server_error": 5},
        unusable={"locked": "teacher 'locked': HTTP 401 (key from X_KEY)"},
    )
    # 8 answered + 1 final failure = 9 of 10: one request was not sent.
    assert "5 (server_error 5; 4 then sent to the next teacher)" in text
    assert "not sent" in text and "1 (re-run" in text
    assert "locked: teacher 'locked': HTTP 401" in text


def test_shards_from_before_routing_read_route_as_null_and_dedup_still_rewrites_them(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    import pyarrow.parquet as pq

    from distillery.config import DedupConfig
    from distillery.flows.curate import dedup_run
    from distillery.storage.shards import write_shard

    rows = [
        {
            "sample_id": f"s{i}",
            "run_id": "old",
            "prompt_id": f"p{i}",
            "sample_index": 0,
            "teacher_name": "t",
            "teacher_provider": "openai",
            "teacher_model": "m",
            "response_text": "the same answer twice",
            "content_hash": "same",
            "created_at": datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC),
        }
        for i in range(2)
    ]
    write_shard(tmp_path, "samples", "old", rows, 0)
    # Make the shard what an older distillery wrote: no route columns at all.
    (shard,) = (tmp_path / "samples" / "run_id=old").glob("*.parquet")
    pq.write_table(pq.read_table(shard).drop_columns(["route", "route_step"]), shard)

    con = open_catalog(tmp_path)
    assert con.execute("SELECT route, route_step FROM samples").fetchall() == [(None, None)] * 2
    assert dedup_run(tmp_path, "old", [], DedupConfig()) == {"duplicate": 1}
    con = open_catalog(tmp_path)
    assert con.execute("SELECT sample_id, route FROM rejected").fetchall() == [("s1", None)]
    assert con.execute("SELECT sample_id FROM samples").fetchall() == [("s0",)]


# --- real flows ------------------------------------------------------------------------------


@pytest.mark.slow
def test_split_with_n_samples_end_to_end_then_resume_sends_nothing(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    job = _job(
        tmp_path,
        _teacher("a", emulator.url) + _teacher("b", emulator.url, "gpt-4.1-mini"),
        "routing: {mode: split, weights: {a: 1, b: 1}}\nn: 3\ntemperatures: [0.2, 0.9]",
        prompts=10,
    )
    summary = asyncio.run(generate(job=job, run_id="s1"))
    assert (summary.status, summary.requests_planned, summary.samples) == ("completed", 30, 30)
    con = open_catalog(job.output)
    per_prompt = con.execute(
        """SELECT prompt_id, count(DISTINCT teacher_name), list(sample_index ORDER BY sample_index),
                  list(params->>'seed' ORDER BY sample_index),
                  list(params->>'temperature' ORDER BY sample_index),
                  bool_and(route = 'split' AND route_step = 0),
                  count(DISTINCT sample_id), count(DISTINCT response_text)
           FROM samples GROUP BY prompt_id ORDER BY prompt_id"""
    ).fetchall()
    assert len(per_prompt) == 10
    for _, teachers, indices, seeds, temperatures, split, ids, texts in per_prompt:
        assert teachers == 1 and indices == [0, 1, 2] and split
        assert seeds == ["10", "11", "12"] and temperatures == ["0.2", "0.9", "0.2"]
        assert ids == 3 and texts == 3  # distinct seeds, distinct answers, nothing deduped
    router = Router(job)
    expected = {f"p{i}": router.chains(f"p{i}")[0][0].name for i in range(10)}
    stored = dict(con.execute("SELECT DISTINCT prompt_id, teacher_name FROM samples").fetchall())
    assert stored == expected and set(stored.values()) == {"a", "b"}

    again = asyncio.run(generate(job=job, run_id="s1"))
    assert (again.requests_planned, again.requests_skipped) == (0, 30)
    assert emulator.stats()["served_ok"] == 30  # the resume bought nothing


@pytest.mark.slow
def test_fallback_past_an_unusable_and_a_failing_teacher(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    with RunningEmulator(EmulatorOptions(require_key="another-key")) as locked:
        job = _job(
            tmp_path,
            _teacher("locked", locked.url) + _teacher("down", DEAD) + _teacher("up", emulator.url),
            "routing: {mode: fallback}",
            prompts=6,
        )
        summary = asyncio.run(generate(job=job, run_id="f1"))
    assert summary.status == "completed"  # a bad key behind a fallback does not stop the run
    assert (summary.samples, summary.failures, summary.fell_back) == (6, 6, 6)
    assert "EMULATOR_API_KEY" in summary.unusable["locked"]
    assert "test-key-123" not in json.dumps(summary.unusable)
    con = open_catalog(job.output)
    assert con.execute(
        "SELECT DISTINCT teacher_name, route, route_step FROM samples"
    ).fetchall() == [("up", "fallback", 2)]
    # The failures of the teacher before stay: they are lineage, joinable on prompt_id.
    joined = con.execute(
        """SELECT count(*) FROM samples s JOIN failures f USING (prompt_id, sample_index)
           WHERE f.teacher_name = 'down' AND f.route_step = 1
             AND f.error_class = 'connection_error'"""
    ).fetchall()
    assert joined == [(6,)]

    again = asyncio.run(generate(job=job, run_id="f1"))
    assert (again.requests_planned, again.requests_skipped) == (0, 6)
    assert emulator.stats()["served_ok"] == 6


@pytest.mark.slow
def test_a_spent_teacher_budget_falls_back_to_the_next_teacher(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    # gpt-4o-mini: ~$0.00012 per answer here; $0.0006 buys about five of 30 prompts.
    job = _job(
        tmp_path,
        _teacher("cheap", emulator.url, extra="\n    budget_usd: 0.0006")
        + _teacher("spare", emulator.url, "gpt-4.1-nano"),
        "routing: {mode: fallback}",
        prompts=30,
    )
    summary = asyncio.run(generate(job=job, run_id="b1"))
    assert summary.status == "completed" and summary.samples == 30
    con = open_catalog(job.output)
    routes = dict(
        ((name, step), count)
        for name, step, count in con.execute(
            "SELECT teacher_name, route_step, count(*) FROM samples GROUP BY ALL"
        ).fetchall()
    )
    assert set(routes) == {("cheap", 0), ("spare", 1)}
    assert 0 < routes[("cheap", 0)] < 30
    cheap_cost, per_answer = con.execute(
        "SELECT sum(cost_usd), avg(cost_usd) FROM samples WHERE teacher_name = 'cheap'"
    ).fetchall()[0]
    assert cheap_cost <= 0.0006 + 8 * per_answer  # at most what was in flight (concurrency 8)

    # Resumed with ten more prompts: the earlier spend still counts against the teacher's
    # budget, so the new prompts go straight to the fallback; the old ones are not re-bought.
    write_prompts(tmp_path / "prompts.jsonl", 40)
    served = int(str(emulator.stats()["served_ok"]))
    again = asyncio.run(generate(job=job, run_id="b1"))
    assert (again.requests_planned, again.samples) == (10, 10)
    assert emulator.stats()["served_ok"] == served + 10
    new = (
        open_catalog(job.output)
        .execute(
            """SELECT DISTINCT teacher_name, route_step FROM samples
           WHERE prompt_id IN ('p30','p31','p32','p33','p34','p35','p36','p37','p38','p39')"""
        )
        .fetchall()
    )
    assert new == [("spare", 1)]
