"""A hook for whoever is watching a run in this process (the CLI's progress bar).

Flow parameters travel to the Prefect API as JSON, so a callback can not be one. The CLI installs
a listener here before it calls the flow; under a Prefect worker none is installed and the hook
costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # at run time this module is light: the CLI imports it to take SIGTERM early
    from distillery.generators.batch import WorkItem
    from distillery.generators.client import Outcome


class RunListener(Protocol):
    def planned(self, total: int, skipped: int) -> None:
        """The run knows how many requests it will send, and how many were done before."""

    def outcome(self, item: WorkItem, outcome: Outcome | None) -> None:
        """One request ended (``None``: not sent because the run is stopping)."""

    def advanced(self, requests: int, failed: int) -> None:
        """Requests that ended in another process (a Dask worker), told when their batch ends."""

    def watching(self, in_flight: Callable[[], tuple[int, float]]) -> None:
        """How to ask what is out now: (requests, seconds the longest has been out)."""


_listener: RunListener | None = None


def set_listener(listener: RunListener | None) -> None:
    global _listener
    _listener = listener


def get_listener() -> RunListener | None:
    return _listener


class StopSwitch:
    """A graceful stop for runs in this process: the first Ctrl-C or SIGTERM flips it.

    Flipping it stops new requests; answers in flight are awaited, spooled and committed.
    ``notify`` callbacks tell a watcher (the CLI prints one line).
    """

    def __init__(self) -> None:
        self.requested = False
        self.notify: list[Callable[[], None]] = []

    def request(self) -> None:
        if not self.requested:
            self.requested = True
            for callback in list(self.notify):
                callback()


STOP = StopSwitch()
