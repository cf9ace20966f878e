"""A run resumed with a changed job is refused, naming what changed.

Sample ids hash the prompt id, the teacher's name, model and parameters and the sample index
(``generators/records.py``), but not the prompt's wording, the filters or the routing. A run
id reused after such a change used to be accepted silently: it bought answers to the new job,
mixed them with the old one's, and dedup then reported them as duplicates. Each run record
keeps the job's shape (:meth:`~distillery.config.JobConfig.shape`); a resume compares with the
latest one and stops, unless told to go on (``--allow-changed-job``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from distillery.config import JobConfig
from distillery.errors import UserInputError
from distillery.storage.location import Location
from distillery.storage.shards import read_column

_SHOWN = 3


def recorded_shape(output: Location, run_id: str) -> dict[str, Any] | None:
    """The shape of the job of the run's latest recorded invocation (None: none recorded,
    or only by versions before shapes were kept)."""
    shapes = read_column(output, "runs", run_id, "job_shape")
    ended = read_column(output, "runs", run_id, "ended_at")
    latest = max(
        ((end, shape) for end, shape in zip(ended, shapes, strict=True) if shape),
        key=lambda pair: pair[0] or datetime.min,
        default=None,
    )
    if latest is None:
        return None
    loaded = json.loads(latest[1])
    return loaded if isinstance(loaded, dict) else None


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """``path: old -> new`` for every leaf that differs (dicts compared key by key)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            where = f"{path}.{key}" if path else str(key)
            found += differences(before.get(key), after.get(key), where)
        return found
    if before == after:
        return []
    return [f"{path}: {json.dumps(before)} -> {json.dumps(after)}"]


def refuse_changed_job(output: Location, run_id: str, job: JobConfig) -> None:
    """UserInputError naming what changed if ``job`` is not the job the run was started with."""
    before = recorded_shape(output, run_id)
    if before is None:
        return
    changed = differences(before, job.shape())
    if not changed:
        return
    shown = "; ".join(changed[:_SHOWN]) + (
        f"; and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
    )
    raise UserInputError(
        f"run {run_id} was started with another job ({shown}): resume it with the job it "
        "was started with, use another --run-id, or pass --allow-changed-job to go on under "
        "this one"
    )
