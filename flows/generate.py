"""The generate flow: prompts routed to teachers, fanned out as one Prefect task per batch.

Thin by design: loading, sending and writing live in ``generators/`` and ``storage/``. What
lives here is the orchestration — which requests are still to make (a re-run of a run id sends
only what has no sample yet), batches in flight, and the run record. Prefect's deployment
entrypoint is this file: ``flows/generate.py:generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Container, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from pydantic import BaseModel, Field

from distillery import __version__
from distillery.config import JobConfig, load_config, require_api_keys
from distillery.errors import FatalRunError, output_errors
from distillery.flows.artifacts import Progress, publish_run_artifacts
from distillery.flows.batches import (
    BatchSummary,
    BatchTotals,
    batch_label,
    current_ids,
    open_pool,
    send_and_commit,
)
from distillery.flows.curate import dedup_run_task
from distillery.flows.dask_runner import DaskBatches
from distillery.flows.job_changes import refuse_changed_job
from distillery.flows.progress import STOP, get_listener
from distillery.flows.signals import graceful_stop
from distillery.flows.submissions import Submissions, batch_teachers
from distillery.generators.batch import Batch, TeacherPool, WorkItem
from distillery.generators.budget import Budget
from distillery.generators.curation.apply import Curator, build_curator
from distillery.generators.curation.minhash import DEFAULT_PARAMS
from distillery.generators.prompts import PromptSource, template_hash
from distillery.generators.recipes import Stage, build_recipe, stage_reader
from distillery.generators.recipes.base import INTERMEDIATE_STAGES
from distillery.generators.records import RunContext, teacher_facts
from distillery.generators.structured import StructuredOutput, build_structured
from distillery.names import check_run_id
from distillery.storage.compact import compact_partition
from distillery.storage.done_ids import ANSWERED_TABLES, DoneIds
from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location, as_location, resolve_output
from distillery.storage.run_lock import run_writer
from distillery.storage.shards import (
    committed_shards,
    next_part_number,
    partition_dir,
    read_shard,
    write_shard,
)
from distillery.storage.spool import Replay, replay
from distillery.storage.submissions import Journal


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
    submissions_open: int = Field(
        default=0, description="Provider submissions (delivery: batch) left for a later run."
    )
    requests_at_provider: int = Field(
        default=0, description="Requests those submissions hold: not yet answered, paid for."
    )
    held_by_submissions: int = Field(
        default=0, description="Of requests_skipped, those held by earlier open submissions."
    )
    open_planned_now: int = Field(
        default=0, description="Of those, requests this invocation planned and submitted."
    )
    collected_earlier: int = Field(
        default=0, description="Rows collected from submissions an earlier invocation made."
    )
    submission_problems: dict[str, str] = Field(
        default_factory=dict, description="Submissions that could not go on, and why."
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
        return _final_state(await _generate(job, run_id, config_path))


def _final_state(summary: RunSummary) -> RunSummary:
    """What the flow returns: the summary, or for a run left waiting on provider submissions
    a Completed state named ``Waiting`` carrying it, so the Prefect UI says so (not a plain
    Completed) and the message says what is left.

    Prefect takes a returned state as the flow run's final state and hands callers its data,
    so a direct call (and ``generate_job``, the deployment's flow) still gets the summary.
    """
    if summary.status != "waiting":
        return summary
    message = (
        f"{summary.requests_at_provider:,} requests in {summary.submissions_open:,} provider "
        f"submissions; run {summary.run_id} again to collect them"
    )
    return cast(RunSummary, Completed(name="Waiting", message=message, data=summary))


async def _generate(job: JobConfig, run_id: str, config_path: str | None) -> RunSummary:
    """The run's steps: load, replay, plan, send the stages, curate, record, publish."""
    run = _load(job, run_id)
    repaired = run.journal.repair()
    if repaired.orphan_files:
        run.logger.info("removed %d unsent submission files", len(repaired.orphan_files))
    await _replay(run)
    plans = _plan(run)
    first = next(plans)
    await run.planned(first)
    try:
        await _send(run, first, plans)
        _settle_status(run)
        _curate(run)
    except FatalRunError:
        run.summary.status = "failed"
        raise
    except BaseException:
        run.summary.status = "interrupted"
        raise
    finally:
        _record(run, config_path)
    failpoint("run:recorded")
    _compact_run(run.output, run_id)
    # publish_run_artifacts only hands ``output`` to open_catalog, which takes any Location.
    await publish_run_artifacts(run.output, job.name, run_id)
    return run.summary


@dataclass
class RunState:
    """One invocation of a run as it goes: what it reads, and what it has done so far.

    Batches report here as they end (:meth:`finished`), stages as they are planned
    (:meth:`planned`); the summary is filled in from it when the run is recorded.
    """

    job: JobConfig
    run_id: str
    output: Location
    ctx: RunContext
    prompts: PromptSource
    structured: StructuredOutput | None
    curator: Curator
    summary: RunSummary
    started_at: datetime
    clock: float
    logger: logging.Logger | logging.LoggerAdapter[Any]
    totals: BatchTotals = field(default_factory=BatchTotals)
    removed: dict[str, int] = field(default_factory=dict)
    progress: Progress | None = None
    next_part: int = 0
    budget: Budget | None = None
    teacher_budgets: dict[str, Budget] = field(default_factory=dict)
    journal: Journal = field(init=False)
    submissions: Submissions | None = None

    def __post_init__(self) -> None:
        self.journal = Journal(self.output, self.run_id)

    async def planned(self, plan: StagePlan) -> None:
        """A stage is planned: count its requests and tell whoever watches."""
        listener = get_listener()
        if listener is not None:
            listener.planned(plan.planned, plan.skipped)
        if self.progress is None:  # the first stage: the run's own figures start here
            self.summary.prompts = self.prompts.counted
            self.summary.requests_planned = plan.planned
            self.summary.requests_skipped = plan.skipped
            self.progress = Progress(self.job.name, plan.planned)
            await self.progress.start()
        else:
            self.summary.requests_planned += plan.planned
            self.summary.requests_skipped += plan.skipped
            self.progress.planned += plan.planned

    def take_part(self) -> int:
        """The shard part number of the next batch (one per batch, across stages)."""
        part = self.next_part
        self.next_part += 1
        return part

    async def finished(self, result: BatchSummary, requests: int) -> None:
        """A batch (or a chunk of a collected submission) is committed."""
        self.totals.add(result)
        if self.progress is not None:
            await self.progress.advance(requests)


@dataclass
class StagePlan:
    """One stage's requests still to send, counted by one read of its prompts; :meth:`batches`
    reads them again to send them, so no list of every request is ever held."""

    stage: Stage
    curator: Curator
    done: Container[str]
    prompts: int
    planned: int

    @property
    def skipped(self) -> int:
        """Requests of the stage made by an earlier invocation."""
        return self.prompts * self.stage.router.chains_per_prompt - self.planned

    @classmethod
    def count(cls, stage: Stage, curator: Curator, done: Container[str]) -> StagePlan:
        prompts = planned = 0
        for todo in stage.plan(done):
            prompts += 1
            planned += len(todo)
        return cls(stage, stage.curator(curator), done, prompts, planned)

    def batches(self, batch_size: int, leave_out: Container[str] = ()) -> Iterator[list[WorkItem]]:
        """``batch_size`` prompts per batch (those with requests left), each with its requests
        to every teacher but those in ``leave_out`` (sent as submissions)."""
        batch: list[WorkItem] = []
        prompts = 0
        for planned in self.stage.plan(self.done):
            todo = [item for item in planned if item.teacher.name not in leave_out]
            if not todo:
                continue
            batch += todo
            prompts += 1
            if prompts == batch_size:
                yield batch
                batch, prompts = [], 0
        if batch:
            yield batch

    def items_for(self, teacher: str) -> Iterator[WorkItem]:
        """The stage's requests to ``teacher``, read again from the prompts."""
        for planned in self.stage.plan(self.done):
            yield from (item for item in planned if item.teacher.name == teacher)


def _load(job: JobConfig, run_id: str) -> RunState:
    """The run's inputs, opened: prompts (read lazily, checked to start), curation, context."""
    started_at, clock = datetime.now(UTC), time.perf_counter()
    flow_run_id, _ = current_ids()
    output = as_location(job.output)
    prompts = PromptSource(job.prompts)
    prompts.check_start()
    structured = build_structured(job.response_schema)
    ctx = RunContext(
        run_id,
        job.config_hash(),
        template_hash(job.prompts),
        flow_run_id,
        teachers=teacher_facts(job),
    )
    summary = RunSummary(
        run_id=run_id,
        dataset=job.name,
        output=output.uri,
        status="running",
        prompts=0,
        requests_planned=0,
        requests_skipped=0,
        flow_run_id=flow_run_id,
    )
    return RunState(
        job=job,
        run_id=run_id,
        output=output,
        ctx=ctx,
        prompts=prompts,
        structured=structured,
        curator=build_curator(job.curation, structured),
        summary=summary,
        started_at=started_at,
        clock=clock,
        logger=get_run_logger(),
    )


async def _replay(run: RunState) -> None:
    """Commit what an earlier invocation spooled but did not commit (judged, if the job has a
    judge, as its batch would have)."""
    leftover = replay(run.output, run.run_id, run.curator.curate)
    if run.job.curation.judge is not None:
        await _judge_replayed(run, leftover)
    recovered = leftover.commit()
    if any(recovered.values()):
        run.logger.warning(
            "recovered %d samples and %d failures spooled by an earlier invocation",
            recovered["samples"],
            recovered["failures"],
        )


async def _judge_replayed(run: RunState, leftover: Replay) -> None:
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
    async with await open_pool(run.job, run.ctx.teachers, shared=False) as pool:
        assert pool.judge is not None
        kept, judged_out = await pool.judge.apply(pending)
    graded = {id(row) for row in pending}
    leftover.samples = [row for row in leftover.samples if id(row) not in graded] + kept
    leftover.rejected = leftover.rejected + judged_out


def _plan(run: RunState) -> Iterator[StagePlan]:
    """The stages' plans, lazily: each later stage is built and counted only once the one
    before it ran (a recipe builds it from what that one committed).

    What a resume skips is read once: the sample ids already answered (``storage/done_ids.py``).
    Without a recipe there is a single stage: prompts routed to teachers (``routing``, ``n``).
    """
    # Requests held by open submissions are paid for (or about to be): not planned again.
    held = run.journal.open_sample_ids()
    run.summary.held_by_submissions = len(held)
    done = DoneIds.of_run(run.output, run.run_id).union(held)
    run.next_part = max(
        next_part_number(partition_dir(run.output, table, run.run_id))
        for table in ("samples", "rejected", "failures")
    )
    stages = build_recipe(run.job).stages(run.prompts, stage_reader(run.output, run.run_id))
    for number, stage in enumerate(stages):
        plan = StagePlan.count(stage, run.curator, done)
        if number == 0:
            run.logger.info(
                "run %s: %d prompts x %d requests each (routing %s, n=%d), %d to send, "
                "%d already answered",
                run.run_id,
                plan.prompts,
                stage.router.chains_per_prompt,
                stage.router.mode,
                stage.router.n,
                plan.planned,
                plan.skipped,
            )
        else:
            run.logger.info(
                "stage %s: %d prompts x %d requests each, %d to send, %d already answered",
                stage.label or stage.name,
                plan.prompts,
                stage.router.chains_per_prompt,
                plan.planned,
                plan.skipped,
            )
        yield plan


async def _send(run: RunState, first: StagePlan, later: Iterator[StagePlan]) -> None:
    """Send every stage's batches, on this process or on Dask workers, within the budgets."""
    spent = _spent_by_teacher(run.output, run.run_id)
    if run.job.budget_usd is not None:
        run.budget = Budget(run.job.budget_usd, sum(spent.values()))
    run.teacher_budgets = {
        t.name: Budget(t.budget_usd, spent.get(t.name, 0.0))
        for t in run.job.teachers
        if t.budget_usd is not None
    }
    async with Submissions.open(
        run.job,
        run.journal,
        run.ctx,
        first.curator,
        first.stage.router,
        budget=run.budget,
        teacher_budgets=run.teacher_budgets,
        logger=run.logger,
        take_part=run.take_part,
    ) as submissions:
        run.submissions = submissions
        if submissions is None:
            await _send_online(run, first, later)
            return
        submissions.reserve_open()
        await asyncio.to_thread(submissions.prepare, first.items_for, run.structured, _stopping)
        await _with_submissions(run, submissions, _send_online(run, first, later, submissions))


def _stopping() -> bool:
    return STOP.requested


async def _send_online(
    run: RunState,
    first: StagePlan,
    later: Iterator[StagePlan],
    submissions: Submissions | None = None,
) -> None:
    """Every stage's online requests (a batch teacher's go as submissions)."""
    leave_out = {t.name for t in batch_teachers(run.job)} if submissions is not None else set()
    if run.job.task_runner.type == "dask":  # one stage: recipes are refused with dask
        await _run_on_dask(run, first)
    else:
        await _run_here(run, itertools.chain([first], later), leave_out)


async def _with_submissions(
    run: RunState, submissions: Submissions, online: Coroutine[Any, Any, None]
) -> None:
    """The online requests and the submissions side by side; the first error stops both."""
    online_done = asyncio.Event()
    listener = get_listener()

    async def committed(result: BatchSummary, requests: int) -> None:
        if listener is not None:
            listener.advanced(requests, result.failures)
        await run.finished(result, requests)

    async def send_online() -> None:
        try:
            await online
        finally:
            online_done.set()

    tasks = [
        asyncio.create_task(send_online()),
        asyncio.create_task(submissions.run(online_done, _stopping, committed)),
    ]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in finished:
            task.result()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        count, requests, planned_now = submissions.open_requests()
        run.summary.submissions_open = count
        run.summary.requests_at_provider = requests
        run.summary.open_planned_now = planned_now
        run.summary.collected_earlier = submissions.collected_earlier
        run.summary.submission_problems = dict(submissions.problems)


async def _run_here(
    run: RunState, plans: Iterator[StagePlan], leave_out: Container[str] = ()
) -> None:
    """The thread runner: every batch on this event loop, sharing one pool (and the budgets).

    A recipe's stages run one after the other through the same pool; a stop, a spent budget
    or an unusable teacher ends the run before the next stage is built.
    """
    pool = await open_pool(
        run.job,
        run.ctx.teachers,
        stop=lambda: STOP.requested,
        structured=run.structured,
        budget=run.budget,
        teacher_budgets=run.teacher_budgets,
    )
    async with pool:
        listener = get_listener()
        if listener is not None:
            listener.watching(pool.in_flight)
        for number, plan in enumerate(plans):
            if number:
                await run.planned(plan)

            async def one(index: int, items: list[WorkItem], plan: StagePlan = plan) -> None:
                part = run.take_part()
                result = await generate_batch(
                    batch_label(part, items),
                    index,
                    Batch(items),
                    pool,
                    run.ctx,
                    run.output,
                    part,
                    plan.curator,
                )
                await run.finished(result, len(items))

            await _in_flight(
                plan.batches(run.job.batch_size, leave_out),
                run.job.max_batches_in_flight,
                one,
                lambda: pool.halted,
            )
            run.summary.unusable = {name: str(exc) for name, exc in pool.unusable.items()}
            if pool.fatal is not None:
                raise pool.fatal
            if pool.halted:
                break


async def _run_on_dask(run: RunState, plan: StagePlan) -> None:
    """The Dask runner: batches on worker processes; a stop or a fatal error reaches them all."""
    listener = get_listener()
    fatal: list[str] = []
    async with DaskBatches(run.job, run.run_id) as cluster:
        run.logger.info("running batches on %d Dask worker processes", cluster.processes)
        stopped = asyncio.Event()

        async def watch() -> None:
            while not (STOP.requested or fatal):
                await asyncio.sleep(0.2)
            stopped.set()
            await cluster.stop()

        async def one(index: int, items: list[WorkItem]) -> None:
            result = await cluster.submit(index, items, run.ctx, run.take_part())
            run.summary.unusable.update(result.unusable)
            if result.fatal is not None:
                fatal.append(result.fatal)
            if listener is not None:
                listener.advanced(len(items) - result.not_sent, result.failures)
            await run.finished(result, len(items))

        watcher = asyncio.create_task(watch())
        try:
            await _in_flight(
                plan.batches(run.job.batch_size),
                run.job.max_batches_in_flight,
                one,
                stopped.is_set,
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    if fatal:
        raise FatalRunError(fatal[0])


async def _in_flight(
    batches: Iterator[list[WorkItem]],
    limit: int,
    one: Callable[[int, list[WorkItem]], Coroutine[Any, Any, None]],
    halted: Callable[[], bool],
) -> None:
    """``one(index, batch)`` for each batch, at most ``limit`` at once, batches taken from the
    plan only as a place frees up (a stage's batches are never all built at once); none is
    started once ``halted()``. The first error is raised, as ``asyncio.gather`` raises it."""
    running: set[asyncio.Task[None]] = set()
    try:
        for index, items in enumerate(batches):
            while len(running) >= limit:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()
            if halted():
                break
            running.add(asyncio.create_task(one(index, items)))
        await asyncio.gather(*running)
    except asyncio.CancelledError:
        for task in running:
            task.cancel()
        raise


def _settle_status(run: RunState) -> None:
    """How the invocation ended: stopped, out of budget, failed, or completed."""
    summary, logger, budget = run.summary, run.logger, run.budget
    spent_teachers = [n for n, b in run.teacher_budgets.items() if b.exhausted]
    if STOP.requested:
        summary.status = "stopped"
    elif budget is not None and budget.exhausted:
        summary.status = "budget_reached"
        logger.warning(
            "budget of $%.2f reached: spent $%.4f; requests left unsent",
            budget.limit_usd,
            budget.spent_usd,
        )
    elif spent_teachers and run.totals.not_sent:
        summary.status = "budget_reached"
        logger.warning("budget of %s reached; requests left unsent", ", ".join(spent_teachers))
    elif run.submissions is not None and run.submissions.over_budget:
        summary.status = "budget_reached"
        logger.warning("budget reached: submissions left unsent")
    elif run.totals.all_failed:
        # Nothing answered, only failures (an unreachable base URL, a model that does not
        # exist): not a success, whatever each request's own error was.
        summary.status = "failed"
        logger.error("every request of this invocation failed; see the failures view")
    elif summary.submissions_open:
        summary.status = "waiting"
        logger.info(
            "%d requests in %d submissions are still with the provider: run the same run id "
            "again to collect them",
            summary.requests_at_provider,
            summary.submissions_open,
        )
    else:
        summary.status = "completed"


def _curate(run: RunState) -> None:
    """Remove duplicates across the run (and earlier runs), unless the run was stopped."""
    if run.job.curation.dedup.enabled and not STOP.requested:
        run.removed = dedup_run_task(run.output, run.run_id, None, run.job.curation.dedup)
        failpoint("run:deduped")


def _record(run: RunState, config_path: str | None) -> None:
    """Fill the summary in from what the run did and write the run's record, whatever the
    ending; a full disk is one line, not a traceback."""
    summary = run.summary
    _fold(summary, run.totals, run.removed)
    summary.samples = _kept_by(run.output, run.run_id, summary.flow_run_id, summary.samples)
    summary.elapsed_s = time.perf_counter() - run.clock
    with output_errors(run.output.uri, run.run_id):
        _write_run_record(run.output, summary, run.job, config_path, run.started_at)


def _spent_by_teacher(output: Location, run_id: str) -> dict[str, float]:
    """What earlier invocations of the run paid per teacher: every answer, kept or rejected
    (added up a shard at a time)."""
    spent: dict[str, float] = {}
    for table in ANSWERED_TABLES:
        for shard in committed_shards(output, table, run_id):
            costs = read_shard(shard, columns=["teacher_name", "cost_usd"])
            summed = costs.group_by("teacher_name").aggregate([("cost_usd", "sum")])
            for name, cost in zip(
                summed.column("teacher_name").to_pylist(),
                summed.column("cost_usd_sum").to_pylist(),
                strict=True,
            ):
                spent[str(name)] = spent.get(str(name), 0.0) + float(cost or 0.0)
    return spent


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


def _fold(summary: RunSummary, totals: BatchTotals, removed: dict[str, int]) -> None:
    """Add up the batches, and what dedup moved to rejected after them."""
    rejected: Counter[str] = Counter(removed)
    rejected.update(totals.rejected)
    summary.samples += totals.samples - sum(removed.values())  # an estimate: see _kept_by
    summary.failures += totals.failures
    summary.not_sent += totals.not_sent
    summary.fell_back += totals.fell_back
    summary.prompt_tokens += totals.prompt_tokens
    summary.completion_tokens += totals.completion_tokens
    summary.maybe_billed_twice += totals.maybe_billed_twice
    summary.http_requests += totals.http_requests
    summary.cost_usd += totals.cost_usd
    summary.failures_by_class = dict(totals.failures_by_class)
    summary.rejected = dict(rejected)
    summary.processes = sorted(totals.processes)


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
