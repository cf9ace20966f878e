"""The generate flow: prompts routed to teachers, fanned out as one Prefect task per batch.

Thin by design: loading, sending and writing live in ``generators/`` and ``storage/``. What
lives here is the orchestration — which requests are still to make (a re-run of a run id sends
only what has no sample yet), batches in flight, and the run record. Prefect's deployment
entrypoint is this file: ``flows/generate.py:generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from distillery import __version__
from distillery.config import JobConfig, load_config, require_api_keys
from distillery.errors import FatalRunError, output_errors
from distillery.flows.artifacts import Progress, publish_run_artifacts
from distillery.flows.batches import BatchSummary, batch_label, current_ids, send_and_commit
from distillery.flows.curate import dedup_run_task
from distillery.flows.dask_runner import DaskBatches
from distillery.flows.job_changes import refuse_changed_job
from distillery.flows.progress import STOP, get_listener
from distillery.flows.shared_limits import shared_limits_for
from distillery.flows.signals import graceful_stop
from distillery.generators.batch import Batch, TeacherPool, WorkItem
from distillery.generators.budget import Budget
from distillery.generators.curation.apply import Curator, build_curator
from distillery.generators.curation.minhash import DEFAULT_PARAMS
from distillery.generators.prompts import load_prompts, template_hash
from distillery.generators.recipes import Stage, build_recipe, stage_reader
from distillery.generators.recipes.base import INTERMEDIATE_STAGES
from distillery.generators.records import RunContext, teacher_facts
from distillery.generators.structured import StructuredOutput, build_structured
from distillery.names import check_run_id
from distillery.storage.compact import compact_partition
from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location, as_location, resolve_output
from distillery.storage.run_lock import run_writer
from distillery.storage.shards import (
    committed_shards,
    next_part_number,
    partition_dir,
    read_column,
    read_shard,
    write_shard,
)
from distillery.storage.spool import Replay, replay


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
    http_requests: int = Field(
        default=0, description="Requests sent over HTTP: every attempt, every turn of a recipe."
    )
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    flow_run_id: str | None = None
    processes: list[str] = Field(
        default_factory=list, description="host:pid of every process that ran a batch."
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
    """Send one batch from the flow's own pool; commit its shards before returning."""
    listener = get_listener()
    return await send_and_commit(
        index,
        batch.items,
        pool,
        replace(ctx, task_run_id=current_ids()[1]),
        output,
        part,
        curator,
        get_run_logger(),
        listener.outcome if listener else None,
    )


async def _judge_replayed(job: JobConfig, leftover: Replay) -> None:
    """Grade answers replayed from a spool as their batch would have.

    A batch spools each answer as it arrives and grades the batch's answers afterwards, so a
    process that died in between left them ungraded. The spools are deleted only once these
    rows are committed, so dying here again just replays them again. Rows of a recipe's
    intermediate stages are never judged, as in their batch.
    """
    pending = [
        row
        for row in leftover.samples
        if row.get("judge_teacher") is None and row.get("stage") not in INTERMEDIATE_STAGES
    ]
    if not pending:
        return
    prices = {name: facts.price for name, facts in teacher_facts(job).items()}
    async with TeacherPool(job, prices=prices) as pool:
        assert pool.judge is not None
        kept, judged_out = await pool.judge.apply(pending)
    graded = {id(row) for row in pending}
    leftover.samples = [row for row in leftover.samples if id(row) not in graded] + kept
    leftover.rejected = leftover.rejected + judged_out


def _plan_stage(stage: Stage, done: set[str]) -> tuple[list[list[WorkItem]], int, int]:
    """A stage's requests still to make, how many, and how many were made before."""
    plan = stage.plan(done)
    planned = sum(len(items) for items in plan)
    return plan, planned, stage.size() - planned


def _batches(plan: list[list[WorkItem]], batch_size: int) -> list[list[WorkItem]]:
    """``batch_size`` prompts per batch, each with its requests to every teacher."""
    return [
        [item for prompt_items in plan[start : start + batch_size] for item in prompt_items]
        for start in range(0, len(plan), batch_size)
    ]


@flow(name="generate", flow_run_name="{job.name}/{run_id}", persist_result=False)
async def generate(
    job: JobConfig, run_id: str, config_path: str | None = None, allow_changed_job: bool = False
) -> RunSummary:
    """Generate ``job.n`` samples per prompt from the teachers its routing picks, into
    ``job.output``.

    The run's writer lock is held from the first read to the last write: a second process on
    the same run id and output stops at once with the holder's name, before it reads a spool
    or sends a request (``storage/run_lock.py``).
    """
    check_run_id(run_id, "run_id")
    with graceful_stop(), run_writer(as_location(job.output), run_id):
        if not allow_changed_job:
            refuse_changed_job(as_location(job.output), run_id, job)
        return await _generate(job, run_id, config_path)


async def _generate(job: JobConfig, run_id: str, config_path: str | None) -> RunSummary:
    logger = get_run_logger()
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    flow_run_id, _ = current_ids()
    output = as_location(job.output)
    prompts = load_prompts(job.prompts)
    structured = build_structured(job.response_schema)
    curator = build_curator(job.curation, structured)
    leftover = replay(output, run_id, curator.curate)
    if job.curation.judge is not None:
        await _judge_replayed(job, leftover)
    recovered = leftover.commit()
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
    # A recipe runs in stages, each built from what the ones before committed; without one
    # there is a single stage: prompts routed to teachers (``routing``, ``n``).
    stages = build_recipe(job).stages(prompts, stage_reader(output, run_id))
    stage = next(stages)
    plan, planned, skipped = _plan_stage(stage, done)
    listener = get_listener()
    if listener is not None:
        listener.planned(planned, skipped)
    logger.info(
        "run %s: %d prompts x %d requests each (routing %s, n=%d), %d to send, %d already answered",
        run_id,
        len(stage.prompts),
        stage.router.chains_per_prompt,
        stage.router.mode,
        stage.router.n,
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

        async def finished(result: BatchSummary, items: list[WorkItem]) -> None:
            results.append(result)
            await progress.advance(len(items))

        parts = {index: first_part + index for index in range(len(batches))}

        def stage_plans() -> Iterator[StagePlan]:
            """The first stage's batches, then each later stage's, built only once the stage
            before it ran (they read what it committed)."""
            yield batches, parts, stage.curator(curator)
            offset = len(batches)
            for following in stages:
                more_plan, more, again = _plan_stage(following, done)
                summary.requests_planned += more
                summary.requests_skipped += again
                progress.planned += more
                if listener is not None:
                    listener.planned(more, again)
                logger.info(
                    "stage %s: %d prompts x %d requests each, %d to send, %d already answered",
                    following.label or following.name,
                    len(following.prompts),
                    following.router.chains_per_prompt,
                    more,
                    again,
                )
                more_batches = _batches(more_plan, job.batch_size)
                more_parts = {i: first_part + offset + i for i in range(len(more_batches))}
                yield more_batches, more_parts, following.curator(curator)
                offset += len(more_batches)

        if job.task_runner.type == "dask":  # one stage: recipes are refused with dask
            await _run_on_dask(job, ctx, batches, parts, finished, summary)
        else:
            await _run_here(
                job,
                ctx,
                stage_plans(),
                finished,
                output,
                budget,
                teacher_budgets,
                summary,
                structured,
            )
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
        elif _all_failed(results):
            # Nothing answered, only failures (an unreachable base URL, a model that does not
            # exist): not a success, whatever each request's own error was.
            summary.status = "failed"
            logger.error("every request of this invocation failed; see the failures view")
        else:
            summary.status = "completed"
        if job.curation.dedup.enabled and not STOP.requested:
            removed = dedup_run_task(output, run_id, None, job.curation.dedup)
            failpoint("run:deduped")
    except FatalRunError:
        summary.status = "failed"
        raise
    except BaseException:
        summary.status = "interrupted"
        raise
    finally:
        _fold(summary, results, removed)
        summary.samples = _kept_by(output, run_id, flow_run_id, summary.samples)
        summary.elapsed_s = time.perf_counter() - clock
        with output_errors(output.uri, run_id):  # a full disk: one line, not a traceback
            _write_run_record(output, summary, job, config_path, started_at)
    failpoint("run:recorded")
    _compact_run(output, run_id)
    # publish_run_artifacts only hands ``output`` to open_catalog, which takes any Location.
    await publish_run_artifacts(output, job.name, run_id)
    return summary


Done = Callable[[BatchSummary, list[WorkItem]], Awaitable[None]]


StagePlan = tuple[list[list[WorkItem]], dict[int, int], Curator]
"""One stage's batches, their shard part numbers, and its curator."""


async def _run_here(
    job: JobConfig,
    ctx: RunContext,
    plans: Iterator[StagePlan],
    done: Done,
    output: Location,
    budget: Budget | None,
    teacher_budgets: dict[str, Budget],
    summary: RunSummary,
    structured: StructuredOutput | None,
) -> None:
    """The thread runner: every batch on this event loop, sharing one pool (and the budgets).

    A recipe's stages run one after the other through the same pool; a stop, a spent budget
    or an unusable teacher ends the run before the next stage is built.
    """
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
        listener = get_listener()
        if listener is not None:
            listener.watching(pool.in_flight)
        gate = asyncio.Semaphore(job.max_batches_in_flight)

        async def one(index: int, items: list[WorkItem], part: int, curator: Curator) -> None:
            async with gate:
                if not pool.halted:
                    result = await generate_batch(
                        batch_label(part, items),
                        index,
                        Batch(items),
                        pool,
                        ctx,
                        output,
                        part,
                        curator,
                    )
                    await done(result, items)

        for batches, parts, curator in plans:
            await asyncio.gather(
                *(one(i, items, parts[i], curator) for i, items in enumerate(batches))
            )
            summary.unusable = {name: str(exc) for name, exc in pool.unusable.items()}
            if pool.fatal is not None:
                raise pool.fatal
            if pool.halted:
                break


async def _run_on_dask(
    job: JobConfig,
    ctx: RunContext,
    batches: list[list[WorkItem]],
    parts: dict[int, int],
    done: Done,
    summary: RunSummary,
) -> None:
    """The Dask runner: batches on worker processes; a stop or a fatal error reaches them all."""
    logger = get_run_logger()
    listener = get_listener()
    fatal: list[str] = []
    async with DaskBatches(job, ctx.run_id) as cluster:
        logger.info("running batches on %d Dask worker processes", cluster.processes)
        gate = asyncio.Semaphore(job.max_batches_in_flight)
        stopped = asyncio.Event()

        async def watch() -> None:
            while not (STOP.requested or fatal):
                await asyncio.sleep(0.2)
            stopped.set()
            await cluster.stop()

        async def one(index: int, items: list[WorkItem]) -> None:
            async with gate:
                if stopped.is_set():
                    return
                result = await cluster.submit(index, items, ctx, parts[index])
                summary.unusable.update(result.unusable)
                if result.fatal is not None:
                    fatal.append(result.fatal)
                if listener is not None:
                    listener.advanced(len(items) - result.not_sent, result.failures)
                await done(result, items)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(one(i, items) for i, items in enumerate(batches)))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    if fatal:
        raise FatalRunError(fatal[0])


def _spent_by_teacher(output: Location, run_id: str) -> dict[str, float]:
    """What earlier invocations of the run paid per teacher: every answer, kept or rejected."""
    spent: dict[str, float] = {}
    for table in ("samples", "rejected"):
        names = read_column(output, table, run_id, "teacher_name")
        costs = read_column(output, table, run_id, "cost_usd")
        for name, cost in zip(names, costs, strict=True):
            spent[str(name)] = spent.get(str(name), 0.0) + float(cost or 0.0)
    return spent


def _all_failed(results: list[BatchSummary]) -> bool:
    """Requests were made and none was answered: every one ended as a failure row."""
    failures = sum(r.failures - r.fell_back for r in results)
    answered = sum(r.samples + sum(r.rejected.values()) for r in results)
    return failures > 0 and answered == 0


def _kept_by(output: Location, run_id: str, flow_run_id: str | None, folded: int) -> int:
    """The samples this invocation added that the run still keeps, read from its shards.

    Adding up batches and subtracting what dedup removed is wrong on a resume: dedup then also
    finishes an earlier, killed invocation's work, and removing its rows drove the count
    negative. Rows carry the flow run that wrote them, so counting them is exact.
    """
    if flow_run_id is None:
        return folded
    kept = 0
    for shard in committed_shards(output, "samples", run_id):
        column = read_shard(shard, columns=["flow_run_id"]).column("flow_run_id")
        same = pc.cast(pc.equal(column, pa.scalar(flow_run_id)), pa.int64())
        kept += int(pc.sum(same).as_py() or 0)
    return kept


def _compact_run(output: Location, run_id: str) -> None:
    """Merge the run's per-batch shards: ~50k-row files query faster than 500-row ones
    (BENCHMARKS.md, "Shard sizing"). Per-batch shards stay the unit of crash safety while the
    run is going."""
    for table in ("samples", "rejected", "failures"):
        directory = partition_dir(output, table, run_id)
        if directory.is_dir():
            compact_partition(directory, table)


def _fold(summary: RunSummary, results: list[BatchSummary], removed: dict[str, int]) -> None:
    """Add up the batches, and what dedup moved to rejected after them."""
    by_class: Counter[str] = Counter()
    rejected: Counter[str] = Counter(removed)
    summary.samples -= sum(removed.values())  # an estimate: see _kept_by
    for result in results:
        rejected.update(result.rejected)
        summary.samples += result.samples
        summary.failures += result.failures
        summary.not_sent += result.not_sent
        summary.fell_back += result.fell_back
        summary.prompt_tokens += result.prompt_tokens
        summary.completion_tokens += result.completion_tokens
        summary.maybe_billed_twice += result.maybe_billed_twice
        summary.http_requests += result.http_requests
        summary.cost_usd += result.cost_usd
        by_class.update(result.failures_by_class)
    summary.failures_by_class = dict(by_class)
    summary.rejected = dict(rejected)
    summary.processes = sorted({result.process for result in results if result.process})


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
                "job_shape": json.dumps(job.shape(), sort_keys=True),
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
    allow_changed_job: bool = False,
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
    check_run_id(run_id, "run_id")
    with contextlib.ExitStack() as stack:
        if emulator:
            from distillery.emulator.retarget import emulated

            job, _ = stack.enter_context(emulated(job))
        require_api_keys(job)
        return await generate.fn(
            job=job, run_id=run_id, config_path=config, allow_changed_job=allow_changed_job
        )
