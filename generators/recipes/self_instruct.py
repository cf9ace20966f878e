"""Self-instruct: seed tasks -> a teacher writes new instructions -> deduplicated -> answered.

Stages: ``instructions`` for each round (one request per group of ``seeds_per_request``
example tasks, asking for ``instructions_per_request`` new ones), then ``answer`` (every new
instruction to every teacher). Round 1 shows the seed tasks (the prompt file); round r+1 shows
the instructions round r added. The instruction-list answers are rows like any other (stage
``instructions``), so what was paid for is kept, including instructions dropped as duplicates.

New instructions are deduplicated against the seeds and every instruction kept before them:
exact duplicates by the normalised text (:func:`~distillery.generators.curation.normalize.
exact_key`, case folded), near ones by word-set Jaccard >= ``similarity_threshold`` (the
self-instruct paper uses ROUGE-L > 0.7). Instructions are a sentence or two, too short for the
5-word shingles and LSH bands that deduplicate answers. An instruction's prompt id is a hash of
its normalised text, so the same instruction always gets the same id, in every run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import jinja2

from distillery.config import JobConfig, SelfInstructRecipe
from distillery.generators.curation.normalize import exact_key, normalize
from distillery.generators.prompts import Prompt
from distillery.generators.recipes.base import (
    Lineage,
    Stage,
    StageRows,
    one_teacher,
    register,
    seed_text,
    user_prompt,
)
from distillery.generators.routing import Router

RECIPE = "self_instruct"

#: The emulator answers a request containing this line with a numbered list of tasks.
LIST_MARKER = "Reply with a numbered list of"

TEMPLATE = """You are helping to build a diverse set of tasks for training an AI assistant.

Here are some example tasks:

{% for task in examples %}{{ loop.index }}. {{ task }}
{% endfor %}
Write {{ n }} new tasks. Each must be self-contained and differ from the examples and from each
other in topic and in kind (questions; requests to explain, write, compare, plan, classify...).
Reply with a numbered list of {{ n }} new tasks, one per line, and nothing else."""

_ITEM = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*\u2022])\s*(.*\S)\s*$")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_WORD = re.compile(r"\w+")


def parse_instructions(text: str, limit: int) -> list[str]:
    """The new tasks in a teacher's answer: a JSON list, or a numbered or bulleted list.

    Lines that continue an item (no number of their own) are joined to it; text before the
    first item (a preamble) is ignored. At most ``limit`` items are taken.
    """
    body = _FENCE.sub("", text.strip())
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        parsed = next((v for v in parsed.values() if isinstance(v, list)), None)
    if isinstance(parsed, list):
        items = [
            str(v.get("instruction") or v.get("task") or "") if isinstance(v, dict) else str(v)
            for v in parsed
        ]
    else:
        items = []
        current: list[str] | None = None
        for line in body.splitlines():
            match = _ITEM.match(line)
            if match:
                current = [match.group(1)]
                items.append("")
            elif current is not None and line.strip():
                current.append(line.strip())
            elif not line.strip():
                current = None
            if current is not None:
                items[-1] = " ".join(current)
    cleaned = [" ".join(item.split()).strip("\"' ") for item in items]
    return [item for item in cleaned if item][:limit]


def instruction_id(text: str) -> str:
    """A new instruction's prompt id: its normalised, case-folded text, hashed."""
    return "si-" + exact_key(text, casefold=True)[:20]


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(normalize(text, casefold=True)))


@dataclass
class InstructionPool:
    """Instructions known so far; answers whether a new one is too close to any of them."""

    threshold: float
    _keys: set[str] = field(default_factory=set)
    _sets: list[frozenset[str]] = field(default_factory=list)
    _postings: dict[str, list[int]] = field(default_factory=dict)

    def add(self, text: str) -> bool:
        """Keep ``text`` unless it duplicates a known instruction; True if kept."""
        key = exact_key(text, casefold=True)
        if key in self._keys:
            return False
        words = _words(text)
        shared: Counter[int] = Counter()
        for word in words:
            shared.update(self._postings.get(word, ()))
        for index, common in shared.items():
            union = len(words) + len(self._sets[index]) - common
            if union and common / union >= self.threshold:
                return False
        self._keys.add(key)
        for word in words:
            self._postings.setdefault(word, []).append(len(self._sets))
        self._sets.append(words)
        return True


@register(RECIPE)
@dataclass
class SelfInstruct:
    config: SelfInstructRecipe
    job: JobConfig

    @classmethod
    def plan_note(cls, config: SelfInstructRecipe, prompts: int) -> str:
        per_round = -(-prompts // config.seeds_per_request)
        new = per_round * config.instructions_per_request
        return (
            f"recipe self_instruct: round 1 sends {per_round} instruction requests for up to "
            f"{new} new instructions (fewer after dedup), each answered by the routed teachers; "
            f"{config.rounds} round(s); the seeds themselves are not answered"
        )

    def stages(self, seeds: Iterable[Prompt], read: StageRows) -> Iterator[Stage]:
        config = self.config
        generator = one_teacher(self.job, config.generator)
        template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE)
        pool = InstructionPool(config.similarity_threshold)
        seed_examples: list[tuple[str, str]] = []
        for seed in seeds:
            text = seed_text(seed)
            pool.add(text)
            seed_examples.append((seed.prompt_id, text))
        # (parent instruction-list row, its examples): round 1 shows the seeds; a later round
        # shows what each row of the round before added, so a resume that answers a request
        # that had failed adds groups without reshuffling the others.
        groups: list[tuple[str | None, list[tuple[str, str]]]] = [(None, seed_examples)]
        answers: list[Prompt] = []
        for round_ in range(1, config.rounds + 1):
            requests: list[Prompt] = []
            for parent, examples in groups:
                for start in range(0, len(examples), config.seeds_per_request):
                    group = examples[start : start + config.seeds_per_request]
                    ids = [prompt_id for prompt_id, _ in group]
                    digest = hashlib.blake2b(json.dumps(ids).encode(), digest_size=10)
                    content = template.render(
                        examples=[" ".join(text.split()) for _, text in group],
                        n=config.instructions_per_request,
                    )
                    lineage = Lineage(
                        RECIPE,
                        "instructions",
                        round_,
                        parent_sample_id=parent,
                        meta={"example_prompt_ids": ids},
                    )
                    prompt_id = f"self-instruct/r{round_}/{digest.hexdigest()}"
                    requests.append(user_prompt(prompt_id, content, None, lineage, {}))
            if not requests:
                break
            yield Stage(
                "instructions", requests, generator, final=False, label=f"instructions r{round_}"
            )
            groups = []
            for row in read("instructions"):
                if row["generation"] != round_:
                    continue
                texts = parse_instructions(
                    str(row["response_text"] or ""), config.instructions_per_request
                )
                kept: list[tuple[str, str]] = []
                for position, text in enumerate(texts):
                    if not pool.add(text):
                        continue
                    prompt_id = instruction_id(text)
                    kept.append((prompt_id, text))
                    lineage = Lineage(
                        RECIPE,
                        "answer",
                        round_,
                        parent_sample_id=str(row["sample_id"]),
                        meta={"position": position},
                    )
                    answers.append(
                        user_prompt(prompt_id, text, self.job.prompts.system, lineage, {})
                    )
                groups.append((str(row["sample_id"]), kept))
        yield Stage("answer", answers, Router(self.job), label="answers")
