"""Point a whole job at an in-process emulator: a dry run of any job file.

Every teacher — the judge's too — keeps its provider, model and parameters; only where requests
go changes (and no key is sent), so a dry run never reaches a real API. Used by
``distillery run --emulator`` and the deployment flow's ``emulator`` parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distillery.config import JobConfig, TeacherConfig
from distillery.emulator.formats import wire_formats
from distillery.emulator.options import EmulatorOptions
from distillery.emulator.runner import RunningEmulator
from distillery.generators.providers.registry import get_provider


def base_url(url: str, provider: str) -> str:
    """The ``base_url`` a teacher of ``provider`` needs to reach the emulator at ``url``: the
    root plus where its wire format is mounted (OpenAI's SDKs expect ``/v1``)."""
    return url + wire_formats()[get_provider(provider).wire_format].mount


@contextmanager
def emulated(
    job: JobConfig, options: EmulatorOptions | None = None
) -> Iterator[tuple[JobConfig, str]]:
    """Yield (the job retargeted at a running emulator, the emulator's URL).

    The emulator's batch APIs end a submission in ``batch_seconds`` rather than a day, so a
    batch teacher polls it at a tenth of that (0.2 s at least) instead of every minute."""
    options = options or EmulatorOptions()
    with RunningEmulator(options) as emulator:

        def retarget(teacher: TeacherConfig) -> TeacherConfig:
            base = base_url(emulator.url, teacher.provider)
            update: dict[str, object] = {"base_url": base, "api_key_env": None}
            if teacher.delivery == "batch":
                submissions = teacher.submission_options
                poll_s = min(submissions.poll_interval_s, max(0.2, options.batch_seconds / 10))
                update["submissions"] = submissions.model_copy(update={"poll_interval_s": poll_s})
            return teacher.model_copy(update=update)

        update: dict[str, object] = {"teachers": [retarget(t) for t in job.teachers]}
        judge = job.curation.judge
        if judge is not None:
            judge = judge.model_copy(update={"teacher": retarget(judge.teacher)})
            update["curation"] = job.curation.model_copy(update={"judge": judge})
        yield job.model_copy(update=update), emulator.url
