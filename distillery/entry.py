"""The ``distillery`` command's entry point: SIGTERM is a Ctrl-C from the first instant.

Importing the command line (typer, rich, pydantic, the job model) takes a noticeable part of a
second, and a SIGTERM then — a supervisor stopping a process that has just started — would end
it with no word. From here on it raises KeyboardInterrupt like Ctrl-C, so whatever was started
is unwound and the exit is one line and 130; ``distillery run`` then hands both signals to the
run's graceful stop (``flows/signals.py``).
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        from distillery.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
