"""One batch from requests to committed shards, whichever process runs it.

The thread runner runs this on the flow's event loop, the Dask runner on a worker process's
(:mod:`distillery.flows.dask_worker`); both wrap it in a Prefect task. Every answer is spooled
the moment it arrives (the spool file's name is random, so processes writing the same run never
share one), and the shard numbers are per batch index, with a taken number falling to the next
free one (``storage/shards.py``), so several processes commit into one run partition safely.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from prefect.context import get_run_context
from pydantic import BaseModel, Field

from distillery.config import JobConfig
from distillery.errors import OutputUnwritable
from distillery.flows.shared_limits import shared_limits_for
from distillery.generators.batch import (
    BatchRows,
    OutcomeListener,
    RowSink,
    TeacherPool,
    WorkItem,
    run_batch,
)
from distillery.generators.budget import Budget
from distillery.generators.curation.apply import Curator
from distillery.generators.records import RunContext, TeacherFacts
from distillery.generators.structured import StructuredOutput
from distillery.storage.location import Location
from distillery.storage.rows import FailureRow, RejectedRow, Row, SampleRow
from distillery.storage.shards import write_shard
from distillery.storage.spool import Spool

T = TypeVar("T")


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
    http_requests: int = Field(
        default=0, description="Requests sent over HTTP: every attempt, every turn of a recipe."
    )
    cost_usd: float = 0.0
    process: str = Field(default="", description="host:pid of the process that ran the batch.")
    fatal: str | None = Field(
        default=None, description="Why a teacher proved unusable during this batch (stop the run)."
    )
    unusable: dict[str, str] = Field(
        default_factory=dict, description="Teachers this batch's process fell back past, and why."
    )


@dataclass
class BatchTotals:
    """The batches of one invocation added up as each ends: a run of a million prompts has
    thousands of batches, whose summaries are not kept."""

    samples: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    not_sent: int = 0
    fell_back: int = 0
    failures_by_class: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    maybe_billed_twice: int = 0
    http_requests: int = 0
    cost_usd: float = 0.0
    processes: set[str] = field(default_factory=set)

    def add(self, result: BatchSummary) -> None:
        self.samples += result.samples
        self.rejected.update(result.rejected)
        self.failures += result.failures
        self.not_sent += result.not_sent
        self.fell_back += result.fell_back
        self.failures_by_class.update(result.failures_by_class)
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.maybe_billed_twice += result.maybe_billed_twice
        self.http_requests += result.http_requests
        self.cost_usd += result.cost_usd
        if result.process:
            self.processes.add(result.process)

    @property
    def all_failed(self) -> bool:
        """Requests were made and none was answered: every one ended as a failure row."""
        answered = self.samples + sum(self.rejected.values())
        return self.failures - self.fell_back > 0 and answered == 0


async def open_pool(
    job: JobConfig,
    teachers: dict[str, TeacherFacts],
    *,
    stop: Callable[[], bool] = lambda: False,
    structured: StructuredOutput | None = None,
    budget: Budget | None = None,
    teacher_budgets: dict[str, Budget] | None = None,
    shared: bool = True,
) -> TeacherPool:
    """The run's teacher pool in this process: the one place a run builds one (the flow's own,
    each Dask worker's, and the judge's for replayed answers).

    Prices come from the run's teacher facts. A teacher with ``limits.shared`` leases its
    limits from the Prefect server; ``shared=False`` skips that for a pool only its judge
    uses (a judge's limits are never shared).
    """
    prices = {name: facts.price for name, facts in teachers.items()}
    leased = (
        {t.name: await shared_limits_for(t) for t in job.teachers if t.limits.shared}
        if shared
        else {}
    )
    return TeacherPool(
        job,
        stop=stop,
        prices=prices,
        budget=budget,
        shared=leased,
        teacher_budgets=teacher_budgets,
        structured=structured,
    )


class _DiskGuard:
    """Turns the first disk error of a batch into a halt of the whole pool.

    Every later answer would be paid for and then lost, so the pool stops sending (as for an
    unusable teacher) and the run ends with one line (:class:`OutputUnwritable`) once the
    batches in flight have landed, instead of a traceback from deep inside a task.
    """

    def __init__(self, pool: TeacherPool, output: Location, run_id: str) -> None:
        self.pool = pool
        self.output = output
        self.run_id = run_id
        self.error: OSError | None = None

    def failed(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
        if self.pool.fatal is None:
            self.pool.fatal = OutputUnwritable(self.output.uri, self.run_id, exc)

    def attempt(self, step: Callable[[], T]) -> T | None:
        """``step()``, or None after recording its disk error."""
        try:
            return step()
        except OSError as exc:
            self.failed(exc)
            return None

    def sink(self, spool: Spool) -> RowSink:
        """``spool.append`` that stops appending after the first error (a torn last line is
        skipped when the spool is replayed; one in the middle would not be)."""

        def append(table: str, row: Row) -> None:
            if self.error is None:
                self.attempt(functools.partial(spool.append, table, row))

        return append


def current_ids() -> tuple[str | None, str | None]:
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


def batch_label(index: int, items: list[WorkItem]) -> str:
    """A task run's name in the UI: the batch and the teachers it asks."""
    teachers = sorted({item.teacher.name for item in items})
    shown = ", ".join(teachers[:3]) + (f" +{len(teachers) - 3}" if len(teachers) > 3 else "")
    return f"batch-{index:05d} [{shown}]"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def send_and_commit(
    index: int,
    items: list[WorkItem],
    pool: TeacherPool,
    ctx: RunContext,
    output: Location,
    part: int,
    curator: Curator,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    listener: OutcomeListener | None = None,
) -> BatchSummary:
    """Send one batch, curate it, and commit its shards before returning.

    A disk error (full, read-only, a file-size limit) on the spool or a shard halts the pool
    with :class:`OutputUnwritable`: no more requests anywhere, the answers in flight land, and
    this batch commits nothing more and keeps its spool, which the resumed run replays.
    """
    started = time.perf_counter()
    disk = _DiskGuard(pool, output, ctx.run_id)
    rows = BatchRows(not_sent=len(items))
    spool = disk.attempt(lambda: Spool(output, ctx.run_id))
    if spool is not None:
        try:
            rows = await run_batch(items, pool, ctx, listener, sink=disk.sink(spool))
        finally:
            disk.attempt(spool.close)
    kept: list[SampleRow] = []
    rejected: list[RejectedRow] = []
    committed: set[str] = set()
    if disk.error is None:
        kept, rejected = curator.curate(rows.samples)
        if pool.judge is not None and kept and curator.judge:
            kept, judged_out = await pool.judge.apply(kept)
            rejected += judged_out
        for table, table_rows in (
            ("samples", kept),
            ("rejected", rejected),
            ("failures", rows.failures),
        ):
            if table_rows and disk.error is None:
                write = functools.partial(write_shard, output, table, ctx.run_id, table_rows, part)
                if disk.attempt(write) is not None:
                    committed.add(table)
        if disk.error is None and spool is not None:
            disk.attempt(spool.discard)
    if disk.error is not None:
        kept = kept if "samples" in committed else []
        rejected = rejected if "rejected" in committed else []
        failures = rows.failures if "failures" in committed else []
        rows = replace(rows, failures=failures)
    elapsed = time.perf_counter() - started
    rate_limited = sum(
        (row["attempt_statuses"] or []).count("429") for row in (*rows.samples, *rows.failures)
    )
    process = this_process()
    logger.info(
        "batch %d: %d samples, %d rejected, %d failures, %d not sent, %d answered 429 "
        "in %.1fs (%.1f req/s) on %s",
        index,
        len(kept),
        len(rejected),
        len(rows.failures),
        rows.not_sent,
        rate_limited,
        elapsed,
        (len(rows.samples) + len(rows.failures)) / elapsed if elapsed > 0 else 0.0,
        process,
    )
    summary = tally(index, kept, rejected, rows.samples, rows.failures, process)
    return summary.model_copy(
        update={
            "not_sent": rows.not_sent,
            "fell_back": rows.fell_back,
            "fatal": str(pool.fatal) if pool.fatal is not None else None,
            "unusable": {name: str(exc) for name, exc in pool.unusable.items()},
        }
    )


def tally(
    index: int,
    kept: Sequence[SampleRow],
    rejected: Sequence[RejectedRow],
    answered: Sequence[SampleRow],
    failures: Sequence[FailureRow],
    process: str,
) -> BatchSummary:
    """What a batch's rows add up to: ``kept`` and ``rejected`` are what curation made of
    ``answered`` (whose tokens and cost were paid either way)."""
    return BatchSummary(
        index=index,
        samples=len(kept),
        rejected=dict(Counter(str(row["reason"]) for row in rejected)),
        failures=len(failures),
        not_sent=0,
        failures_by_class=dict(Counter(str(row["error_class"]) for row in failures)),
        prompt_tokens=sum(int(r["prompt_tokens"] or 0) for r in answered),
        completion_tokens=sum(int(r["completion_tokens"] or 0) for r in answered),
        maybe_billed_twice=sum(int(r["maybe_billed_twice"] or 0) for r in (*answered, *failures)),
        http_requests=sum(int(r["attempts"] or 0) for r in (*answered, *failures)),
        cost_usd=sum(float(r["cost_usd"] or 0.0) for r in answered),
        process=process,
    )
