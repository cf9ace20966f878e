"""Which teachers a prompt goes to, and with which parameters each of its samples is asked.

Everything here is a pure function of the job and the prompt id, never of the run, the file
order or what happened before: a resumed run, or a later run over the same prompts, routes
each prompt exactly as the first did, so the sample ids it plans are the ones already stored
and nothing is bought twice.

A prompt's *route* is a chain of teachers. ``all`` gives every teacher its own one-step chain;
``split`` picks one teacher by weight (followed by the others when ``fallback`` is on);
``fallback`` chains the teachers in the job's order. Only the chain's first step is planned;
the batch moves to the next step when a request fails for good, or the teacher's budget is
spent, or it proved unusable (``WorkItem.fallback``).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

from distillery.config import JobConfig, RoutingConfig, TeacherConfig


def unit_interval(prompt_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the prompt id and the routing seed (blake2b, so
    unlike ``hash()`` the same in every process and Python version)."""
    digest = hashlib.blake2b(f"{seed}\x00{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_choice(prompt_id: str, names: Sequence[str], weights: Sequence[float], seed: int) -> int:
    """Index of the teacher a prompt goes to: teacher ``i`` with probability
    ``weights[i] / sum(weights)``, independently per prompt."""
    bounds = list(accumulate(weights))
    point = unit_interval(prompt_id, seed) * bounds[-1]
    # bisect_right skips zero-weight teachers: their bound equals the previous one.
    return min(bisect_right(bounds, point), len(names) - 1)


def sample_teacher(
    teacher: TeacherConfig, index: int, temperatures: Sequence[float] | None
) -> TeacherConfig:
    """The teacher as sample ``index`` asks it: seed ``params.seed (or 0) + index`` and, with a
    schedule, ``temperatures[index % len]``.

    Sample 0 keeps the teacher's own seed, so raising ``n`` on an existing run buys only the
    new indices (sample 0's id is unchanged). The parameters are part of the sample id and of
    the ``params`` column, so each sample records exactly what it was asked with.
    """
    update: dict[str, float | int] = {}
    if index > 0:
        update["seed"] = (teacher.params.seed or 0) + index
    if temperatures:
        update["temperature"] = temperatures[index % len(temperatures)]
    if not update:
        return teacher
    return teacher.model_copy(update={"params": teacher.params.model_copy(update=update)})


class Router:
    """The chains of one job: ``chains(prompt_id)`` lists, per chain, its teachers in order."""

    def __init__(self, job: JobConfig) -> None:
        self.config: RoutingConfig = job.routing
        self.teachers = list(job.teachers)
        self.n = job.n
        self.temperatures = job.temperatures
        names = [t.name for t in self.teachers]
        weights = self.config.weights
        self._weights = [
            1.0 if weights is None else float(weights.get(name, 0.0)) for name in names
        ]
        self._names = names
        # One TeacherConfig per (teacher, sample index), shared by every prompt.
        self._asked = {
            (t.name, i): sample_teacher(t, i, self.temperatures)
            for t in self.teachers
            for i in range(self.n)
        }

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def chains_per_prompt(self) -> int:
        """Requests planned per prompt (first steps only): what a complete run answers."""
        return self.n * (len(self.teachers) if self.mode == "all" else 1)

    def chains(self, prompt_id: str) -> list[list[TeacherConfig]]:
        """Per chain of ``prompt_id`` (before sample indices), its teachers in order."""
        if self.mode == "all":
            return [[t] for t in self.teachers]
        if self.mode == "fallback":
            return [list(self.teachers)]
        chosen = split_choice(prompt_id, self._names, self._weights, self.config.seed)
        first = self.teachers[chosen]
        if not self.config.fallback:
            return [[first]]
        return [[first, *(t for t in self.teachers if t is not first)]]

    def asked(self, teacher: TeacherConfig, index: int) -> TeacherConfig:
        """The teacher with sample ``index``'s parameters."""
        return self._asked[(teacher.name, index)]
