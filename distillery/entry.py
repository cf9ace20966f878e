"""The ``distillery`` command's entry point: SIGTERM is a Ctrl-C from the first instant.

Importing the command line (typer, rich, pydantic, the job model) takes a noticeable part of a
second, and a SIGTERM then — a supervisor stopping a process that has just started — would end
it with no word. Until a command starts (:func:`arm`), a SIGTERM or Ctrl-C is only noted, and
the command ends as it starts with one line and 130: an exception raised at an arbitrary
instant of an import can land inside code that ``exec`` builds from a string (dataclasses,
pydantic), after which CPython ends the process by SIGINT (-2) whatever exit code was asked
for, and one raised while Typer parses the command line becomes a silent exit 130. From then
on SIGTERM raises KeyboardInterrupt like Ctrl-C, so whatever was started is unwound and the exit
is one line and 130; ``distillery run`` then hands both signals to the run's graceful stop
(``flows/signals.py``). An exit caused by such an exception is ``os._exit(130)`` once the line
is written and the streams flushed (every context manager has unwound by then): CPython's
own exit could still turn into a SIGINT death for the reason above.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn

_noted: list[int] = []
_entered = False


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.append(signum)


class Interrupted(BaseException):  # it is what happened, not an error
    """A KeyboardInterrupt raised inside a command, carried past Typer (which would exit 130
    without a word) to :func:`main`."""


def _interrupted() -> NoReturn:
    sys.stderr.write("error: interrupted\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def arm() -> None:
    """Called as a command starts (after Typer has parsed its line, where an interrupt would
    have become a silent exit 130): a signal noted so far interrupts now, and from here on
    SIGTERM and Ctrl-C raise KeyboardInterrupt. Does nothing outside :func:`main` (a test
    invoking the app in its own process keeps its handlers)."""
    if not _entered:
        return
    if _noted:
        raise Interrupted
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def disarm() -> None:
    """Called as a command ends, whatever its ending: a signal after it only is noted (one
    raised while Typer handles the ending would turn the command's exit code into a silent
    130)."""
    if _entered:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _note)


def main() -> None:
    global _entered
    _entered = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)
    try:
        from distillery.cli import main as cli_main
        from distillery.flows import signals  # noqa: F401  # light; `run` takes SIGTERM with it

        cli_main()
    except (KeyboardInterrupt, Interrupted):
        _interrupted()
