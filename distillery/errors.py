"""Errors a user can see, and the exit code each maps to.

::

    DistilleryError                 base: carries a one-line message and an exit code
    ├── UserInputError   (exit 2)   the config, a prompt file or a command-line value is wrong
    │   └── ConfigError             a config field or an environment variable it names
    ├── FatalRunError    (exit 1)   the run cannot go on (bad API key, output unwritable, ...)
    │   └── OutputUnwritable        a disk error mid-run (full, read-only, quota); resumable
    ├── RunInterruptedError (130)   stopped by Ctrl-C / SIGTERM; the same command with the run id
    │                               resumes it
    └── RunWaitingError   (75)      provider submissions are still open; the same command later
                                    collects them (75 is sysexits' EX_TEMPFAIL: try again later)

Provider-level failures of one request are *not* exceptions at this level: they become failure
rows (``storage.schema.FAILURE_SCHEMA``) and the run goes on. Only what makes every further
request pointless is raised as :class:`FatalRunError`.

Messages never contain secrets: an API key is named by the environment variable that holds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class DistilleryError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class UserInputError(DistilleryError):
    """Something the user supplied is wrong; nothing was sent or written because of it."""

    exit_code = 2


class ConfigError(UserInputError):
    """A config field, or the environment variable a field names, is missing or invalid."""


class FatalRunError(DistilleryError):
    """The run has to stop: further requests would all fail the same way."""

    exit_code = 1


class OutputUnwritable(FatalRunError):
    """The output (or the spool) stopped taking writes mid-run: a full disk, a file-size or
    quota limit, a directory made read-only. Requests stop; what was committed or spooled
    before stays, and the same command with the run id resumes the run."""

    def __init__(self, where: str, run_id: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc) or type(exc).__name__
        super().__init__(
            f"cannot write {exc.filename or where} ({reason}); answers received so far are "
            f"kept: fix that and run the same command with --run-id {run_id} to resume"
        )


@contextlib.contextmanager
def output_errors(where: str, run_id: str) -> Iterator[None]:
    """Inside the block, an ``OSError`` (the disk refusing a write) is :class:`OutputUnwritable`."""
    try:
        yield
    except OSError as exc:
        raise OutputUnwritable(where, run_id, exc) from exc


class RunInterruptedError(DistilleryError):
    """The user stopped the run; what was received is kept and the run can be resumed."""

    exit_code = 130


class RunWaitingError(DistilleryError):
    """The run did all it could now; its provider submissions (``delivery: batch``) end later
    and the same command collects them. Not a failure, not done: a script loops on 75."""

    exit_code = 75


class UserInputErrors(UserInputError):
    """Several problems with what the user supplied, found in one pass: each is one line, so
    a job file is fixed in one round rather than one error per attempt."""

    def __init__(self, problems: list[UserInputError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
