"""The job file's one ``reasoning:`` knob: what every provider's mapping of it shares.

Each provider maps the knob to its own fields (:meth:`.Provider.reasoning_fields`) and refuses
combinations it cannot send (:meth:`.Provider.reasoning_problem`; a provider without a mapping
refuses any ``reasoning:``), in its own module: Anthropic ``thinking``, Gemini
``thinkingConfig``, OpenAI ``reasoning_effort``. This module holds what they share: whether
reasoning is on, the thinking tokens a setting is expected to cost, and the check the config
runs (:func:`reasoning_problem`, which asks the teacher's provider).
"""

from __future__ import annotations

from typing import Any

from distillery.config import ReasoningConfig, TeacherConfig
from distillery.generators.providers.registry import get_provider

#: The thinking tokens an ``effort`` is expected to cost: for the plan, and for Anthropic's
#: ``max_tokens`` when none is configured.
EFFORT_BUDGETS = {"low": 2048, "medium": 8192, "high": 24576}
#: The trace length ``distillery plan`` assumes when neither a budget nor an effort is set.
ASSUMED_REASONING_TOKENS = 1024


def asked(teacher: TeacherConfig) -> ReasoningConfig | None:
    """``teacher``'s reasoning settings if it is asked to reason, else None."""
    reasoning = teacher.reasoning
    return reasoning if reasoning is not None and reasoning.enabled else None


def merge_fields(body: dict[str, Any], fields: dict[str, Any]) -> None:
    """Add ``fields`` to ``body``, merging objects one level deep (``output_config`` may
    already hold a response format)."""
    for key, value in fields.items():
        current = body.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            body[key] = {**current, **value}
        else:
            body[key] = value


def reasoning_problem(teacher: TeacherConfig) -> str | None:
    """Why this teacher's reasoning settings cannot be sent to its provider, or None.

    The message names the field (relative to the teacher) on one line.
    """
    return get_provider(teacher.provider).reasoning_problem(teacher)


def expected_reasoning_tokens(teacher: TeacherConfig) -> int:
    """Thinking tokens one answer is expected to cost, for the plan (0 without reasoning)."""
    reasoning = asked(teacher)
    if reasoning is None:
        return 0
    if reasoning.budget_tokens is not None:
        return reasoning.budget_tokens
    if reasoning.effort is not None:
        return EFFORT_BUDGETS[reasoning.effort]
    return ASSUMED_REASONING_TOKENS
