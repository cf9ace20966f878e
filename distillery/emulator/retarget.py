"""Point a whole job at an in-process emulator: a dry run of any job file.

Every teacher keeps its provider, model and parameters; only where requests go changes (and no
key is sent). Used by ``distillery run --emulator`` and the deployment flow's ``emulator``
parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distillery.config import JobConfig, TeacherConfig
from distillery.emulator.options import EmulatorOptions
from distillery.emulator.runner import RunningEmulator


@contextmanager
def emulated(
    job: JobConfig, options: EmulatorOptions | None = None
) -> Iterator[tuple[JobConfig, str]]:
    """Yield (the job retargeted at a running emulator, the emulator's URL)."""
    from distillery.generators.providers.registry import get_provider

    with RunningEmulator(options or EmulatorOptions()) as emulator:

        def retarget(teacher: TeacherConfig) -> TeacherConfig:
            base = emulator.url + get_provider(teacher.provider).emulator_path
            return teacher.model_copy(update={"base_url": base, "api_key_env": None})

        yield job.model_copy(update={"teachers": [retarget(t) for t in job.teachers]}), emulator.url
