"""A run's batch-delivered requests, from work items to rows, through a provider's batch API.

A *submission* is one provider batch (the word "batch" names the Prefect task's prompt batch).
Its life is kept in the run's :class:`~distillery.storage.submissions.Journal`, and every
step here is durable before the next is taken, so a process killed anywhere resumes from
the journal alone:

:func:`prepare`
    builds each request as online does (``build_call``, plus any structured-output fields),
    lines it and writes it through the journal writer, which cuts submissions at the
    provider's caps and saves each ``prepared`` once its files are synced.
:func:`advance`
    one step forward: upload → ``uploaded``; mark ``creating``, create → ``created``; poll →
    ``ended`` (a submission the provider refused as a whole → ``abandoned``: its ids are
    planned again). A record marked ``creating`` may have a batch whose id the crash lost:
    the provider's list is searched (:meth:`SubmissionApi.find`) before creating another.
:func:`wait_for`
    advances open records until all have ended or the wait is over (injected clock and sleep).
:func:`collect`
    streams an ended submission's results into sample and failure rows, in chunks, skipping
    ids already committed; the caller commits each chunk, then marks the record ``collected``.

No Prefect here, as in :mod:`distillery.generators.batch`: the flow wraps these.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from distillery.config import TeacherConfig
from distillery.generators.batch import WorkItem
from distillery.generators.client import Failure, Outcome, merge_body, request_hash
from distillery.generators.pricing import PriceEntry, cost_usd
from distillery.generators.providers.base import Completion, Provider
from distillery.generators.providers.submissions import (
    AmbiguousSubmission,
    FindHints,
    SubmissionApi,
    SubmissionError,
    SubmissionResult,
    SubmissionState,
)
from distillery.generators.records import Delivered, RunContext, failure_row, sample_row
from distillery.storage.failpoints import failpoint
from distillery.storage.rows import FailureRow, SampleRow
from distillery.storage.submissions import (
    Entry,
    Journal,
    JournalError,
    SubmissionItem,
    SubmissionRecord,
)

logger = logging.getLogger(__name__)

#: Rows per chunk :func:`collect` yields: what one commit holds in memory.
CHUNK_ROWS = 500
#: Steps after which :func:`advance` has nothing to do (collecting is :func:`collect`'s).
_WAITED = frozenset({"ended", "collected", "abandoned"})


# --------------------------------------------------------------------------- prepare


def prepare(
    journal: Journal,
    teacher: TeacherConfig,
    provider: Provider,
    api: SubmissionApi,
    items: Iterable[WorkItem],
    price: PriceEntry | None,
    extra_body: dict[str, Any] | None = None,
) -> list[SubmissionRecord]:
    """Write ``items`` (all of ``teacher``) as submissions, each saved ``prepared``.

    Each request is the online one: ``provider.build_call`` with the item's own parameters,
    ``extra_body`` (structured output's fields) merged in; its line holds no header, so no
    key (the body is built without one). Its estimated cost, which the record sums for the
    budget, is its prompt tokens (``provider.prompt_tokens``) and its completion bound
    (``max_tokens``; none counted when unbounded) at the batch price. Streamed: one
    request is held at a time.
    """
    writer = journal.new_submission(teacher.name, teacher.provider, teacher.model, api.limits)
    return list(writer.write(_entries(teacher, provider, api, items, price, extra_body)))


def _entries(
    teacher: TeacherConfig,
    provider: Provider,
    api: SubmissionApi,
    items: Iterable[WorkItem],
    price: PriceEntry | None,
    extra_body: dict[str, Any] | None,
) -> Iterator[Entry]:
    for work in items:
        if work.teacher.name != teacher.name:
            raise ValueError(
                f"sample {work.sample_id}: teacher {work.teacher.name!r} in a submission of "
                f"teacher {teacher.name!r}"
            )
        if work.runner is not None:
            raise ValueError(
                f"sample {work.sample_id}: a recipe's multi-request item cannot go in a submission"
            )
        call = provider.build_call(work.teacher, work.prompt.messages, None)
        if extra_body:
            call = replace(call, body=merge_body(call.body, extra_body))
        custom_id = work.sample_id
        estimate = 0.0
        if price is not None:
            prompt = provider.prompt_tokens(work.prompt.messages, work.teacher.model)
            bound = provider.completion_bound(work.teacher) or 0
            estimate = cost_usd(price, prompt, bound, delivery="batch") or 0.0
        item = SubmissionItem.of(work, request_hash(call.body))
        yield Entry(custom_id, api.line(custom_id, call), item, estimate)


# --------------------------------------------------------------------------- advance


async def advance(
    journal: Journal, api: SubmissionApi, record: SubmissionRecord, now: float
) -> SubmissionRecord:
    """Take ``record`` one step forward and save it; the saved record.

    ``now`` is unix seconds by the clock the provider's creation times are compared with
    (``create_started_at``). A record that has ended (or is settled) is returned as it is.
    An upload or a create refused for good (a bad file, a file gone: no batch was made)
    abandons the submission with the provider's error. Any other :class:`SubmissionError`
    is raised, the record unchanged, for a later try or a person: a retryable one, a create
    that may have made a batch, a search that cannot tell which batch is the submission's
    (:class:`AmbiguousSubmission`), a batch the provider no longer shows.
    :class:`~distillery.generators.client.TeacherUnusable` (a bad key) is raised for the
    run to stop. After a raise, take the record again from the journal (``journal.read``):
    the ``creating`` mark may have been saved before the create failed, and a later try
    without it would create a second batch.
    """
    if record.step in _WAITED:
        return record
    if record.step == "created":
        return await _poll(journal, api, record)
    if record.step == "prepared" and record.create_started_at is None:
        try:
            with journal.local_requests(record.submission_id) as lines:
                file_id = await api.upload(record.submission_id, lines)
        except SubmissionError as exc:
            return _refused(journal, record, exc)
        if file_id is not None:
            return journal.advance(record, "uploaded", file_id=file_id)
    return await _create(journal, api, record, now)


def _refused(journal: Journal, record: SubmissionRecord, exc: SubmissionError) -> SubmissionRecord:
    """Abandon ``record`` for a refusal no retry mends; raise ``exc`` if it may yet."""
    if exc.retryable or exc.maybe_created or isinstance(exc, AmbiguousSubmission):
        raise exc
    return journal.advance(record, "abandoned", error=f"{exc.error_class}: {exc}")


async def _create(
    journal: Journal, api: SubmissionApi, record: SubmissionRecord, now: float
) -> SubmissionRecord:
    """Create the record's batch, or adopt the one an earlier attempt made (marked)."""
    if record.create_started_at is not None:
        held = frozenset(
            r.provider_batch_id
            for r in journal.records()
            if r.provider_batch_id is not None and r.submission_id != record.submission_id
        )
        hints = FindHints(record.create_started_at, record.requests, held)
        found = await api.find(record.submission_id, hints)
        if found is not None:
            logger.info(
                "submission %s: adopted batch %s, created before the process stopped",
                record.submission_id,
                found,
            )
            return journal.advance(
                record, "created", provider_batch_id=found, provider_state="created"
            )
    else:
        record = journal.advance(
            record, record.step, provider_state="creating", create_started_at=now
        )
    try:
        with journal.local_requests(record.submission_id) as lines:
            batch_id = await api.create(record.submission_id, lines, record.file_id, record.model)
    except SubmissionError as exc:
        return _refused(journal, record, exc)
    failpoint("submissions:created-unsaved")  # the batch exists; only the provider knows its id
    return journal.advance(record, "created", provider_batch_id=batch_id, provider_state="created")


async def _poll(journal: Journal, api: SubmissionApi, record: SubmissionRecord) -> SubmissionRecord:
    assert record.provider_batch_id is not None  # the record's validator holds it
    status = await api.status(record.provider_batch_id)
    counts = dataclasses.asdict(status.counts)
    if not status.ended:
        if (status.raw_state, counts) == (record.provider_state, record.counts):
            return record
        return journal.advance(record, "created", provider_state=status.raw_state, counts=counts)
    if status.state == SubmissionState.FAILED:
        why = status.error or f"the provider failed the submission ({status.raw_state})"
        return journal.advance(
            record, "abandoned", provider_state=status.raw_state, counts=counts, error=why
        )
    return journal.advance(record, "ended", provider_state=status.raw_state, counts=counts)


# --------------------------------------------------------------------------- wait


async def wait_for(
    journal: Journal,
    apis: Mapping[str, SubmissionApi],
    records: Iterable[SubmissionRecord],
    poll_interval_s: float,
    wait_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> list[SubmissionRecord]:
    """Advance every record (its teacher's API from ``apis``) until all have ended or been
    abandoned, or ``wait_s`` has passed; the records as they are then.

    Each round takes every open record as far as it goes without waiting (upload, create)
    and polls the created ones once; then sleeps ``poll_interval_s``. A retryable error of
    one record is logged and tried again next round.
    """
    current = list(records)
    started = clock()
    while True:
        for index, record in enumerate(current):
            current[index] = await _as_far_as_it_goes(journal, apis[record.teacher], record, clock)
        if all(r.step in _WAITED for r in current) or clock() - started >= wait_s:
            return current
        await sleep(poll_interval_s)


async def _as_far_as_it_goes(
    journal: Journal, api: SubmissionApi, record: SubmissionRecord, clock: Callable[[], float]
) -> SubmissionRecord:
    while record.step not in _WAITED:
        try:
            moved = await advance(journal, api, record, clock())
        except SubmissionError as exc:
            if not exc.retryable:
                raise
            logger.warning("submission %s: %s (tried again)", record.submission_id, exc)
            # As saved: a create that raised may have marked it first (create_started_at).
            return journal.read(record.submission_id)
        if moved.step == record.step:  # polled, still running
            return moved
        record = moved
    return record


# --------------------------------------------------------------------------- collect


@dataclass
class CollectedRows:
    """A chunk of a submission's rows, for one commit."""

    samples: list[SampleRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples) + len(self.failures)


async def collect(
    journal: Journal,
    api: SubmissionApi,
    record: SubmissionRecord,
    ctx: RunContext,
    teacher_for: Callable[[SubmissionItem], TeacherConfig],
    done: Container[str],
    chunk_rows: int = CHUNK_ROWS,
) -> AsyncGenerator[CollectedRows]:
    """The rows of an ended submission, ``chunk_rows`` at a time.

    Each result becomes the row its online answer would (``Delivered("batch", id)``: the
    batch price); every request the provider returned nothing for becomes a failure row of
    :attr:`SubmissionStatus.unreturned_class` (``expired``, ``canceled``, ``errored``).
    Ids in ``done`` — committed by an earlier collection of this submission that stopped
    before the record was marked ``collected`` — are skipped. ``teacher_for`` gives an
    item's teacher with its sample's parameters (the flow's ``router.asked``): its sample
    id must be the item's, or the job changed since the submission was made
    (:class:`JournalError`).

    Memory: one chunk of rows, the item index (:meth:`Journal.lookup`) and a byte per
    request; results are streamed. The caller commits each chunk before asking for the
    next, then calls ``journal.advance(record, "collected")``; one that stops early closes
    the generator (``contextlib.aclosing``) to give the download's connection back.
    """
    batch_id = record.provider_batch_id
    if record.step != "ended" or batch_id is None:
        raise JournalError(
            f"{journal.record_location(record.submission_id)}: at {record.step}, not ended"
        )
    status = await api.status(batch_id)
    unreturned = status.unreturned_class or "errored"
    started = record.timestamps["created"]
    latency_ms = (record.timestamps["ended"] - started).total_seconds() * 1000.0
    delivered = Delivered("batch", batch_id)
    where = journal.items_location(record.submission_id)

    chunk = CollectedRows()

    def add(item: SubmissionItem, outcome: Outcome) -> CollectedRows | None:
        """Put ``item``'s row in the chunk; the chunk, once full."""
        nonlocal chunk
        made = (ctx, item.prompt(), teacher_for(item), item.sample_index, outcome, delivered)
        row: SampleRow | FailureRow
        if outcome.completion is not None:
            row = sample_row(*made)
            chunk.samples.append(row)
        else:
            row = failure_row(*made)
            chunk.failures.append(row)
        if row["sample_id"] != item.custom_id:
            raise JournalError(
                f"{where}: item {item.custom_id}: teacher {item.teacher!r} is not as it was "
                "when the submission was made (its sample id differs)"
            )
        row["route"], row["route_step"] = item.route, item.route_step
        if len(chunk) < chunk_rows:
            return None
        full, chunk = chunk, CollectedRows()
        return full

    def outcome_of(
        item: SubmissionItem,
        completion: Completion | None,
        failure: Failure | None,
        statuses: list[str],
    ) -> Outcome:
        return Outcome(
            completion,
            failure,
            attempts=1,
            attempt_statuses=statuses,
            request_hash=item.request_hash,
            latency_ms=latency_ms,
            started_at=started,
        )

    with journal.lookup(record.submission_id) as lookup:
        seen = np.zeros(len(lookup), dtype=np.bool_)
        async with aclosing(api.results(batch_id)) as results:
            async for result in results:
                at = lookup.position(result.custom_id)
                if at is None or seen[at]:
                    logger.warning(
                        "submission %s: batch %s returned %s %s: skipped",
                        record.submission_id,
                        batch_id,
                        "an unknown request" if at is None else "twice the request",
                        result.custom_id,
                    )
                    continue
                seen[at] = True
                if result.custom_id in done:
                    continue
                item = lookup[result.custom_id]
                completion, failure, statuses = _answer(result)
                if full := add(item, outcome_of(item, completion, failure, statuses)):
                    yield full
        message = f"the provider returned no result: the submission ended {status.raw_state}"
        lost = Failure(unreturned, message, None)
        # Every request returned (the usual end): no second read of the items file.
        missing = journal.items_of(record.submission_id) if not seen.all() else iter(())
        for item in missing:
            at = lookup.position(item.custom_id)
            if at is None or seen[at] or item.custom_id in done:
                continue
            seen[at] = True
            if full := add(item, outcome_of(item, None, lost, [unreturned])):
                yield full
    if len(chunk):
        yield chunk


def _answer(result: SubmissionResult) -> tuple[Completion | None, Failure | None, list[str]]:
    """A result's completion or failure (as online would class it), and its one status."""
    statuses = [str(result.http_status)] if result.http_status else [result.error_class or "error"]
    if result.completion is not None:
        return result.completion, None, statuses
    error_class = result.error_class or "errored"
    return None, Failure(error_class, result.message or error_class, result.http_status), statuses
