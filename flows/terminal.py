"""The run's progress bar on the terminal: done/total, requests/s, failures."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from distillery.generators.batch import WorkItem
from distillery.generators.client import Outcome


class ProgressBar:
    """A :class:`~distillery.flows.progress.RunListener` drawing a rich progress bar."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]generating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>7.1f} req/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._failed = 0
        self._done = 0
        self._started = time.perf_counter()

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def planned(self, total: int, skipped: int) -> None:
        self._started = time.perf_counter()
        self._task = self._progress.add_task("run", total=total, rate=0.0, failed=0)

    def outcome(self, item: WorkItem, outcome: Outcome | None) -> None:
        self.advanced(1, int(outcome is not None and outcome.failure is not None))

    def advanced(self, requests: int, failed: int) -> None:
        if self._task is None:
            return
        self._done += requests
        self._failed += failed
        elapsed = time.perf_counter() - self._started
        self._progress.update(
            self._task,
            advance=requests,
            rate=self._done / elapsed if elapsed > 0 else 0.0,
            failed=self._failed,
        )
