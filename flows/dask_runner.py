"""The flow's side of ``task_runner: {type: dask}``: a Dask cluster, each process's share, stop.

Batches go to the cluster through prefect-dask's ``DaskTaskRunner`` (a temporary
``LocalCluster`` of ``workers`` processes, or the scheduler at ``address``), one Prefect task
run per batch as with the thread runner. Every worker process holds its own teacher clients
(:mod:`distillery.flows.dask_worker`), so what a teacher allows is divided between them:

- ``concurrency``: ``concurrency // processes`` per process (at least 1);
- ``rpm``/``tpm`` with ``limits.shared``: held by the Prefect server for every process (leased
  in blocks, ``flows/shared_limits.py``); without it, split evenly, which is exact for a local
  cluster (its size is fixed) and is why a remote cluster, which can grow, requires ``shared``
  (``config.py``). The judge's limits are always split (they are never shared).

Splitting rather than requiring ``shared`` everywhere keeps a local cluster free of Prefect
round trips per block and needs no server-side limits at all. Its cost: a process that runs out
of batches leaves its share unused, so the run's tail is slower than the limit allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from distillery.config import JobConfig, TaskRunnerConfig, TeacherConfig
from distillery.errors import ConfigError, FatalRunError
from distillery.flows.batches import BatchSummary, batch_label
from distillery.flows.dask_worker import (
    WorkerRun,
    close_run,
    generate_batch_on_worker,
    ignore_interrupts,
)
from distillery.generators.batch import Batch, WorkItem
from distillery.generators.records import RunContext

#: How long a remote scheduler may take to have a worker before the run gives up.
WORKER_WAIT_S = 60.0


def dask_task_runner(config: TaskRunnerConfig) -> Any:
    """prefect-dask's runner for ``config``, or a one-line error naming the extra to install."""
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "task_runner.type: dask needs prefect-dask: pip install 'distillery[dask]'"
        ) from None
    if config.address is not None:
        return DaskTaskRunner(address=config.address)
    # A temporary cluster's scheduler runs in this process; its INFO chatter (workers
    # registering, clients connecting) is not the user's business.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": config.workers,
            "threads_per_worker": config.threads_per_worker,
            "processes": True,
            "dashboard_address": ":0",
            "silence_logs": logging.WARNING,
        }
    )


def _share(teacher: TeacherConfig, processes: int, split_limits: bool) -> TeacherConfig:
    update: dict[str, Any] = {"concurrency": max(1, teacher.concurrency // processes)}
    limits = teacher.limits
    if split_limits and (limits.rpm is not None or limits.tpm is not None):
        update["limits"] = limits.model_copy(
            update={
                "rpm": limits.rpm / processes if limits.rpm is not None else None,
                "tpm": limits.tpm / processes if limits.tpm is not None else None,
            }
        )
    return teacher.model_copy(update=update)


def process_share(job: JobConfig, processes: int) -> JobConfig:
    """``job`` as one of ``processes`` worker processes must run it (see the module doc)."""
    teachers = [_share(t, processes, not t.limits.shared) for t in job.teachers]
    curation = job.curation
    if curation.judge is not None:
        judge = curation.judge.model_copy(
            update={"teacher": _share(curation.judge.teacher, processes, True)}
        )
        curation = curation.model_copy(update={"judge": judge})
    return job.model_copy(update={"teachers": teachers, "curation": curation})


class DaskBatches:
    """A Dask cluster for one invocation of a run: submit batches, stop them, close it."""

    def __init__(self, job: JobConfig, run_id: str) -> None:
        self._job = job
        self._runner = dask_task_runner(job.task_runner)
        self._key = f"{run_id}-{uuid.uuid4().hex[:8]}"
        self.processes = 0
        self._run: WorkerRun | None = None

    async def __aenter__(self) -> DaskBatches:
        # Starting a local cluster blocks for seconds: not on the flow's event loop.
        await asyncio.to_thread(self._start)
        return self

    def _start(self) -> None:
        config = self._job.task_runner
        self._runner.__enter__()
        try:
            client = self._runner.client
        except (OSError, TimeoutError) as exc:
            self._runner.__exit__(None, None, None)
            where = config.address or "a local cluster"
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise FatalRunError(
                f"task_runner: cannot start or reach {where}: {first_line}"
            ) from None
        if config.address is not None:
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except TimeoutError:
                self._runner.__exit__(None, None, None)
                raise FatalRunError(
                    f"task_runner.address {config.address}: no Dask worker joined within "
                    f"{WORKER_WAIT_S:.0f}s (start some with: dask worker {config.address})"
                ) from None
            self.processes = len(client.nthreads())
        else:
            self.processes = config.workers
            client.run(ignore_interrupts)
        self._run = WorkerRun(
            self._key, process_share(self._job, self.processes), f"distillery-stop-{self._key}"
        )

    async def submit(
        self, index: int, items: list[WorkItem], ctx: RunContext, part: int
    ) -> BatchSummary:
        """Run one batch on the cluster; its summary once its shards are committed."""
        parameters = {
            "label": batch_label(index, items),
            "index": index,
            "batch": Batch(items),
            "run": self._run,
            "ctx": ctx,
            "part": part,
        }

        def submit_and_wait() -> BatchSummary:
            # Submitting pickles the task and the flow's context (~1 s under load): off the
            # event loop, in a copy of its context (``to_thread`` copies it).
            future = self._runner.submit(generate_batch_on_worker, parameters=parameters)
            result: BatchSummary = future.result()
            return result

        return await asyncio.to_thread(submit_and_wait)

    async def stop(self) -> None:
        """Tell every worker to send nothing more for this run (answers in flight still land)."""
        await asyncio.to_thread(self._set_stop)

    def _set_stop(self) -> None:
        import distributed

        assert self._run is not None
        event = distributed.Event(self._run.stop_event, client=self._runner.client)  # type: ignore[no-untyped-call]
        event.set()  # type: ignore[no-untyped-call]

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.client.run(close_run, self._key)
        self._runner.__exit__(None, None, None)
