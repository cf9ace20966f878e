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


def plan_note(job: JobConfig, prompts: int) -> str | None:
    """What ``distillery plan``'s one-answer-per-prompt table leaves out for the job's recipe."""
    config = job.recipe
    if isinstance(config, ConversationRecipe):
        requests = 2 * config.turns - 1
        return (
            f"recipe conversation: each prompt x teacher is {requests} requests "
            f"({config.turns} answers, {config.turns - 1} user turns), each sending the "
            "conversation so far: expect more than that many times the table's tokens"
        )
    if isinstance(config, SelfInstructRecipe):
        per_round = -(-prompts // config.seeds_per_request)
        new = per_round * config.instructions_per_request
        return (
            f"recipe self_instruct: round 1 sends {per_round} instruction requests for up to "
            f"{new} new instructions (fewer after dedup), each answered by the routed teachers; "
            f"{config.rounds} round(s); the seeds themselves are not answered"
        )
    if isinstance(config, EvolInstructRecipe):
        return (
            f"recipe evol_instruct: {config.generations} generation(s) of up to {prompts} "
            f"rewrites each, every rewrite answered by the routed teachers"
            + ("; the seeds are answered too" if config.answer_seeds else "")
        )
    return None
