"""How answers are bought (``delivery: online | batch``): the job file's checks, the batch
price, the rows' ``delivery`` and ``provider_batch_id``, and what ``plan`` estimates."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pytest
from rich.console import Console

from distillery.config import JobConfig, TeacherConfig, load_config
from distillery.errors import ConfigError
from distillery.generators.client import Failure, Outcome
from distillery.generators.plan import TeacherPlan, plan_job
from distillery.generators.pricing import PriceEntry, answer_cost, cost_usd, load_prices
from distillery.generators.prompts import Prompt, iter_prompts
from distillery.generators.providers.base import Completion, SubmissionLimits
from distillery.generators.providers.registry import get_provider, provider_names
from distillery.generators.records import (
    Delivered,
    RunContext,
    TeacherFacts,
    failure_row,
    sample_id_for,
    sample_row,
)
from distillery.plan_report import RECORD_FIELDS, plan_notes, plan_records, plan_table
from distillery.render import print_table

from .test_prompt_caching import cache_price

JOB = """
prompts:
  path: prompts.jsonl
teachers:
  - name: online
    provider: openai
    model: gpt-4o-mini
    base_url: http://127.0.0.1:9/v1
    params: {max_tokens: 100}
  - name: claude
    provider: anthropic
    model: claude-sonnet-4-5
    base_url: http://127.0.0.1:9
    params: {max_tokens: 100}
    delivery: batch
"""


def job_file(tmp_path: Path, text: str = JOB, extra: str = "") -> Path:
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(10))
    )
    path = tmp_path / "job.yaml"
    path.write_text(text + extra)
    return path


# ------------------------------------------------------------------ the job file


def test_a_batch_teacher_gets_default_submission_options(tmp_path: Path) -> None:
    job = load_config(job_file(tmp_path))
    online, claude = job.teachers
    assert (online.delivery, online.submissions) == ("online", None)
    assert claude.delivery == "batch" and claude.submissions is None
    options = claude.submission_options
    assert (options.max_requests, options.max_bytes) == (None, None)
    assert (options.poll_interval_s, options.wait_s) == (60.0, 600.0)


def test_submission_sizes_read_units_and_stay_under_the_provider_caps(tmp_path: Path) -> None:
    text = JOB + "    submissions: {max_requests: 5000, max_bytes: 100 MB, wait_s: 0}\n"
    claude = load_config(job_file(tmp_path, text)).teachers[1]
    assert claude.submissions is not None
    assert (claude.submissions.max_bytes, claude.submissions.wait_s) == (100_000_000, 0.0)
    limits = get_provider("anthropic").submission_limits
    assert limits is not None
    capped = limits.within(claude.submission_options)
    assert (capped.max_requests, capped.max_bytes) == (5000, 100_000_000)
    assert limits.within(load_config(job_file(tmp_path)).teachers[1].submission_options) == limits


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (
            ("provider: anthropic", "provider: local"),
            "teachers[1]: delivery: batch needs a provider batch API; provider local has none",
        ),
        (
            ("    delivery: batch\n", "    submissions: {wait_s: 0}\n"),
            "teachers[1]: submissions: applies to delivery: batch only",
        ),
        (
            ("delivery: batch", "delivery: batch\n    submissions: {max_requests: 100001}"),
            "teachers[1]: submissions.max_requests: 100,001 is above anthropic's cap of "
            "100,000 requests per submission",
        ),
        (
            ("delivery: batch", "delivery: batch\n    submissions: {max_bytes: 257 MB}"),
            "teachers[1]: submissions.max_bytes: 257,000,000 is above anthropic's cap of "
            "256,000,000 bytes per submission",
        ),
        (
            ("delivery: batch", "delivery: batch\n    submissions: {max_bytes: lots}"),
            "teachers[1].submissions.max_bytes: expected bytes or a size like '100 MB', got 'lots'",
        ),
        (
            ("delivery: batch", "delivery: batch\n    submissions: {poll_interval_s: 0}"),
            "teachers[1].submissions.poll_interval_s: Input should be greater than 0",
        ),
        (
            ("delivery: batch", "delivery: batch\n    submissions: {wait_s: -1}"),
            "teachers[1].submissions.wait_s: Input should be greater than or equal to 0",
        ),
        (
            ("delivery: batch", "delivery: batch\n    submissions: {every: 5}"),
            "teachers[1].submissions.every: unknown field",
        ),
        (("delivery: batch", "delivery: later"), "teachers[1].delivery: Input should be"),
    ],
)
def test_a_wrong_delivery_is_one_line_naming_the_field(
    tmp_path: Path, edit: tuple[str, str], error: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(job_file(tmp_path, JOB.replace(*edit)))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'job.yaml'}: ") and error in message, message


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            "recipe: {type: conversation}\n",
            "teachers[1].delivery: batch cannot serve recipe: conversation",
        ),
        (
            "recipe: {type: evol_instruct}\n",
            "teachers[1].delivery: batch cannot serve recipe: evol_instruct",
        ),
        (
            "task_runner: {type: dask}\n",
            "teachers[1].delivery: batch runs on task_runner thread only, not dask",
        ),
        (
            "routing: {mode: fallback}\n",
            "teachers[1].delivery: batch cannot be in a fallback chain (routing.mode: fallback)",
        ),
        (
            "routing: {mode: split, fallback: true}\n",
            "teachers[1].delivery: batch cannot be in a fallback chain (routing.fallback: true)",
        ),
        (
            "curation:\n  judge:\n    teacher: {name: j, provider: anthropic, model: m, "
            "base_url: 'http://127.0.0.1:9', delivery: batch}\n",
            "curation.judge.teacher.delivery: the judge grades each answer as it arrives",
        ),
    ],
)
def test_what_batch_delivery_cannot_do_is_refused(tmp_path: Path, extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(job_file(tmp_path, extra=extra))
    assert "\n" not in str(raised.value) and error in str(raised.value)


def test_what_batch_delivery_can_do_is_accepted(tmp_path: Path) -> None:
    """A split without fallback, and n samples, send each request once: batchable."""
    job = load_config(job_file(tmp_path, extra="routing: {mode: split}\nn: 3\n"))
    assert job.teachers[1].delivery == "batch"
    online_only = JOB.replace("    delivery: batch\n", "")
    assert load_config(job_file(tmp_path, online_only, "recipe: {type: conversation}\n"))


def test_every_provider_states_its_batch_api_or_none() -> None:
    limits = {name: get_provider(name).submission_limits for name in provider_names()}
    assert limits["local"] is None  # an OpenAI subclass, but llama.cpp has no batch API
    assert limits["openai"] == SubmissionLimits(50_000, 200_000_000, one_model=True)
    assert limits["anthropic"] == SubmissionLimits(100_000, 256_000_000)
    gemini = limits["gemini"]
    assert gemini is not None and gemini.max_requests is None
    assert (gemini.max_bytes, gemini.inline_max_bytes) == (2_000_000_000, 20_000_000)


def test_switching_delivery_keeps_the_job_its_hash_and_its_sample_ids(tmp_path: Path) -> None:
    """An answer bought through a batch API is the same product as one bought online: a run
    id may switch a teacher either way (what is not answered yet is sent the new way)."""
    batch = load_config(job_file(tmp_path))
    online = load_config(job_file(tmp_path, JOB.replace("    delivery: batch\n", "")))
    assert batch.shape() == online.shape()
    assert "delivery" not in json.dumps(batch.shape())  # shapes recorded before still match
    assert batch.config_hash() == online.config_hash()
    waiting = JOB.replace("delivery: batch", "delivery: batch\n    submissions: {wait_s: 0}")
    assert load_config(job_file(tmp_path, waiting)).config_hash() == batch.config_hash()
    assert sample_id_for("p", batch.teachers[1], 0) == sample_id_for("p", online.teachers[1], 0)
    other = JOB.replace("max_tokens: 100}\n    delivery", "max_tokens: 99}\n    delivery")
    assert load_config(job_file(tmp_path, other)).config_hash() != batch.config_hash()


# ------------------------------------------------------------------ the price


def test_the_batch_price_takes_the_discount_off_every_rate() -> None:
    price = cache_price(batch_discount=0.5)
    # 1000 prompt tokens: 600 read from the cache, 300 written to it, 100 plain; 50 out.
    online = (100 * 2.0 + 600 * 0.2 + 300 * 2.5 + 50 * 10.0) / 1e6
    assert cost_usd(price, 1000, 50, 600, 300) == pytest.approx(online)
    assert cost_usd(price, 1000, 50, 600, 300, delivery="batch") == pytest.approx(online / 2)
    cached_only = cost_usd(price, 1000, 0, 1000, 0, delivery="batch")
    assert cached_only == pytest.approx(1000 * 0.2 * 0.5 / 1e6)  # the cached rate, halved
    written_only = cost_usd(price, 1000, 0, 0, 1000, delivery="batch")
    assert written_only == pytest.approx(1000 * 2.5 * 0.5 / 1e6)  # the write premium, halved
    undiscounted = price.model_copy(update={"batch_discount": 0.0})
    assert cost_usd(undiscounted, 1000, 50, 600, 300, delivery="batch") == pytest.approx(online)
    assert cost_usd(None, 1000, 50, delivery="batch") is None
    usage = Completion("a", "stop", "stop", "m", "r", prompt_tokens=1000, completion_tokens=50)
    online_answer = answer_cost(price, usage)
    assert online_answer is not None
    assert answer_cost(price, usage, "batch") == pytest.approx(online_answer / 2)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_every_shipped_price_of_a_batch_provider_knows_its_discount(provider: str) -> None:
    entries = [e for e in load_prices() if e.provider == provider]
    assert entries
    assert all(e.batch_discount == 0.5 for e in entries), [e.model for e in entries]


# ------------------------------------------------------------------ the rows


def _rows_context(price: PriceEntry) -> tuple[RunContext, Prompt, TeacherConfig]:
    teacher = TeacherConfig(
        name="t", provider="openai", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1"
    )
    ctx = RunContext("r", "h", None, teachers={"t": TeacherFacts("terms", price)})
    return ctx, Prompt("p", [{"role": "user", "content": "hi"}]), teacher


def test_rows_say_how_their_answer_was_bought_and_cost_its_price() -> None:
    price = PriceEntry(
        provider="openai", model="*", input=1.0, output=2.0, batch_discount=0.5, as_of=date.today()
    )
    ctx, prompt, teacher = _rows_context(price)
    answer = Completion("a", "stop", "stop", "m", "r", prompt_tokens=100, completion_tokens=50)
    outcome = Outcome(completion=answer, failure=None, attempts=1)
    online = sample_row(ctx, prompt, teacher, 0, outcome)
    assert (online["delivery"], online["provider_batch_id"]) == ("online", None)
    assert online["cost_usd"] == pytest.approx(200 / 1e6)
    batch = sample_row(ctx, prompt, teacher, 0, outcome, Delivered("batch", "batch_1"))
    assert (batch["delivery"], batch["provider_batch_id"]) == ("batch", "batch_1")
    assert batch["cost_usd"] == pytest.approx(100 / 1e6)
    assert batch["sample_id"] == online["sample_id"]  # the same answer, bought another way
    expired = Outcome(completion=None, failure=Failure("expired", "not done", None), attempts=1)
    failed = failure_row(ctx, prompt, teacher, 0, expired, Delivered("batch", "batch_1"))
    assert (failed["delivery"], failed["provider_batch_id"]) == ("batch", "batch_1")
    assert failure_row(ctx, prompt, teacher, 0, expired)["delivery"] == "online"


def test_a_batch_answer_names_its_batch_and_an_online_one_none() -> None:
    with pytest.raises(ValueError, match="provider batch id"):
        Delivered("batch")
    with pytest.raises(ValueError, match="provider batch id"):
        Delivered("online", "batch_1")


# ------------------------------------------------------------------ the plan


def _plans(tmp_path: Path, text: str = JOB) -> tuple[JobConfig, list[TeacherPlan]]:
    job = load_config(job_file(tmp_path, text))
    return job, plan_job(job, iter_prompts(job.prompts))


def test_plan_prices_every_teacher_online_and_batch_and_charges_its_delivery(
    tmp_path: Path,
) -> None:
    text = JOB.replace("max_tokens: 100}\n", "max_tokens: 100}\n    limits: {rpm: 10}\n")
    online, claude = _plans(tmp_path, text)[1]
    assert online.online_cost_usd is not None and claude.online_cost_usd is not None
    assert online.batch_cost_usd == pytest.approx(online.online_cost_usd / 2)
    assert claude.batch_cost_usd == pytest.approx(claude.online_cost_usd / 2)
    assert online.cost_usd == online.online_cost_usd  # paid as sent: online
    assert claude.cost_usd == claude.batch_cost_usd  # paid as sent: batch
    # Online time is the limits'; a batch teacher's is its provider's window, limits or not.
    assert (online.min_minutes, online.binding_limit, online.window_h) == (1.0, "rpm", None)
    assert (claude.min_minutes, claude.binding_limit, claude.window_h) == (None, None, 24)
    assert (online.delivery, claude.delivery) == ("online", "batch")


def test_plan_shows_both_prices_at_80_columns_and_the_budget_at_batch_prices(
    tmp_path: Path,
) -> None:
    job, plans = _plans(tmp_path)
    claude = plans[1]
    assert claude.batch_cost_usd is not None and claude.online_cost_usd is not None
    # A budget between the two prices: enough at the batch price it pays, not online.
    budget = (claude.batch_cost_usd + claude.online_cost_usd) / 2
    text = JOB.replace("delivery: batch", f"delivery: batch\n    budget_usd: {budget}")
    job, plans = _plans(tmp_path, text=text)
    console = Console(file=io.StringIO(), width=80, record=True)
    columns, rows = plan_table(plans)
    print_table(console, "plan", columns, rows, right=frozenset(columns[1:-1]))
    for line in plan_notes(job, plans):
        console.print(line)
    shown = console.export_text()
    lines = shown.splitlines()
    assert all(len(line) <= 80 for line in lines), shown
    header = " ".join(lines[:4])
    for word in ("online", "batch", "time", "bound by"):
        assert word in header, shown
    claude_row = next(line.split() for line in lines if line.startswith(" claude"))
    assert claude_row[-3:] == ["≤24", "h", "batch"]
    assert f"{claude.online_cost_usd:,.4f}" in claude_row
    assert f"{claude.batch_cost_usd:,.4f}" in claude_row
    assert f"claude: budget_usd {budget} at batch prices (its requests" in shown
    assert "below its estimate" not in shown  # it would be, at the online price
    assert "claude: delivery batch, at the batch price, answers within 24 h" in shown
    assert plans[0].cost_usd is not None and plans[1].cost_usd is not None
    assert f"total: ${plans[0].cost_usd + plans[1].cost_usd:,.4f} as sent" in shown


def test_plan_records_hold_every_field_unrounded(tmp_path: Path) -> None:
    job, plans = _plans(tmp_path)
    assert set(RECORD_FIELDS) == {*TeacherPlan.__dataclass_fields__, "budget_usd"}
    columns, rows = plan_records(job, plans)
    claude = dict(zip(columns, rows[1], strict=True))
    assert claude["delivery"] == "batch" and claude["window_h"] == 24
    assert claude["cost_usd"] == claude["batch_cost_usd"] == plans[1].batch_cost_usd
    assert claude["batch_api"] is True and claude["budget_usd"] is None
