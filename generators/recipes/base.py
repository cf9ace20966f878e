"""What a recipe is to the generate flow: a sequence of stages, each a plan of requests.

A recipe turns the job's prompts into samples in one or more *stages*. The flow runs a stage's
batches to the end (answers spooled, curated, committed like any batch) before it asks the
recipe for the next stage, which the recipe builds from the rows the earlier stages committed
— read back from the run's shards, not kept in memory. So a resumed run rebuilds every stage
from storage, and since each derived prompt's id is a function of its parent's id and how it
was derived, sample ids repeat and finished requests are never bought twice.

Every row a recipe writes carries ``recipe`` and ``stage``; derived rows also carry
``generation`` (how many derivation steps from a seed), ``parent_sample_id`` (the row whose
answer this prompt came from) and ``operation`` (how it was derived).

A recipe is one module whose class is registered (:func:`register`) under the ``type`` of its
``recipe:`` block, plus that module's import in ``recipes/__init__.py`` and its options in
:data:`distillery.config.RecipeConfig` (docs/extending.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from distillery.config import JobConfig, RoutingConfig
from distillery.generators.batch import ItemRunner, WorkItem, plan_prompts
from distillery.generators.curation.apply import Curator
from distillery.generators.filters import build_filters
from distillery.generators.prompts import Message, Prompt
from distillery.generators.routing import Router
from distillery.storage.location import Location
from distillery.storage.rows import LineageColumns
from distillery.storage.shards import committed_shards, read_shard

#: The columns :func:`stage_reader` returns for each answered row of a stage.
STAGE_COLUMNS = (
    "sample_id",
    "prompt_id",
    "teacher_name",
    "response_text",
    "finish_reason",
    "generation",
    "operation",
    "stage",
    "recipe",
)

StageRows = Callable[[str], list[dict[str, Any]]]

#: Stages whose answers are inputs to later stages, not samples: curated with the ``empty``
#: check only, never judged, left out of duplicate removal.
INTERMEDIATE_STAGES = ("instructions", "evolve")


@dataclass
class Stage:
    """One stage: its prompts, the router that picks their teachers, and how its answers are
    curated.

    ``final`` stages produce the dataset: the job's routing, ``n``, filters and judge apply.
    Intermediate stages (instructions to be answered later) ask one teacher once per prompt,
    keep every non-empty answer and skip the judge.
    """

    name: str
    prompts: Iterable[Prompt]
    """Read once to count the stage and once to send it: a list, or a source read again
    (``generators/prompts.py:PromptSource``)."""
    router: Router
    final: bool = True
    runner: ItemRunner | None = None
    label: str = ""

    def plan(self, done: Container[str]) -> Iterator[list[WorkItem]]:
        """Per prompt, in order, the requests still to make (sample ids not in ``done``; an
        empty list when none is left), as the prompts are read."""
        for todo in plan_prompts(self.prompts, self.router, done):
            if self.runner is None:
                yield todo
            else:
                yield [replace(item, runner=self.runner) for item in todo]

    def curator(self, job_curator: Curator) -> Curator:
        if self.final:
            return job_curator
        return Curator(build_filters([{"type": "empty"}]), job_curator.params, judge=False)


class Recipe(Protocol):
    def stages(self, seeds: Iterable[Prompt], read: StageRows) -> Iterator[Stage]:
        """The stages, lazily: the next one is built only after the previous one ran."""
        ...


class RecipeClass(Protocol):
    """What a recipe module registers: a class built from its ``recipe:`` block and the job."""

    def __call__(self, config: Any, job: JobConfig) -> Recipe: ...

    def plan_note(self, config: Any, prompts: int) -> str:
        """What ``distillery plan``'s one-answer-per-prompt table leaves out for ``prompts``
        seed prompts (extra requests, stages)."""
        ...


#: Registered recipes by the ``type`` of their ``recipe:`` block.
RECIPES: dict[str, RecipeClass] = {}
RecipeClassT = TypeVar("RecipeClassT", bound=RecipeClass)


def register(name: str) -> Callable[[RecipeClassT], RecipeClassT]:
    """Class decorator: build this class for a ``recipe:`` block of ``type: name``."""

    def decorate(cls: RecipeClassT) -> RecipeClassT:
        if RECIPES.get(name, cls) is not cls:
            raise ValueError(f"two recipes are named {name!r}")
        RECIPES[name] = cls
        return cls

    return decorate


@dataclass
class PlainRecipe:
    """No recipe: every prompt answered as the job's routing and ``n`` say, in one stage."""

    job: JobConfig

    def stages(self, seeds: Iterable[Prompt], read: StageRows) -> Iterator[Stage]:
        yield Stage("answer", seeds, Router(self.job))


def one_teacher(job: JobConfig, name: str | None) -> Router:
    """A router sending each prompt once to teacher ``name`` (default: the first teacher),
    whatever the job's routing: an intermediate stage wants one answer per request."""
    teacher = next((t for t in job.teachers if t.name == name), job.teachers[0])
    only = {"teachers": [teacher], "n": 1, "temperatures": None, "routing": RoutingConfig()}
    return Router(job.model_copy(update=only))


def stage_reader(output: Location, run_id: str) -> StageRows:
    """Rows of one stage answered in this run: kept samples and those dedup set aside.

    Duplicates removed at the end of an earlier invocation still had their answer used by
    the stages after them, so a resume must see them too; rows dropped by a filter are not
    used. Sorted by prompt id, then teacher: the order a resumed run rebuilds stages in.
    """

    def read(stage: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for table in ("samples", "rejected"):
            columns = [*STAGE_COLUMNS, "filter"] if table == "rejected" else list(STAGE_COLUMNS)
            for shard in committed_shards(output, table, run_id):
                try:
                    data = read_shard(shard, columns=columns)
                except pa.ArrowInvalid:
                    continue  # written before recipes existed: no stage column
                keep = pc.equal(data["stage"], pa.scalar(stage))
                if table == "rejected":
                    keep = pc.and_(keep, pc.equal(data["filter"], pa.scalar("dedup")))
                rows += data.filter(keep).select(list(STAGE_COLUMNS)).to_pylist()
        rows.sort(key=lambda row: (str(row["prompt_id"]), str(row["teacher_name"])))
        return rows

    return read


@dataclass(frozen=True)
class Lineage:
    """The recipe columns of a derived prompt's rows."""

    recipe: str
    stage: str
    generation: int | None = None
    parent_sample_id: str | None = None
    operation: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> LineageColumns:
        return {
            "recipe": self.recipe,
            "stage": self.stage,
            "generation": self.generation,
            "parent_sample_id": self.parent_sample_id,
            "operation": self.operation,
            "recipe_meta": json.dumps(self.meta, sort_keys=True) if self.meta else None,
        }


def seed_text(prompt: Prompt) -> str:
    """The instruction a seed prompt stands for: its (last) user message."""
    users = [m["content"] for m in prompt.messages if m["role"] == "user"]
    return users[-1] if users else prompt.messages[-1]["content"]


def user_prompt(
    prompt_id: str, text: str, system: str | None, lineage: Lineage, meta: dict[str, Any]
) -> Prompt:
    """A derived prompt: ``text`` as the user message, after the job's system message."""
    messages: list[Message] = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return Prompt(prompt_id, messages, meta, lineage.columns())


def with_lineage(prompts: Iterable[Prompt], lineage: Lineage) -> list[Prompt]:
    return [replace(prompt, lineage=lineage.columns()) for prompt in prompts]
