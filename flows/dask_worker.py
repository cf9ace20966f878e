"""The Dask side of a run: what a worker process keeps between the batches it is given.

A batch sent to a Dask worker travels as plain, picklable values (the run's job, its lineage
context, the batch's prompts). The teacher clients can not travel — connections, semaphores
and the limiters' sliding windows belong to one process and one event loop — and must not be
rebuilt per batch either: a limiter that forgot its window at every batch would burst past the
limit. So each worker process builds one :class:`TeacherPool` per run, lazily, when the run's
first batch lands there, and reuses it for every later batch of that run.

prefect-dask runs an ``async`` task under ``asyncio.run``: a new event loop per task, which a
pool could not outlive. The task here is therefore synchronous: it hands its batch to one event
loop this process runs in a background thread for all runs, and waits. While it waits it polls
the run's stop event (a Dask :class:`distributed.Event` the flow sets on Ctrl-C), so a stop
reaches batches already running on other processes, even other machines: no new requests are
sent, answers in flight land, are spooled and committed, and the batch ends early.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, replace
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from distillery.config import JobConfig
from distillery.flows.batches import BatchSummary, current_ids, open_pool, send_and_commit
from distillery.flows.progress import StopSwitch
from distillery.generators.batch import Batch, TeacherPool
from distillery.generators.curation.apply import Curator, build_curator
from distillery.generators.records import RunContext
from distillery.generators.structured import build_structured
from distillery.storage.location import Location, as_location

#: How often a waiting batch asks the scheduler whether the run was stopped.
STOP_POLL_S = 0.25


@dataclass(frozen=True)
class WorkerRun:
    """What a worker needs to build its share of a run (sent with every batch).

    ``job`` is already this process's share (see ``flows/dask_runner.py``); ``key`` is unique
    per invocation, so resuming a run on a long-lived cluster never reuses a stopped pool.
    """

    key: str
    job: JobConfig
    stop_event: str


@dataclass
class _Open:
    pool: TeacherPool
    curator: Curator
    output: Location
    stop: StopSwitch


_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
# Touched only on the process loop, so no lock is needed beyond the one opening runs.
_runs: dict[str, _Open] = {}
_opening: asyncio.Lock | None = None


def _process_loop() -> asyncio.AbstractEventLoop:
    """This process's batch loop, started on first use and kept until the process ends."""
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            _thread = threading.Thread(
                target=loop.run_forever, name="distillery-batches", daemon=True
            )
            _thread.start()
            _loop = loop
        return _loop


async def _open_run(run: WorkerRun, ctx: RunContext) -> _Open:
    """The run's pool in this process, built by the first batch that needs it."""
    global _opening
    if _opening is None:
        _opening = asyncio.Lock()
    async with _opening:
        opened = _runs.get(run.key)
        if opened is None:
            job = run.job
            stop = StopSwitch()
            structured = build_structured(job.response_schema)
            pool = await open_pool(
                job, ctx.teachers, stop=lambda: stop.requested, structured=structured
            )
            curator = build_curator(job.curation, structured)
            opened = _Open(pool, curator, as_location(job.output), stop)
            _runs[run.key] = opened
        return opened


async def _batch(
    run: WorkerRun,
    index: int,
    batch: Batch,
    ctx: RunContext,
    part: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> BatchSummary:
    opened = await _open_run(run, ctx)
    return await send_and_commit(
        index, batch.items, opened.pool, ctx, opened.output, part, opened.curator, logger
    )


def _stop(key: str) -> None:
    opened = _runs.get(key)
    if opened is not None:
        opened.stop.request()


@task(name="generate-batch", task_run_name="{label}", cache_policy=NO_CACHE)
def generate_batch_on_worker(
    label: str, index: int, batch: Batch, run: WorkerRun, ctx: RunContext, part: int
) -> BatchSummary:
    """Send one batch from this worker process's pool; commit its shards before returning."""
    import distributed

    logger = get_run_logger()
    ctx = replace(ctx, task_run_id=current_ids()[1])
    loop = _process_loop()
    # The coroutine runs in a copy of this thread's context (Prefect's settings and run
    # context included), taken when it is scheduled.
    future = asyncio.run_coroutine_threadsafe(_batch(run, index, batch, ctx, part, logger), loop)
    stop = distributed.Event(run.stop_event)  # type: ignore[no-untyped-call]
    stopping = False
    while True:
        try:
            return future.result(timeout=STOP_POLL_S)
        except concurrent.futures.TimeoutError:
            if not stopping and stop.is_set():  # type: ignore[no-untyped-call]
                stopping = True
                loop.call_soon_threadsafe(_stop, run.key)


def ignore_interrupts() -> bool:
    """Leave Ctrl-C to the flow (run on each worker of a local cluster when it starts).

    A terminal sends SIGINT to its whole process group, a local cluster's workers included;
    a worker dying there would drop its batches' answers in flight. The flow's first Ctrl-C
    stops the workers through the run's stop event instead, and the cluster ends with the flow.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return True


async def _close(key: str) -> bool:
    """Close the run's pool; True when no run is left on this process's loop."""
    opened = _runs.pop(key, None)
    if opened is not None:
        await opened.pool.__aexit__(None, None, None)
    if not _runs:
        await asyncio.get_running_loop().shutdown_default_executor()
    return not _runs


def close_run(key: str) -> None:
    """Close the run's connections in this process (run on every worker at the end of a run),
    and the batch loop with them when no other run uses it, so the worker exits promptly."""
    global _loop, _thread
    with _lock:
        loop, thread = _loop, _thread
        if loop is None or thread is None:
            return
        idle = False
        with contextlib.suppress(Exception):
            idle = asyncio.run_coroutine_threadsafe(_close(key), loop).result(timeout=30)
        if idle:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            _loop = _thread = None
