"""A run's ``delivery: batch`` teachers: their requests sent as provider submissions, waited
for a bounded while, and collected into the run's shards.

How the flow waits, and why: a provider takes up to 24 hours to end a submission, and a
Prefect worker held that long does nothing but sleep. So one invocation of a run prepares
and submits what it has to, polls its open submissions while its online teachers work (every
``poll_interval_s``), collects each as it ends, and after ``wait_s`` returns with status
``waiting`` (the CLI exits 75, "try again later"). The next invocation of the same run id —
the same command again, or the deployment's next scheduled run — finds the submissions in
the run's journal (:mod:`distillery.storage.submissions`), adopts, polls and collects them,
and plans only what no submission holds. Nothing runs in between; nothing is bought twice.

Each submission's facts (provider id, step, provider state, counts) are a Prefect table
artifact updated as they change, the same rows ``distillery submissions`` prints.

The budget is reserved when a submission is made (its estimate at the batch price: prompt
tokens and ``max_tokens``), kept across invocations while it is open, and settled to what its
answers cost once collected. A submission that does not fit stays prepared, unsent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from distillery.config import JobConfig, SubmissionOptions, TeacherConfig
from distillery.errors import OutputUnwritable
from distillery.flows.artifacts import artifact_key
from distillery.flows.batches import BatchSummary, tally, this_process
from distillery.generators.batch import WorkItem
from distillery.generators.budget import Budget
from distillery.generators.curation.apply import Curator
from distillery.generators.http import HttpSender, make_http_client
from distillery.generators.providers.registry import get_provider
from distillery.generators.providers.submissions import SubmissionApi, SubmissionError
from distillery.generators.records import RunContext
from distillery.generators.routing import Router
from distillery.generators.structured import StructuredOutput
from distillery.generators.submissions_driver import CollectedRows, collect, prepare, wait_for
from distillery.storage.done_ids import DoneIds
from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location
from distillery.storage.shards import write_shard
from distillery.storage.submissions import (
    Journal,
    JournalError,
    SubmissionItem,
    SubmissionRecord,
    summarise,
)

#: Uploads and downloads of up to a few hundred MB: far longer than one request's timeout.
TRANSFER_TIMEOUT_S = 3600.0
#: How often a wait between two polls looks whether the run is stopping or may end.
WAKE_S = 0.5
#: Steps at which a submission has (or may have) a batch at the provider: its estimate is
#: reserved from the budget.
_AT_PROVIDER = frozenset({"created", "ended"})


def batch_teachers(job: JobConfig) -> list[TeacherConfig]:
    return [t for t in job.teachers if t.delivery == "batch"]


@dataclass
class Submissions:
    """The run's submissions in this process: its journal, each teacher's batch API, and what
    this invocation did with them (read by the flow's summary)."""

    job: JobConfig
    journal: Journal
    ctx: RunContext
    curator: Curator
    router: Router
    apis: dict[str, SubmissionApi]
    budget: Budget | None
    teacher_budgets: dict[str, Budget]
    logger: logging.Logger | logging.LoggerAdapter[Any]
    take_part: Callable[[], int]
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: submission id -> the estimate reserved for it in this process.
    reserved: dict[str, float] = field(default_factory=dict)
    #: submission id -> why it could not go further this invocation (left for the next).
    problems: dict[str, str] = field(default_factory=dict)
    #: Submissions left prepared because the budget had no room for them.
    over_budget: set[str] = field(default_factory=set)
    #: Submissions this invocation prepared (its plan counts their requests).
    prepared_now: set[str] = field(default_factory=set)
    #: Rows collected from submissions an earlier invocation prepared (not in this plan).
    collected_earlier: int = 0
    #: The artifact's rows as last published.
    shown: list[dict[str, Any]] = field(default_factory=list)

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        job: JobConfig,
        journal: Journal,
        ctx: RunContext,
        curator: Curator,
        router: Router,
        **options: Any,
    ) -> AsyncIterator[Submissions | None]:
        """The run's submissions, or None when it has no batch teacher and no open submission
        (a run without them never loads a batch API). Closes the APIs' connections."""
        teachers = {t.name: t for t in job.teachers}
        names = {t.name for t in batch_teachers(job)}
        for record in journal.records():
            if record.settled:
                continue
            if record.teacher not in teachers:
                raise JournalError(
                    f"{journal.record_location(record.submission_id)}: submission of teacher "
                    f"{record.teacher!r}, which the job no longer has (put it back to collect "
                    "what was paid for)"
                )
            names.add(record.teacher)
        if not names:
            yield None
            return
        senders: list[HttpSender] = []
        apis: dict[str, SubmissionApi] = {}
        try:
            for name in sorted(names):
                teacher = teachers[name]
                sender = make_http_client(
                    job.http_transport, 4, TRANSFER_TIMEOUT_S, teacher.base_url
                )
                senders.append(sender)
                api = get_provider(teacher.provider).submission_api(
                    teacher, sender, _api_key(teacher)
                )
                if api is None:  # the job changed the provider under an open submission
                    raise JournalError(
                        f"{journal.directory}: teacher {name!r} has open submissions but its "
                        f"provider {teacher.provider} has no batch API"
                    )
                apis[name] = api
            yield cls(job, journal, ctx, curator, router, apis, **options)
        finally:
            await asyncio.gather(*(s.aclose() for s in senders), return_exceptions=True)

    # --- preparing ---------------------------------------------------------------------------

    def reserve_open(self) -> None:
        """Reserve what the run's open submissions may cost: made by an earlier invocation,
        paid for when the provider ends them."""
        for record in self.journal.records():
            if not record.settled and (
                record.step in _AT_PROVIDER or record.create_started_at is not None
            ):
                self._reserve(record, force=True)

    def prepare(
        self,
        items_for: Callable[[str], Iterator[WorkItem]],
        structured: StructuredOutput | None,
        stop: Callable[[], bool],
    ) -> int:
        """Write each batch teacher's planned items as submissions (saved ``prepared``); the
        number of requests written. A stop ends the current submission where it is."""
        written = 0
        for teacher in batch_teachers(self.job):
            if stop():
                break
            provider = get_provider(teacher.provider)
            extra = structured.request_fields(provider) if structured is not None else None
            price = self.ctx.teachers[teacher.name].price
            items = _until(items_for(teacher.name), stop)
            for record in prepare(
                self.journal, teacher, provider, self.apis[teacher.name], items, price, extra
            ):
                written += record.requests
                self.prepared_now.add(record.submission_id)
                self.logger.info(
                    "submission %s: %d requests of teacher %s prepared (%.1f MB, ~$%.4f)",
                    record.submission_id,
                    record.requests,
                    teacher.name,
                    record.bytes / 1e6,
                    record.estimated_cost_usd,
                )
        return written

    # --- waiting -----------------------------------------------------------------------------

    async def run(
        self,
        online_done: asyncio.Event,
        stop: Callable[[], bool],
        committed: Callable[[BatchSummary, int], Awaitable[None]],
    ) -> None:
        """Submit, poll and collect until nothing is open, or the online teachers are done and
        the wait (the longest ``wait_s`` of the teachers with open submissions) is over, or
        the run stops. ``committed`` hears each collected chunk once its shards are written.
        """
        started = self.clock()
        records = [r for r in self.journal.records() if not r.settled]
        while True:
            if not records or stop():
                return
            moving = [r for r in records if self._may_go_on(r)]
            for record in moving:
                ended_before = record.step == "ended"
                try:
                    (record,) = await wait_for(
                        self.journal,
                        self.apis,
                        [record],
                        0.0,
                        0.0,
                        self.clock,
                        self.sleep,
                    )
                    if record.step == "ended":
                        await self._collect(record, committed, ended_before)
                    elif record.step == "abandoned":  # refused as a whole: planned again
                        self._release(record, paid=0.0)
                        self._problem(record, f"given up, sent again next run: {record.error}")
                except SubmissionError as exc:
                    self._problem(record, str(exc))
            current = self.journal.records()
            await self.publish(current)
            # Only what the provider holds is worth waiting for: a submission the budget
            # keeps back stays so until an answer settles, which another one would bring.
            records = [r for r in current if not r.settled]
            if all(r.submission_id in self.over_budget for r in records):
                return
            options = [self._options(r) for r in records]
            wait_s = max(o.wait_s for o in options)
            poll_s = min(o.poll_interval_s for o in options)
            woke = self.clock()
            while self.clock() - woke < poll_s:
                if stop() or (online_done.is_set() and self.clock() - started >= wait_s):
                    return
                await self.sleep(min(WAKE_S, poll_s))

    def _options(self, record: SubmissionRecord) -> SubmissionOptions:
        return next(t for t in self.job.teachers if t.name == record.teacher).submission_options

    def _may_go_on(self, record: SubmissionRecord) -> bool:
        """A submission not yet made may be made only once its estimate is reserved."""
        if record.step in _AT_PROVIDER or record.create_started_at is not None:
            return True
        if self._reserve(record):
            self.over_budget.discard(record.submission_id)
            return True
        if record.submission_id not in self.over_budget:
            self.over_budget.add(record.submission_id)
            self.logger.warning(
                "submission %s (teacher %s, ~$%.4f) not sent: the budget has no room for it; "
                "raise budget_usd and run again",
                record.submission_id,
                record.teacher,
                record.estimated_cost_usd,
            )
        return False

    def _budgets(self, teacher: str) -> list[Budget]:
        return [b for b in (self.budget, self.teacher_budgets.get(teacher)) if b is not None]

    def _reserve(self, record: SubmissionRecord, force: bool = False) -> bool:
        if record.submission_id in self.reserved:
            return True
        estimate = record.estimated_cost_usd
        budgets = self._budgets(record.teacher)
        if not force and not all(b.room_for(estimate) for b in budgets):
            return False
        for budget in budgets:
            budget.hold(estimate)
        self.reserved[record.submission_id] = estimate
        return True

    def _release(self, record: SubmissionRecord, paid: float) -> None:
        """Settle the submission's reservation to what it cost."""
        estimate = self.reserved.pop(record.submission_id, 0.0)
        for budget in self._budgets(record.teacher):
            budget.settle(estimate, paid)

    def _problem(self, record: SubmissionRecord, why: str) -> None:
        if self.problems.get(record.submission_id) != why:
            self.logger.warning("submission %s: %s", record.submission_id, why)
        self.problems[record.submission_id] = why

    # --- collecting --------------------------------------------------------------------------

    async def _collect(
        self,
        record: SubmissionRecord,
        committed: Callable[[BatchSummary, int], Awaitable[None]],
        ended_before: bool,
    ) -> None:
        """Commit an ended submission's rows chunk by chunk, then mark it collected.

        Only a submission found ended (``ended_before``) may have been collected in part by an
        invocation that stopped: its committed ids are read from the shards. One this
        invocation saw end has none, and the run's shards are not read for it.
        """
        assert record.provider_batch_id is not None
        teachers = {t.name: t for t in self.job.teachers}
        output, run_id = self.journal.output, self.journal.run_id
        done = (
            DoneIds.of_submission(output, run_id, record.provider_batch_id)
            if ended_before
            else DoneIds()
        )

        def teacher_for(item: SubmissionItem) -> TeacherConfig:
            return self.router.asked(teachers[item.teacher], item.sample_index)

        paid = 0.0
        chunks = collect(
            self.journal, self.apis[record.teacher], record, self.ctx, teacher_for, done
        )
        async with aclosing(chunks) as rows:
            async for chunk in rows:
                summary = self._commit(chunk, output, run_id)
                paid += summary.cost_usd
                if record.submission_id not in self.prepared_now:
                    self.collected_earlier += len(chunk)
                await committed(summary, len(chunk))
        self.journal.advance(record, "collected")
        self.problems.pop(record.submission_id, None)
        self._release(record, paid)
        self.logger.info(
            "submission %s (batch %s) collected: %s",
            record.submission_id,
            record.provider_batch_id,
            ", ".join(f"{k} {v}" for k, v in sorted(record.counts.items())) or "no counts",
        )

    def _commit(self, chunk: CollectedRows, output: Location, run_id: str) -> BatchSummary:
        """Curate a chunk as a batch would be, and write its shards. No spool: the provider
        keeps the results, so a chunk lost to a crash is downloaded again."""
        kept, rejected = self.curator.curate(chunk.samples)
        part = self.take_part()
        try:
            for table, rows in (
                ("samples", kept),
                ("rejected", rejected),
                ("failures", chunk.failures),
            ):
                if rows:
                    write_shard(output, table, run_id, rows, part)
        except OSError as exc:
            raise OutputUnwritable(output.uri, run_id, exc) from exc
        failpoint("submissions:chunk-committed")
        summary = tally(part, kept, rejected, chunk.samples, chunk.failures, this_process())
        # Not an HTTP request each: the submission's few (upload, create, polls) are not rows.
        return summary.model_copy(update={"http_requests": 0})

    # --- showing -----------------------------------------------------------------------------

    def open_requests(self) -> tuple[int, int, int]:
        """(submissions, requests) still open — at the provider, or prepared and unsent — and
        how many of those requests this invocation's plan counts."""
        records = [r for r in self.journal.records() if not r.settled]
        planned_now = sum(r.requests for r in records if r.submission_id in self.prepared_now)
        return len(records), sum(r.requests for r in records), planned_now

    async def publish(self, records: list[SubmissionRecord]) -> None:
        """The run's submissions as a Prefect table artifact: one row per submission (provider
        id, step, provider state, counts, requests, estimate), a new version only when a fact
        changed (ages are left out of it)."""
        from prefect.artifacts import acreate_table_artifact

        table = [
            {
                **{k: v for k, v in row.items() if k not in ("age_s", "step_age_s", "counts")},
                "counts": ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items())),
            }
            for row in summarise(records, self.journal.clock())
        ]
        if table == self.shown:
            return
        self.shown = table
        await acreate_table_artifact(
            table,
            key=artifact_key(self.job.name, "submissions"),
            description=f"Provider submissions of run {self.journal.run_id}",
        )


def _until(items: Iterator[WorkItem], stop: Callable[[], bool]) -> Iterator[WorkItem]:
    for item in items:
        if stop():
            return
        yield item


def _api_key(teacher: TeacherConfig) -> str | None:
    """The teacher's key (checked set before the run started: ``require_api_keys``)."""
    return os.environ.get(teacher.api_key_env) if teacher.api_key_env else None
