"""The generate flow: prompts routed to teachers, fanned out as one Prefect task per batch.

Thin by design: loading, sending and writing live in ``generators/`` and ``storage/``. What
lives here is the orchestration — which requests are still to make (a re-run of a run id sends
only what has no sample yet), batches in flight, and the run record. Prefect's deployment
entrypoint is this file: ``flows/generate.py:generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from pydantic import BaseModel, Field

from distillery import __version__
from distillery.config import JobConfig, load_config, require_api_keys
from distillery.errors import FatalRunError
from distillery.flows.artifacts import Progress, publish_run_artifacts
from distillery.flows.curate import dedup_run_task, earlier_runs
from distillery.flows.progress import STOP, get_listener
from distillery.flows.shared_limits import shared_limits_for
from distillery.generators.batch import Batch, TeacherPool, WorkItem, plan_work, run_batch
from distillery.generators.budget import Budget
from distillery.generators.curation.apply import Curator, build_curator
from distillery.generators.curation.minhash import DEFAULT_PARAMS
from distillery.generators.prompts import load_prompts, template_hash
from distillery.generators.records import RunContext, teacher_facts
from distillery.generators.routing import Router
from distillery.generators.structured import build_structured
from distillery.storage.compact import compact_partition
from distillery.storage.location import Location, as_location, resolve_output
from distillery.storage.shards import next_part_number, partition_dir, read_column, write_shard
from distillery.storage.spool import Spool, recover


class BatchSummary(BaseModel):
    index: int
    samples: int
    rejected: dict[str, int] = Field(default_factory=dict)
    failures: int
    not_sent: int
    fell_back: int = 0
    failures_by_class: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    maybe_billed_twice: int = 0
    cost_usd: float = 0.0


class RunSummary(BaseModel):
    """What a run did; printed by the CLI and returned by the flow."""

    run_id: str
    dataset: str
    output: str
    status: str
    prompts: int
    requests_planned: int
    requests_skipped: int = Field(description="Already answered by an earlier invocation.")
    samples: int = 0
    rejected: dict[str, int] = Field(
        default_factory=dict, description="Answers set aside, by reason (filters and dedup)."
    )
    failures: int = 0
    not_sent: int = 0
    fell_back: int = Field(
        default=0, description="Failures after which the prompt went to the next teacher."
    )
    unusable: dict[str, str] = Field(
        default_factory=dict, description="Teachers routing fell back past, and why."
    )
    failures_by_class: dict[str, int] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    maybe_billed_twice: int = Field(
        default=0, description="Retries after an answer may have been produced and billed."
    )
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    flow_run_id: str | None = None


def _current_ids() -> tuple[str | None, str | None]:
    """(flow_run_id, task_run_id) of the Prefect context we are in, for lineage columns."""
    try:
        context = get_run_context()
    except RuntimeError:
        return None, None
    flow_run = getattr(context, "flow_run", None)
    task_run = getattr(context, "task_run", None)
    return (
        str(flow_run.id) if flow_run is not None else None,
        str(task_run.id) if task_run is not None else None,
    )


@task(name="generate-batch", task_run_name="{label}", cache_policy=NO_CACHE)
async def generate_batch(
    label: str,
    index: int,
    batch: Batch,
    pool: TeacherPool,
    ctx: RunContext,
    output: Location,
    part: int,
    curator: Curator,
) -> BatchSummary:
    """Send one batch, curate it, and commit its shards before returning."""
    logger = get_run_logger()
    ctx = replace(ctx, task_run_id=_current_ids()[1])
    started = time.perf_counter()
    listener = get_listener()
    spool = Spool(output, ctx.run_id)
    try:
        rows = await run_batch(
            batch.items, pool, ctx, listener.outcome if listener else None, sink=spool.append
        )
    finally:
        spool.close()
    kept, rejected = curator.curate(rows.samples)
    if pool.judge is not None and kept:
        kept, judged_out = await pool.judge.apply(kept)
        rejected += judged_out
    if kept:
        write_shard(output, "samples", ctx.run_id, kept, part)
    if rejected:
        write_shard(output, "rejected", ctx.run_id, rejected, part)
    if rows.failures:
        write_shard(output, "failures", ctx.run_id, rows.failures, part)
    spool.discard()
    elapsed = time.perf_counter() - started
    by_class = Counter(str(row["error_class"]) for row in rows.failures)
    rate_limited = sum(
        list(row["attempt_statuses"]).count("429") for row in (*rows.samples, *rows.failures)
    )
    logger.info(
        "batch %d: %d samples, %d rejected, %d failures, %d not sent, %d answered 429 "
        "in %.1fs (%.1f req/s)",
        index,
        len(kept),
        len(rejected),
        len(rows.failures),
        rows.not_sent,
        rate_limited,
        elapsed,
        (len(rows.samples) + len(rows.failures)) / elapsed if elapsed > 0 else 0.0,
    )
    return BatchSummary(
        index=index,
        samples=len(kept),
        rejected=dict(Counter(str(row["reason"]) for row in rejected)),
        failures=len(rows.failures),
        not_sent=rows.not_sent,
        fell_back=rows.fell_back,
        failures_by_class=dict(by_class),
        prompt_tokens=sum(int(r["prompt_tokens"] or 0) for r in rows.samples),
        completion_tokens=sum(int(r["completion_tokens"] or 0) for r in rows.samples),
        maybe_billed_twice=sum(
            int(r["maybe_billed_twice"] or 0) for r in (*rows.samples, *rows.failures)
        ),
        cost_usd=sum(float(r["cost_usd"] or 0.0) for r in rows.samples),
    )


def _label(index: int, items: list[WorkItem]) -> str:
    """A task run's name in the UI: the batch and the teachers it asks."""
    teachers = sorted({item.teacher.name for item in items})
    shown = ", ".join(teachers[:3]) + (f" +{len(teachers) - 3}" if len(teachers) > 3 else "")
    return f"batch-{index:05d} [{shown}]"


def _batches(plan: list[list[WorkItem]], batch_size: int) -> list[list[WorkItem]]:
    """``batch_size`` prompts per batch, each with its requests to every teacher."""
    return [
        [item for prompt_items in plan[start : start + batch_size] for item in prompt_items]
        for start in range(0, len(plan), batch_size)
    ]


@flow(name="generate", flow_run_name="{job.name}/{run_id}", persist_result=False)
async def generate(job: JobConfig, run_id: str, config_path: str | None = None) -> RunSummary:
    """Generate ``job.n`` samples per prompt from the teachers its routing picks, into
    ``job.output``."""
    logger = get_run_logger()
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    flow_run_id, _ = _current_ids()
    output = as_location(job.output)
    prompts = load_prompts(job.prompts)
    structured = build_structured(job.response_schema)
    curator = build_curator(job.curation, structured)
    recovered = recover(output, run_id, curator.curate)
    if any(recovered.values()):
        logger.warning(
            "recovered %d samples and %d failures spooled by an earlier invocation",
            recovered["samples"],
            recovered["failures"],
        )
    done = {
        str(sample_id)
        for table in ("samples", "rejected")
        for sample_id in read_column(output, table, run_id, "sample_id")
    }
    router = Router(job)
    plan = plan_work(prompts, router, done)
    planned = sum(len(items) for items in plan)
    skipped = len(prompts) * router.chains_per_prompt - planned
    listener = get_listener()
    if listener is not None:
        listener.planned(planned, skipped)
    logger.info(
        "run %s: %d prompts x %d requests each (routing %s, n=%d), %d to send, %d already answered",
        run_id,
        len(prompts),
        router.chains_per_prompt,
        router.mode,
        job.n,
        planned,
        skipped,
    )
    ctx = RunContext(
        run_id,
        job.config_hash(),
        template_hash(job.prompts),
        flow_run_id,
        teachers=teacher_facts(job),
    )
    batches = _batches(plan, job.batch_size)
    progress = Progress(job.name, planned)
    await progress.start()
    first_part = max(
        next_part_number(partition_dir(output, table, run_id))
        for table in ("samples", "rejected", "failures")
    )
    summary = RunSummary(
        run_id=run_id,
        dataset=job.name,
        output=output.uri,
        status="running",
        prompts=len(prompts),
        requests_planned=planned,
        requests_skipped=skipped,
        flow_run_id=flow_run_id,
    )
    results: list[BatchSummary] = []
    removed: dict[str, int] = {}
    try:
        spent = _spent_by_teacher(output, run_id)
        budget = None
        if job.budget_usd is not None:
            budget = Budget(job.budget_usd, sum(spent.values()))
        teacher_budgets = {
            t.name: Budget(t.budget_usd, spent.get(t.name, 0.0))
            for t in job.teachers
            if t.budget_usd is not None
        }
        prices = {name: facts.price for name, facts in ctx.teachers.items()}
        shared = {t.name: await shared_limits_for(t) for t in job.teachers if t.limits.shared}
        async with TeacherPool(
            job,
            stop=lambda: STOP.requested,
            prices=prices,
            budget=budget,
            shared=shared,
            teacher_budgets=teacher_budgets,
            structured=structured,
        ) as pool:
            gate = asyncio.Semaphore(job.max_batches_in_flight)

            async def one(index: int, items: list[WorkItem]) -> None:
                async with gate:
                    if not pool.halted:
                        result = await generate_batch(
                            _label(index, items),
                            index,
                            Batch(items),
                            pool,
                            ctx,
                            output,
                            first_part + index,
                            curator,
                        )
                        results.append(result)
                        await progress.advance(len(items))

            await asyncio.gather(*(one(i, items) for i, items in enumerate(batches)))
            summary.unusable = {name: str(exc) for name, exc in pool.unusable.items()}
            if pool.fatal is not None:
                raise pool.fatal
        spent_teachers = [n for n, b in teacher_budgets.items() if b.exhausted]
        if STOP.requested:
            summary.status = "stopped"
        elif budget is not None and budget.exhausted:
            summary.status = "budget_reached"
            logger.warning(
                "budget of $%.2f reached: spent $%.4f; requests left unsent",
                budget.limit_usd,
                budget.spent_usd,
            )
        elif spent_teachers and sum(r.not_sent for r in results):
            summary.status = "budget_reached"
            logger.warning("budget of %s reached; requests left unsent", ", ".join(spent_teachers))
        else:
            summary.status = "completed"
        if job.curation.dedup.enabled and not STOP.requested:
            history = earlier_runs(output, run_id)
            removed = dedup_run_task(output, run_id, history, job.curation.dedup)
    except FatalRunError:
        summary.status = "failed"
        raise
    except BaseException:
        summary.status = "interrupted"
        raise
    finally:
        _fold(summary, results, removed)
        summary.elapsed_s = time.perf_counter() - clock
        _write_run_record(output, summary, job, config_path, started_at)
    _compact_run(output, run_id)
    # publish_run_artifacts only hands ``output`` to open_catalog, which takes any Location.
    await publish_run_artifacts(output, job.name, run_id)
    return summary


def _spent_by_teacher(output: Location, run_id: str) -> dict[str, float]:
    """What earlier invocations of the run paid per teacher: every answer, kept or rejected."""
    spent: dict[str, float] = {}
    for table in ("samples", "rejected"):
        names = read_column(output, table, run_id, "teacher_name")
        costs = read_column(output, table, run_id, "cost_usd")
        for name, cost in zip(names, costs, strict=True):
            spent[str(name)] = spent.get(str(name), 0.0) + float(cost or 0.0)
    return spent


def _compact_run(output: Location, run_id: str) -> None:
    """Merge the run's per-batch shards: ~50k-row files query 3-5x faster than 500-row ones
    (BENCHMARKS.md). Per-batch shards stay the unit of crash safety while the run is going."""
    for table in ("samples", "rejected", "failures"):
        directory = partition_dir(output, table, run_id)
        if directory.is_dir():
            compact_partition(directory, table)


def _fold(summary: RunSummary, results: list[BatchSummary], removed: dict[str, int]) -> None:
    """Add up the batches; duplicates ``removed`` after them leave samples for rejected."""
    by_class: Counter[str] = Counter()
    rejected: Counter[str] = Counter(removed)
    summary.samples -= sum(removed.values())
    for result in results:
        rejected.update(result.rejected)
        summary.samples += result.samples
        summary.failures += result.failures
        summary.not_sent += result.not_sent
        summary.fell_back += result.fell_back
        summary.prompt_tokens += result.prompt_tokens
        summary.completion_tokens += result.completion_tokens
        summary.maybe_billed_twice += result.maybe_billed_twice
        summary.cost_usd += result.cost_usd
        by_class.update(result.failures_by_class)
    summary.failures_by_class = dict(by_class)
    summary.rejected = dict(rejected)


def _write_run_record(
    output: Location,
    summary: RunSummary,
    job: JobConfig,
    config_path: str | None,
    started_at: datetime,
) -> None:
    write_shard(
        output,
        "runs",
        summary.run_id,
        [
            {
                "run_id": summary.run_id,
                "invocation_id": uuid.uuid4().hex,
                "dataset": job.name,
                "config_hash": job.config_hash(),
                "config_path": config_path,
                "flow_run_id": summary.flow_run_id,
                "started_at": started_at,
                "ended_at": datetime.now(UTC),
                "status": summary.status,
                "prompts": summary.prompts,
                "requests_planned": summary.requests_planned,
                "requests_skipped": summary.requests_skipped,
                "samples": summary.samples,
                "failures": summary.failures,
                "prompt_tokens": summary.prompt_tokens,
                "completion_tokens": summary.completion_tokens,
                "rejected": sum(summary.rejected.values()),
                "dedup_params": DEFAULT_PARAMS.describe() if job.curation.dedup.enabled else None,
                "distillery_version": __version__,
            }
        ],
        next_part_number(partition_dir(output, "runs", summary.run_id)),
    )


def _job_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    config = Path(str(parameters.get("config", "job"))).stem
    return f"{config}/{parameters.get('run_id') or 'scheduled'}"


@flow(name="generate-job", flow_run_name=_job_run_name, persist_result=False)
async def generate_job(
    config: str,
    run_id: str | None = None,
    output: str | None = None,
    emulator: bool = False,
) -> RunSummary:
    """Deployment entry point: read a job file when the run starts, then generate.

    Relative paths are from the worker's working directory (the project root for a process
    worker started there). Without ``run_id`` a scheduled run is named after its scheduled
    time, so re-triggering that id resumes it instead of duplicating; ``emulator`` sends every
    request to an in-process emulator (a dry run).
    """
    from prefect.runtime import flow_run

    job = load_config(Path(config))
    if output is not None:
        job = job.model_copy(update={"output": resolve_output(output)})
    if run_id is None:
        started = flow_run.scheduled_start_time
        run_id = started.strftime("%Y%m%d-%H%M%S") if started else uuid.uuid4().hex[:12]
    with contextlib.ExitStack() as stack:
        if emulator:
            from distillery.emulator.retarget import emulated

            job, _ = stack.enter_context(emulated(job))
        require_api_keys(job)
        return await generate.fn(job=job, run_id=run_id, config_path=config)
