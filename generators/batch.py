"""One batch of prompts, every teacher, concurrently on asyncio — no Prefect in here.

The Prefect task in ``flows/generate.py`` is a thin wrapper around :func:`run_batch`, so the
same code runs in tests without an orchestrator. Concurrency is capped per teacher by a
semaphore shared by every batch of the run in this process (not per batch), so several batches
in flight never exceed a teacher's ``concurrency``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from distillery.config import JobConfig, TeacherConfig
from distillery.generators.budget import Budget
from distillery.generators.client import Outcome, TeacherClient, TeacherUnusable
from distillery.generators.curation.judge import Judge
from distillery.generators.http import make_http_client
from distillery.generators.pricing import PriceEntry, cost_usd
from distillery.generators.prompts import Prompt
from distillery.generators.providers.registry import get_provider
from distillery.generators.ratelimit import Limiter, Limits, SharedLimits
from distillery.generators.records import RunContext, failure_row, sample_id_for, sample_row
from distillery.generators.tokens import count_message_tokens


@dataclass(frozen=True)
class WorkItem:
    """One request to make: a prompt for a teacher (the sample index is 0 until ``n`` lands)."""

    prompt: Prompt
    teacher: TeacherConfig
    sample_index: int = 0

    @property
    def sample_id(self) -> str:
        return sample_id_for(self.prompt.prompt_id, self.teacher, self.sample_index)


class Batch:
    """The requests of one batch, in a plain container on purpose.

    Prefect walks task parameters looking for futures and states, descending into lists and
    dataclasses: a list of a hundred WorkItems cost ~100 ms per batch (BENCHMARKS.md,
    overhead). A plain object is passed through untouched.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[WorkItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)


def plan_work(
    prompts: Sequence[Prompt], teachers: Sequence[TeacherConfig], done: set[str]
) -> list[list[WorkItem]]:
    """Per prompt, the requests still to make (those whose sample id is not in ``done``)."""
    plan: list[list[WorkItem]] = []
    for prompt in prompts:
        items = [WorkItem(prompt, teacher) for teacher in teachers]
        todo = [item for item in items if item.sample_id not in done]
        if todo:
            plan.append(todo)
    return plan


@dataclass
class _Teacher:
    client: TeacherClient
    http: httpx.AsyncClient
    slots: asyncio.Semaphore


class TeacherPool:
    """The run's teacher clients in this process: pooled connections and concurrency caps.

    ``fatal`` is set by the first request proving a teacher unusable; ``stop`` answers True
    after a graceful stop (Ctrl-C). From then on no request is sent anywhere, answers already
    in flight are still kept, and batches end early.
    """

    def __init__(
        self,
        job: JobConfig,
        stop: Callable[[], bool] = lambda: False,
        prices: dict[str, PriceEntry | None] | None = None,
        budget: Budget | None = None,
        shared: dict[str, SharedLimits] | None = None,
    ) -> None:
        self._stop = stop
        self._prices = prices or {}
        self.budget = budget
        self._teachers: dict[str, _Teacher] = {}
        for teacher in job.teachers:
            http = make_http_client(
                job.http_transport, teacher.concurrency, teacher.timeout_s, teacher.base_url
            )
            provider = get_provider(teacher.provider)
            limiter = Limiter(
                Limits(teacher.limits.rpm, teacher.limits.tpm, teacher.limits.window_s),
                teacher.concurrency,
                teacher.params.max_tokens,
                shared=(shared or {}).get(teacher.name),
                refund_below_reservation=not provider.rate_limit_counts_max_tokens,
            )
            client = TeacherClient(teacher, provider, http, limiter)
            self._teachers[teacher.name] = _Teacher(
                client, http, asyncio.Semaphore(teacher.concurrency)
            )
        self.judge: Judge | None = None
        judge = job.curation.judge
        if judge is not None:
            spec = judge.teacher
            http = make_http_client(
                job.http_transport, spec.concurrency, spec.timeout_s, spec.base_url
            )
            limiter = Limiter(
                Limits(spec.limits.rpm, spec.limits.tpm, spec.limits.window_s),
                spec.concurrency,
                spec.params.max_tokens,
            )
            client = TeacherClient(spec, get_provider(spec.provider), http, limiter)
            self._teachers[spec.name] = _Teacher(client, http, asyncio.Semaphore(spec.concurrency))
            self.judge = Judge(judge, client, self._prices.get(spec.name))
        self.fatal: TeacherUnusable | None = None

    async def __aenter__(self) -> TeacherPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.gather(*(t.http.aclose() for t in self._teachers.values()))

    @property
    def halted(self) -> bool:
        """No more requests: a teacher proved unusable, a stop was requested, or the budget
        is spent."""
        exhausted = self.budget is not None and self.budget.exhausted
        return self.fatal is not None or exhausted or self._stop()

    async def request(self, item: WorkItem) -> Outcome | None:
        """Send one request under its teacher's cap; None if the run was stopped before it."""
        teacher = self._teachers[item.teacher.name]
        async with teacher.slots:
            if self.halted:
                return None
            price = self._prices.get(item.teacher.name)
            estimate = 0.0
            if self.budget is not None and price is not None:
                limiter = teacher.client.limiter
                expected = limiter.estimate_completion() if limiter else 256.0
                prompt = count_message_tokens(item.prompt.messages, item.teacher.model)
                estimate = cost_usd(price, prompt, int(expected)) or 0.0
                if not await self.budget.reserve(estimate):
                    return None
            try:
                outcome = await teacher.client.complete(item.prompt.messages)
            except TeacherUnusable as exc:
                self.fatal = self.fatal or exc
                if self.budget is not None:
                    self.budget.settle(estimate, 0.0)
                return None
            if self.budget is not None:
                done = outcome.completion
                actual = (
                    cost_usd(price, done.prompt_tokens, done.completion_tokens, done.cached_tokens)
                    if done is not None
                    else None
                )
                self.budget.settle(estimate, actual or 0.0)
            return outcome


@dataclass
class BatchRows:
    """What a batch produced, as rows for the samples and failures tables."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    not_sent: int = 0


OutcomeListener = Callable[[WorkItem, Outcome | None], None]
RowSink = Callable[[str, dict[str, Any]], None]


async def run_batch(
    items: Sequence[WorkItem],
    pool: TeacherPool,
    ctx: RunContext,
    listener: OutcomeListener | None = None,
    sink: RowSink | None = None,
) -> BatchRows:
    """Send every item concurrently and collect the rows; never raises for one request.

    ``sink`` receives each row the moment its answer arrives (the write-ahead spool), before
    anything else can go wrong with it.
    """
    rows = BatchRows()

    async def one(item: WorkItem) -> None:
        outcome = await pool.request(item)
        if outcome is None:
            rows.not_sent += 1
        else:
            if outcome.completion is not None:
                table, build, bucket = "samples", sample_row, rows.samples
            else:
                table, build, bucket = "failures", failure_row, rows.failures
            row = build(ctx, item.prompt, item.teacher, item.sample_index, outcome)
            if sink is not None:
                sink(table, row)
            bucket.append(row)
        if listener is not None:
            listener(item, outcome)

    await asyncio.gather(*(one(item) for item in items))
    return rows
