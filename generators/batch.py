"""One batch of prompts, every teacher, concurrently on asyncio — no Prefect in here.

The Prefect task in ``flows/generate.py`` is a thin wrapper around :func:`run_batch`, so the
same code runs in tests without an orchestrator. Concurrency is capped per teacher by a
semaphore shared by every batch of the run in this process (not per batch), so several batches
in flight never exceed a teacher's ``concurrency``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Protocol, cast

from distillery.config import JobConfig, TeacherConfig
from distillery.errors import FatalRunError
from distillery.generators.budget import Budget
from distillery.generators.client import Failure, Outcome, TeacherClient, TeacherUnusable
from distillery.generators.curation.judge import Judge
from distillery.generators.http import HttpSender, make_http_client
from distillery.generators.pricing import PriceEntry, answer_cost, cost_usd
from distillery.generators.prompts import Prompt
from distillery.generators.providers.base import Message
from distillery.generators.providers.registry import get_provider
from distillery.generators.ratelimit import Limiter, Limits, SharedLimits
from distillery.generators.records import (
    RunContext,
    failure_row,
    sample_id_for,
    sample_row,
    usage_columns,
)
from distillery.generators.routing import Router
from distillery.generators.structured import StructuredOutput, repair
from distillery.generators.tokens import count_message_tokens, preload
from distillery.storage.rows import FailureRow, Row, SampleRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One request to make: sample ``sample_index`` of a prompt from a teacher.

    ``teacher`` carries the sample's own parameters (seed, temperature). ``route`` and
    ``route_step`` say how the teacher was chosen (the mode, and 0 for the first choice, 1
    after one fallback, ...); ``fallbacks`` are the teachers still to try if this one fails.

    ``runner`` is set by recipes whose row takes more than one request (a multi-turn
    conversation, ``generators/recipes/``); such an item does not fall back.
    """

    prompt: Prompt
    teacher: TeacherConfig
    sample_index: int = 0
    route: str = "all"
    route_step: int = 0
    fallbacks: tuple[TeacherConfig, ...] = ()
    runner: ItemRunner | None = field(default=None, compare=False)

    @property
    def sample_id(self) -> str:
        return sample_id_for(self.prompt.prompt_id, self.teacher, self.sample_index)

    def fallback(self) -> WorkItem | None:
        """The same sample from the next teacher of the chain, if there is one."""
        if not self.fallbacks:
            return None
        return replace(
            self,
            teacher=self.fallbacks[0],
            route_step=self.route_step + 1,
            fallbacks=self.fallbacks[1:],
        )


class Batch:
    """The requests of one batch, in a plain container on purpose.

    Prefect walks task parameters looking for futures and states, descending into lists and
    dataclasses: a list of WorkItems was most of a batch's cost (BENCHMARKS.md, "Prefect
    per-task overhead"). A plain object is passed through untouched.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[WorkItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)


def plan_prompts(
    prompts: Iterable[Prompt], router: Router, done: Container[str]
) -> Iterator[list[WorkItem]]:
    """Per prompt, in order, the requests still to make (an empty list when none is left): the
    first step of every chain and sample index none of whose teachers has an answer in ``done``
    (sample ids in samples or rejected).

    A chain an earlier invocation answered through a fallback is done; one that only failed
    starts again from its first teacher, as any failure is retried on resume. A generator, so
    a run plans its prompts as it reads them, never all at once.
    """
    for prompt in prompts:
        todo: list[WorkItem] = []
        for chain in router.chains(prompt.prompt_id):
            for index in range(router.n):
                asked = [router.asked(teacher, index) for teacher in chain]
                items = [
                    WorkItem(prompt, teacher, index, router.mode, step, tuple(asked[step + 1 :]))
                    for step, teacher in enumerate(asked)
                ]
                if not any(item.sample_id in done for item in items):
                    todo.append(items[0])
        yield todo


def plan_work(
    prompts: Iterable[Prompt], router: Router, done: Container[str]
) -> list[list[WorkItem]]:
    """:func:`plan_prompts` as a list, prompts with nothing left to send left out."""
    return [todo for todo in plan_prompts(prompts, router, done) if todo]


@dataclass
class _Teacher:
    client: TeacherClient
    http: HttpSender
    slots: asyncio.Semaphore


class TeacherPool:
    """The run's teacher clients in this process: pooled connections and concurrency caps.

    ``fatal`` is set by the first request proving a teacher unusable (or by a batch that can
    no longer write its output: ``flows/batches.py``); ``stop`` answers True
    after a graceful stop (Ctrl-C). From then on no request is sent anywhere, answers already
    in flight are still kept, and batches end early. A request that may fall back to another
    teacher instead marks its teacher ``unusable`` (no more requests to it) and the run goes
    on; so does a teacher whose own budget (``teacher_budgets``) is spent.
    """

    def __init__(
        self,
        job: JobConfig,
        stop: Callable[[], bool] = lambda: False,
        prices: dict[str, PriceEntry | None] | None = None,
        budget: Budget | None = None,
        shared: dict[str, SharedLimits] | None = None,
        teacher_budgets: dict[str, Budget] | None = None,
        structured: StructuredOutput | None = None,
    ) -> None:
        self._stop = stop
        self.structured = structured
        #: Per teacher, the body fields asking for the schema (empty without one).
        self._schema_fields: dict[str, dict[str, Any]] = {}
        self._prices = prices or {}
        self.budget = budget
        self.teacher_budgets = teacher_budgets or {}
        self.unusable: dict[str, TeacherUnusable] = {}
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
            if structured is not None:
                self._schema_fields[teacher.name] = structured.request_fields(provider)
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
        self.fatal: FatalRunError | None = None
        #: Requests in their teacher's slot now: id -> when they took it (time.monotonic()).
        self._in_flight: dict[int, float] = {}
        # Prompts are counted once a teacher announces a token limit (or for budgets): load
        # the tokenizers while the run starts rather than on the first count.
        preload(t.client.teacher.model for t in self._teachers.values())

    async def __aenter__(self) -> TeacherPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.gather(*(t.http.aclose() for t in self._teachers.values()))
        limiters = [t.client.limiter for t in self._teachers.values()]
        await asyncio.gather(*(x.shared.aclose() for x in limiters if x is not None))

    @property
    def halted(self) -> bool:
        """No more requests: a teacher proved unusable, a stop was requested, or the budget
        is spent."""
        exhausted = self.budget is not None and self.budget.exhausted
        return self.fatal is not None or exhausted or self._stop()

    def available(self, name: str) -> bool:
        """Whether teacher ``name`` still takes requests (not unusable, budget not spent)."""
        budget = self.teacher_budgets.get(name)
        return name not in self.unusable and (budget is None or not budget.exhausted)

    async def request(
        self, item: WorkItem, paid: Callable[[Outcome], None] | None = None
    ) -> Outcome | None:
        """Send one request under its teacher's cap; None if it was not sent: the run is
        stopping, or (``available``) the teacher is unusable or its budget is spent.

        With a response schema, an answer that does not match it is repaired (up to the
        configured follow-ups) in the same slot: see :mod:`distillery.generators.structured`;
        ``paid`` hears each answer a repair is about to be asked for.
        """
        teacher = self._teachers[item.teacher.name]
        async with teacher.slots:
            key = id(item)
            self._in_flight[key] = time.monotonic()
            try:
                outcome = await self._send(teacher, item, item.prompt.messages)
                if outcome is None or self.structured is None:
                    return outcome

                async def send(messages: list[Message]) -> Outcome | None:
                    return await self._send(teacher, item, messages)

                return await repair(self.structured, item.prompt.messages, outcome, send, paid)
            finally:
                self._in_flight.pop(key, None)

    def in_flight(self, now: float | None = None) -> tuple[int, float]:
        """(requests out now, seconds the longest has been out): what the end of a run is
        waiting for (the progress line shows it)."""
        if not self._in_flight:
            return 0, 0.0
        now = time.monotonic() if now is None else now
        return len(self._in_flight), now - min(self._in_flight.values())

    async def _send(
        self, teacher: _Teacher, item: WorkItem, messages: list[Message]
    ) -> Outcome | None:
        """One request of ``item`` (the original or a repair), within the budgets."""
        if self.halted or not self.available(item.teacher.name):
            return None
        price = self._prices.get(item.teacher.name)
        budgets = [b for b in (self.budget, self.teacher_budgets.get(item.teacher.name)) if b]
        estimate = 0.0
        if budgets and price is not None:
            limiter = teacher.client.limiter
            expected = limiter.estimate_completion() if limiter else 256.0
            prompt = count_message_tokens(messages, item.teacher.model)
            estimate = cost_usd(price, prompt, int(expected)) or 0.0
        reserved: list[Budget] = []
        for budget in budgets:
            if not await budget.reserve(estimate):
                for held in reserved:
                    held.settle(estimate, 0.0)
                return None
            reserved.append(budget)
        try:
            outcome = await teacher.client.complete(
                messages,
                params=item.teacher.params,
                extra_body=self._schema_fields.get(item.teacher.name),
            )
        except TeacherUnusable as exc:
            for budget in budgets:
                budget.settle(estimate, 0.0)
            if item.fallbacks:
                if item.teacher.name not in self.unusable:
                    logger.warning("%s; its prompts go to the next teacher", exc)
                self.unusable.setdefault(item.teacher.name, exc)
            else:
                self.fatal = self.fatal or exc
            return None
        if budgets:
            done = outcome.completion
            actual = answer_cost(price, done) if done is not None else None
            for budget in budgets:
                budget.settle(estimate, actual or 0.0)
        return outcome


@dataclass
class BatchRows:
    """What a batch produced, as rows for the samples and failures tables."""

    samples: list[SampleRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    not_sent: int = 0
    fell_back: int = 0
    """Failure rows after which the same sample went to the next teacher of its route."""

    def add(self, item: WorkItem, result: ItemResult, sink: RowSink | None) -> None:
        """Keep ``item``'s row with its route, spooled first (``sink``) if there is a spool."""
        row = result[1]
        row["route"], row["route_step"] = item.route, item.route_step
        if sink is not None:
            sink(result[0], row)
        if result[0] == "samples":
            self.samples.append(result[1])
        else:
            self.failures.append(result[1])


OutcomeListener = Callable[[WorkItem, Outcome | None], None]
RowSink = Callable[[str, Row], None]
#: An item's row with its table: ("samples", a sample) or ("failures", a failure), and the
#: outcome of its last request (None if none was paid for).
ItemResult = (
    tuple[Literal["samples"], SampleRow, Outcome | None]
    | tuple[Literal["failures"], FailureRow, Outcome | None]
)


class ItemRunner(Protocol):
    """Makes one item's row from several requests (each through ``pool.request``).

    Returns the row's table ("samples" or "failures") with the row, or None if nothing was
    paid for (the run stopped first); ``sink`` takes intermediate rows worth spooling.
    """

    async def __call__(
        self, item: WorkItem, pool: TeacherPool, ctx: RunContext, sink: RowSink | None
    ) -> ItemResult | None: ...


def repair_interrupted_row(ctx: RunContext, item: WorkItem, exchange: Outcome) -> FailureRow:
    """A failure row keeping an answer a schema repair is about to be asked for.

    Spooled while the repair is under way; discarded with the spool when the batch commits
    (the final row holds every exchange), so only a process that died first leaves it.
    ``conversation`` holds the prompt and the answer; the usage columns what it cost.
    """
    completion = exchange.completion
    assert completion is not None, "only an answered exchange was paid for"
    failure = Failure(
        "repair_interrupted",
        "the process ended while this answer's schema repair was asked for",
        None,
    )
    failed = replace(exchange, completion=None, failure=failure)
    paid = usage_columns(ctx.facts(item.teacher).price, completion)
    made = failure_row(ctx, item.prompt, item.teacher, item.sample_index, failed)
    row = cast(FailureRow, {**made, **paid})  # FailureRow's usage columns are UsageColumns'
    answer: Message = {"role": "assistant", "content": completion.text}
    row.update(
        {
            "route": item.route,
            "route_step": item.route_step,
            "conversation": [*item.prompt.messages, answer],
        }
    )
    return row


async def run_batch(
    items: Sequence[WorkItem],
    pool: TeacherPool,
    ctx: RunContext,
    listener: OutcomeListener | None = None,
    sink: RowSink | None = None,
) -> BatchRows:
    """Send every item concurrently and collect the rows; never raises for one request.

    ``sink`` receives each row the moment its answer arrives (the write-ahead spool), before
    anything else can go wrong with it. An item whose request fails for good, or whose
    teacher is unusable or out of budget, moves on to its next fallback teacher (the failure
    row stays: it is lineage); ``listener`` hears each item's final outcome once.
    """
    rows = BatchRows()

    def spool_before_repair(item: WorkItem) -> Callable[[Outcome], None] | None:
        """Spools an answer a schema repair is about to be asked for (see ``repair``)."""
        if sink is None or pool.structured is None:
            return None

        def paid(exchange: Outcome) -> None:
            assert sink is not None
            sink("failures", repair_interrupted_row(ctx, item, exchange))

        return paid

    async def one(first: WorkItem) -> None:
        if first.runner is not None:
            await run_recipe_item(first)
            return
        item: WorkItem | None = first
        while item is not None:
            outcome = await pool.request(item, spool_before_repair(item))
            if outcome is not None:
                made = item.prompt, item.teacher, item.sample_index, outcome
                rows.add(
                    item,
                    ("samples", sample_row(ctx, *made), outcome)
                    if outcome.completion is not None
                    else ("failures", failure_row(ctx, *made), outcome),
                    sink,
                )
            answered = outcome is not None and outcome.completion is not None
            following = None if answered or pool.halted else item.fallback()
            if following is None:
                if outcome is None:
                    rows.not_sent += 1
                if listener is not None:
                    listener(item, outcome)
                return
            if outcome is not None:
                rows.fell_back += 1
            item = following

    async def run_recipe_item(item: WorkItem) -> None:
        assert item.runner is not None
        result = await item.runner(item, pool, ctx, sink)
        if result is None:
            rows.not_sent += 1
        else:
            rows.add(item, result, sink)
        if listener is not None:
            listener(item, result[2] if result is not None else None)

    await asyncio.gather(*(one(item) for item in items))
    return rows
