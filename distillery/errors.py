"""Errors a user can see, and the exit code each maps to.

::

    DistilleryError                 base: carries a one-line message and an exit code
    ├── UserInputError   (exit 2)   the config, a prompt file or a command-line value is wrong
    │   └── ConfigError             a config field or an environment variable it names
    ├── FatalRunError    (exit 1)   the run cannot go on (bad API key, output unwritable, ...)
    └── RunInterruptedError (130)   stopped by Ctrl-C / SIGTERM; the same command with the run id
                                    resumes it

Provider-level failures of one request are *not* exceptions at this level: they become failure
rows (``storage.schema.FAILURE_SCHEMA``) and the run goes on. Only what makes every further
request pointless is raised as :class:`FatalRunError`.

Messages never contain secrets: an API key is named by the environment variable that holds it.
"""

from __future__ import annotations


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


class RunInterruptedError(DistilleryError):
    """The user stopped the run; what was received is kept and the run can be resumed."""

    exit_code = 130
