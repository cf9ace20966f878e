"""The ``distillery`` command's entry point: SIGTERM is a Ctrl-C from the first instant.

Importing the command line (typer, rich, pydantic, the job model) takes a noticeable part of a
second, and a SIGTERM then — a supervisor stopping a process that has just started — would end
it with no word. While the command line is imported a SIGTERM or Ctrl-C is only noted, and the
command ends right after with one line and 130: an exception raised at an arbitrary instant of
an import can land inside code that ``exec`` builds from a string (dataclasses, pydantic), after
which CPython ends the process by SIGINT (-2) whatever exit code was asked for. From then on
SIGTERM raises KeyboardInterrupt like Ctrl-C, so whatever was started is unwound and the exit
is one line and 130; ``distillery run`` then hands both signals to the run's graceful stop
(``flows/signals.py``).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_noted: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.append(signum)


def _interrupted() -> None:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)


def main() -> None:
    previous = {sig: signal.signal(sig, _note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        from distillery.cli import main as cli_main
        from distillery.flows import signals  # noqa: F401  # light; `run` takes SIGTERM with it
    finally:
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    if _noted:
        _interrupted()
    try:
        cli_main()
    except KeyboardInterrupt:
        _interrupted()
