"""Evol-instruct: rewrite each instruction to be deeper, more constrained, more concrete...

Stages: ``evolve`` once per generation — every instruction of the generation before (the seeds
for generation 1) is rewritten by the evolver teacher with one operation — then ``answer``:
every evolved instruction (and the seeds, with ``answer_seeds``) to every teacher.

The operation is chosen per instruction and generation by a hash of the instruction's id, so a
resumed run chooses the same ones. A child instruction's id is its parent's id followed by
``>operation`` (``p7>deepen>concretize``), and its evolve request's id is ``evolve/`` + that:
ids are a function of parent and operation, so nothing is bought twice on resume. Each evolve
row records its ``operation``, its ``generation`` and, from generation 2 on,
``parent_sample_id``: the evolve row whose answer was its parent instruction; each answer row
records the evolve row that wrote its instruction. A chain of joins on ``parent_sample_id``
walks from any answer back to the seed.

As in WizardLM, failed evolutions are eliminated (neither answered nor evolved further): a
rewrite that is empty, cut off by ``max_tokens``, equal to its parent, or that copies the
prompt's section markers. Their rows stay in ``samples`` (they were paid for).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import jinja2

from distillery.config import EvolInstructRecipe, JobConfig
from distillery.generators.curation.normalize import normalize
from distillery.generators.prompts import Prompt
from distillery.generators.recipes.base import (
    Lineage,
    Stage,
    StageRows,
    one_teacher,
    register,
    seed_text,
    user_prompt,
    with_lineage,
)
from distillery.generators.routing import Router

RECIPE = "evol_instruct"

#: The emulator rewrites the text after this line (up to the next ``#...#:`` line).
GIVEN_MARKER = "#The Given Prompt#:"

METHODS = {
    "deepen": "If the given prompt contains inquiries about certain issues, increase the depth "
    "and breadth of the inquiry.",
    "constrain": "Add one more constraint or requirement to the given prompt.",
    "concretize": "Replace general concepts in the given prompt with more specific concepts.",
    "reasoning": "If the given prompt can be solved with just a few simple thinking processes, "
    "rewrite it to explicitly request multiple-step reasoning.",
}

DEPTH_TEMPLATE = """I want you to act as a prompt rewriter. Rewrite the given prompt into a more
complex version that well-known AI systems would find harder to handle, while it stays
reasonable, self-contained and answerable by humans. {{ method }}
Add no more than 10 to 20 words to the given prompt, and do not mention "given prompt" or
"rewritten prompt". Reply with the rewritten prompt only.

#The Given Prompt#:
{{ instruction }}

#Rewritten Prompt#:"""

BREADTH_TEMPLATE = """I want you to act as a prompt creator. Draw inspiration from the given
prompt to create a brand new prompt. It should belong to the same domain but be rarer, and be
of similar length and complexity. Do not mention "given prompt" or "created prompt". Reply with
the created prompt only.

#The Given Prompt#:
{{ instruction }}

#Created Prompt#:"""

_MARKERS = ("#The Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#")


def choose_operation(prompt_id: str, generation: int, operations: Sequence[str]) -> str:
    """The operation applied to ``prompt_id`` in ``generation``: a hash, not a random draw."""
    digest = hashlib.blake2b(f"{prompt_id}\x00{generation}".encode(), digest_size=8).digest()
    return operations[int.from_bytes(digest, "big") % len(operations)]


def evolution_request(instruction: str, operation: str) -> str:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    if operation == "breadth":
        return environment.from_string(BREADTH_TEMPLATE).render(instruction=instruction)
    template = environment.from_string(DEPTH_TEMPLATE)
    return template.render(instruction=instruction, method=METHODS[operation])


def clean_evolution(text: str) -> str:
    """The rewritten instruction: the answer stripped of a leading label and quotes."""
    text = text.strip()
    for label in ("#Rewritten Prompt#:", "#Created Prompt#:", "Rewritten Prompt:"):
        text = text.removeprefix(label).strip()
    return text.strip("\"'").strip()


def eliminated(child: str, parent: str, finish_reason: str | None) -> str | None:
    """Why an evolution failed (WizardLM's elimination rules, simplified), or None."""
    if not child:
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if normalize(child, casefold=True) == normalize(parent, casefold=True):
        return "unchanged"
    if any(marker in child for marker in _MARKERS):
        return "copied_markers"
    return None


@register(RECIPE)
@dataclass
class EvolInstruct:
    config: EvolInstructRecipe
    job: JobConfig

    @classmethod
    def plan_note(cls, config: EvolInstructRecipe, prompts: int) -> str:
        return (
            f"recipe evol_instruct: {config.generations} generation(s) of up to {prompts} "
            f"rewrites each, every rewrite answered by the routed teachers"
            + ("; the seeds are answered too" if config.answer_seeds else "")
        )

    def stages(self, seeds: Iterable[Prompt], read: StageRows) -> Iterator[Stage]:
        config = self.config
        evolver = one_teacher(self.job, config.evolver)
        answers: list[Prompt] = []
        if config.answer_seeds:
            answers += with_lineage(seeds, Lineage(RECIPE, "answer", 0))
        # (instruction id, text, the evolve row that wrote it: None for a seed)
        current: list[tuple[str, str, str | None]] = [
            (seed.prompt_id, seed_text(seed), None) for seed in seeds
        ]
        for generation in range(1, config.generations + 1):
            requests: list[Prompt] = []
            parents: dict[str, str] = {}
            for prompt_id, text, parent in current:
                operation = choose_operation(prompt_id, generation, config.operations)
                child_id = f"{prompt_id}>{operation}"
                parents[child_id] = text
                lineage = Lineage(
                    RECIPE,
                    "evolve",
                    generation,
                    parent_sample_id=parent,
                    operation=operation,
                    meta={"parent_prompt_id": prompt_id},
                )
                request = evolution_request(text, operation)
                requests.append(user_prompt(f"evolve/{child_id}", request, None, lineage, {}))
            if not requests:
                break
            yield Stage("evolve", requests, evolver, final=False, label=f"evolve g{generation}")
            current = []
            for row in read("evolve"):
                child_id = str(row["prompt_id"]).removeprefix("evolve/")
                if row["generation"] != generation or child_id not in parents:
                    continue
                child = clean_evolution(str(row["response_text"] or ""))
                if eliminated(child, parents[child_id], row["finish_reason"]) is not None:
                    continue
                sample_id = str(row["sample_id"])
                current.append((child_id, child, sample_id))
                lineage = Lineage(
                    RECIPE,
                    "answer",
                    generation,
                    parent_sample_id=sample_id,
                    operation=str(row["operation"]),
                )
                answers.append(user_prompt(child_id, child, self.job.prompts.system, lineage, {}))
        yield Stage("answer", answers, Router(self.job), label="answers")
