"""The run's progress on the terminal: done/total, requests/s, failures, and what it waits for.

On a terminal, a live bar. The end of a run often waits on a few slow requests while the bar's
ETA says seconds, so the bar also says what is out ("3 out, longest 4m10s"). Written to a file
or a pipe (a scheduled run's log), a bar draws nothing useful: then one plain line every
:data:`LOG_EVERY_S` seconds and one at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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

LOG_EVERY_S = 30.0
# A request out this long is named in yellow: the run is waiting on it, not working.
SLOW_S = 30.0


def duration(seconds: float) -> str:
    """``45s``, ``4m10s``, ``1h02m``: short enough for a progress line."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def waiting(in_flight: tuple[int, float]) -> str:
    """What is out: ``3 out, longest 4m10s`` (empty when nothing is)."""
    count, longest = in_flight
    return f"{count} out, longest {duration(longest)}" if count else ""


class ProgressBar:
    """A :class:`~distillery.flows.progress.RunListener` drawing a rich progress bar, or
    logging plain lines where there is no terminal."""

    def __init__(self, console: Console, log_every_s: float = LOG_EVERY_S) -> None:
        self._console = console
        self._live = console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]generating"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>6.1f}/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[waiting]}"),
            console=console,
            transient=False,
            disable=not self._live,
        )
        self._task: TaskID | None = None
        self._total = 0
        self._failed = 0
        self._done = 0
        self._started = time.perf_counter()
        self._in_flight: Callable[[], tuple[int, float]] = lambda: (0, 0.0)
        self._log_every_s = log_every_s
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._progress.stop()
        if not self._live and self._task is not None:
            self._console.print(self.line(), highlight=False)

    def planned(self, total: int, skipped: int) -> None:
        self._started = time.perf_counter()
        self._total += total
        if self._task is None:
            self._task = self._progress.add_task("run", total=total, rate=0.0, failed=0, waiting="")
        else:  # a recipe's later stage
            self._progress.update(self._task, total=self._total)

    def watching(self, in_flight: Callable[[], tuple[int, float]]) -> None:
        self._in_flight = in_flight

    def outcome(self, item: WorkItem, outcome: Outcome | None) -> None:
        self.advanced(1, int(outcome is not None and outcome.failure is not None))

    def advanced(self, requests: int, failed: int) -> None:
        if self._task is None:
            return
        self._done += requests
        self._failed += failed
        self._progress.update(self._task, advance=requests, rate=self._rate(), failed=self._failed)

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self._done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The plain progress line of a log file."""
        text = (
            f"generating {self._done}/{self._total}, {self._rate():.1f} requests/s, "
            f"{self._failed} failed, {duration(time.perf_counter() - self._started)} elapsed"
        )
        out = waiting(self._in_flight())
        return f"{text}; {out}" if out else text

    def _tick(self) -> None:
        """Once a second on a terminal, refresh what is out; elsewhere a line now and then."""
        last_line = time.perf_counter()
        while not self._stop.wait(1.0):
            if self._task is None:
                continue
            if self._live:
                count, longest = self._in_flight()
                out = waiting((count, longest))
                shown = f"[yellow]{out}[/]" if out and longest >= SLOW_S else out
                self._progress.update(self._task, waiting=shown)
            elif time.perf_counter() - last_line >= self._log_every_s:
                last_line = time.perf_counter()
                self._console.print(self.line(), highlight=False)
