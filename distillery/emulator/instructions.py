"""Answers to instruction-synthesis requests, in the shapes the recipes parse.

A self-instruct request (``generators/recipes/self_instruct.py``) ends with "Reply with a
numbered list of N new tasks": the emulator answers with N numbered one-line tasks about the
examples' words and some new ones — and, as real models do, now and then repeats an example
verbatim, so the recipe's dedup has work. An evol-instruct request (``evol_instruct.py``) holds
"#The Given Prompt#:": the emulator answers with that prompt plus one added demand, or rarely
the prompt unchanged (an evolution the recipe must eliminate). Everything is a pure function of
the request key, like every emulator answer.
"""

from __future__ import annotations

import hashlib
import random
import re

from distillery.emulator import vocabulary as vocab
from distillery.emulator.text import topic_words

LIST_REQUEST = re.compile(r"Reply with a numbered list of (\d{1,3}) new tasks")
GIVEN_PROMPT = "#The Given Prompt#:"
_EXAMPLE = re.compile(r"^\s*\d+\.\s+(.+)$", re.MULTILINE)
_REPEAT_RATE = 0.15
_UNCHANGED_RATE = 0.05

_TASKS = (
    "Explain how {a} affects {b}, with one concrete example.",
    "Write a short guide to {a} for a {adj} team.",
    "Compare {a} and {b} in {num} sentences.",
    "List {num} common mistakes people make with {a}, and how to avoid them.",
    "Plan a {num}-step project that improves the {a} of a {adj} {b}.",
    "What would change if every {b} ignored {a}? Answer in one paragraph.",
    "Summarise the trade-offs between a {adj} {a} and a {adj2} {b}.",
    "Give step-by-step instructions to {verb} a {a} without breaking the {b}.",
    "Write a dialogue in which a {b} asks an expert about {a}.",
    "Classify these as {a} or {b}, and justify each choice: {c}, {d}, {e}.",
)
_DEMANDS = (
    "Explain your reasoning step by step.",
    "Keep the answer under {num} sentences.",
    "Include a concrete example involving a {adj} {a}.",
    "Also discuss how it applies to a {b}.",
    "Assume the reader has never heard of {a}.",
    "Compare at least {num} alternatives before recommending one.",
    "Point out one risk and how to measure it.",
    "Answer as a table with one row per {a}.",
)


def _rng(key: bytes, salt: str) -> random.Random:
    digest = hashlib.blake2b(key + salt.encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _fill(template: str, rng: random.Random, topics: list[str]) -> str:
    def noun() -> str:
        return rng.choice(topics) if topics and rng.random() < 0.6 else rng.choice(vocab.NOUNS)

    return template.format(
        a=noun(),
        b=noun(),
        c=noun(),
        d=noun(),
        e=noun(),
        adj=rng.choice(vocab.ADJECTIVES),
        adj2=rng.choice(vocab.ADJECTIVES),
        num=rng.choice(vocab.NUMBERS),
        verb=rng.choice(vocab.VERBS),
    )


def task_list(key: bytes, prompt: str) -> str | None:
    """A numbered list of new tasks if ``prompt`` asks for one, else None."""
    match = LIST_REQUEST.search(prompt)
    if match is None:
        return None
    count = max(1, min(int(match.group(1)), 100))
    examples = _EXAMPLE.findall(prompt[: match.start()])
    topics = topic_words(" ".join(examples))
    rng = _rng(key, "tasks")
    lines = []
    for index in range(1, count + 1):
        if examples and rng.random() < _REPEAT_RATE:
            task = rng.choice(examples).strip()
        else:
            task = _fill(rng.choice(_TASKS), rng, topics)
        lines.append(f"{index}. {task}")
    return "\n".join(lines)


def rewrite(key: bytes, prompt: str) -> str | None:
    """The given prompt made more demanding, if ``prompt`` asks for a rewrite, else None."""
    start = prompt.find(GIVEN_PROMPT)
    if start < 0:
        return None
    given_lines: list[str] = []
    for line in prompt[start + len(GIVEN_PROMPT) :].splitlines():
        if line.startswith("#"):
            break
        given_lines.append(line)
    given = " ".join(" ".join(given_lines).split())
    rng = _rng(key, "rewrite")
    if rng.random() < _UNCHANGED_RATE:
        return given
    demand = _fill(rng.choice(_DEMANDS), rng, topic_words(given))
    return f"{given} {demand}".strip()
