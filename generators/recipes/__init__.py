"""Generation recipes: how a job's prompts become samples (docs/recipes.md).

Without a ``recipe:`` block every prompt is answered once by every teacher (:class:`PlainRecipe`).
Each recipe is one module; :func:`build_recipe` picks it from the job's config.
"""

from __future__ import annotations

from distillery.config import (
    ConversationRecipe,
    EvolInstructRecipe,
    JobConfig,
    SelfInstructRecipe,
)
from distillery.generators.recipes.base import PlainRecipe, Recipe, Stage, StageRows, stage_reader
from distillery.generators.recipes.conversation import Conversations
from distillery.generators.recipes.evol_instruct import EvolInstruct
from distillery.generators.recipes.self_instruct import SelfInstruct

__all__ = ["Recipe", "Stage", "StageRows", "build_recipe", "stage_reader"]


def build_recipe(job: JobConfig) -> Recipe:
    config = job.recipe
    if isinstance(config, ConversationRecipe):
        return Conversations(config, job)
    if isinstance(config, SelfInstructRecipe):
        return SelfInstruct(config, job)
    if isinstance(config, EvolInstructRecipe):
        return EvolInstruct(config, job)
    return PlainRecipe(job)
