"""What ``distillery plan`` prints: its table at 80 columns, the lines under it, its records.

Apart from the command so the words stay in one place: each teacher is priced online and
through its provider's batch API side by side, a batch teacher's time is its provider's window
rather than a rate-limit estimate, and the total and the budgets are at the price each teacher
is actually sent at. ``--format csv`` and ``json`` give the same facts unrounded.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from distillery.config import JobConfig
from distillery.generators.plan import ASSUMED_COMPLETION_TOKENS, TeacherPlan


def _usd(value: float | None) -> str:
    return "no price" if value is None else f"{value:,.4f}"


def _minutes(value: float) -> str:
    return f"{value * 60:.0f}s" if value < 1 else f"{value:.1f} min"


def plan_table(plans: list[TeacherPlan]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The columns and rows of the table (numbers formatted for reading)."""
    thinking = any(p.reasoning_tokens for p in plans)
    columns = ["teacher", "requests", "prompt\ntokens", "answer\ntokens"]
    columns += ["of which\nthinking"] if thinking else []
    columns += ["online\nUSD", "batch\nUSD", "time", "bound by"]
    rows = []
    for item in plans:
        completion = f"{item.completion_tokens:,}" + ("" if item.completion_is_bound else " *")
        reasoning = [f"{item.reasoning_tokens:,}" if item.reasoning_tokens else "-"]
        if item.window_h is not None:
            time, bound = f"≤{item.window_h} h", "batch"
        else:
            time = "-" if item.min_minutes is None else _minutes(item.min_minutes)
            bound = item.binding_limit or "no limit"
        rows.append(
            (
                item.teacher,
                f"{item.requests:,}",
                f"{item.prompt_tokens:,}",
                completion,
                *(reasoning if thinking else []),
                _usd(item.online_cost_usd),
                _usd(item.batch_cost_usd) if item.batch_api else "-",
                time,
                bound,
            )
        )
    return columns, rows


def plan_notes(job: JobConfig, plans: list[TeacherPlan]) -> list[str]:
    """The lines under the table: the total as sent and either way, what was assumed, the
    budgets (a batch teacher's at batch prices) and the routing."""
    known = [p.cost_usd for p in plans if p.cost_usd is not None]
    slowest = max((p.min_minutes for p in plans if p.min_minutes is not None), default=None)
    unpriced = len(plans) - len(known)
    total = f"total: ${sum(known):,.4f}"
    if any(p.batch_api for p in plans):
        total += " as sent"
    if unpriced:
        total += f" (+ {unpriced} teacher(s) without a price)"
    if slowest:
        total += f"; at least {_minutes(slowest)} at full use of the limits"
    lines = [total]
    if any(p.batch_api for p in plans):
        online = sum(p.online_cost_usd or 0.0 for p in plans)
        batch = sum((p.batch_cost_usd if p.batch_api else p.online_cost_usd) or 0.0 for p in plans)
        lines.append(f"  all online: ${online:,.4f}; batch where offered: ${batch:,.4f}")
    for item in plans:
        if item.window_h is not None:
            lines.append(
                f"{item.teacher}: delivery batch, at the batch price, answers within "
                f"{item.window_h} h"
            )
    if any(not p.completion_is_bound for p in plans):
        lines.append(
            f"* no max_tokens: assumed {ASSUMED_COMPLETION_TOKENS} tokens per answer, plus the "
            "thinking budget of reasoning teachers"
        )
    if job.budget_usd is not None:
        lines.append(f"budget_usd: {job.budget_usd} (the run stops sending before exceeding it)")
    costs = {p.teacher: p for p in plans}
    for teacher in job.teachers:
        if teacher.budget_usd is None:
            continue
        plan = costs[teacher.name]
        over = plan.cost_usd is not None and plan.cost_usd > teacher.budget_usd
        at = " at batch prices" if plan.delivery == "batch" else ""
        lines.append(
            f"{teacher.name}: budget_usd {teacher.budget_usd}{at}"
            + (" — below its estimate: it will stop early" if over else "")
            + " (its requests stop before exceeding it)"
        )
    if job.routing.mode != "all" or job.n > 1:
        fallback = job.routing.mode == "fallback" or job.routing.fallback
        lines.append(
            f"routing: {job.routing.mode}, n={job.n}"
            + ("; fallback teachers are asked only when an earlier one fails" if fallback else "")
        )
    return lines


#: The records' fields, in reading order: every field of a :class:`TeacherPlan`, and the
#: teacher's own budget.
RECORD_FIELDS = (
    "teacher",
    "delivery",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "completion_is_bound",
    "reasoning_tokens",
    "cost_usd",
    "online_cost_usd",
    "batch_cost_usd",
    "batch_api",
    "min_minutes",
    "binding_limit",
    "window_h",
    "budget_usd",
)


def plan_records(
    job: JobConfig, plans: list[TeacherPlan]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The rows of ``--format csv`` and ``json``: every teacher's plan, unrounded."""
    budgets = {t.name: t.budget_usd for t in job.teachers}
    records = [{**asdict(p), "budget_usd": budgets.get(p.teacher)} for p in plans]
    return list(RECORD_FIELDS), [tuple(r[name] for name in RECORD_FIELDS) for r in records]
