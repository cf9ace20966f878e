"""Generation recipes: how a job's prompts become samples (docs/recipes.md).

Without a ``recipe:`` block every prompt is answered once by every teacher (:class:`PlainRecipe`).
Each recipe is one module registering its class under its ``type`` (:func:`.base.register`);
importing this package imports them all, and :func:`build_recipe` picks one from the job.
"""

from __future__ import annotations

from distillery.config import JobConfig
from distillery.generators.recipes import conversation, evol_instruct, self_instruct
from distillery.generators.recipes.base import (
    RECIPES,
    PlainRecipe,
    Recipe,
    Stage,
    StageRows,
    register,
    stage_reader,
)

__all__ = [
    "RECIPES",
    "Recipe",
    "Stage",
    "StageRows",
    "build_recipe",
    "conversation",
    "evol_instruct",
    "plan_note",
    "register",
    "self_instruct",
    "stage_reader",
]


def build_recipe(job: JobConfig) -> Recipe:
    """The recipe the job's ``recipe:`` block names (:class:`PlainRecipe` without one)."""
    config = job.recipe
    if config is None:
        return PlainRecipe(job)
    return RECIPES[config.type](config, job)


def plan_note(job: JobConfig, prompts: int) -> str | None:
    """What ``distillery plan``'s one-answer-per-prompt table leaves out for the job's recipe."""
    config = job.recipe
    return None if config is None else RECIPES[config.type].plan_note(config, prompts)
