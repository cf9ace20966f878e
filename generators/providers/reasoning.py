"""The job file's one ``reasoning:`` knob, mapped to each provider's own.

Kept apart from the wire-format modules so that each of them gains only one call: the body
fields to add (:func:`request_fields`) and, for validation, :func:`reasoning_problem`.

- Anthropic: a budget is extended thinking, ``thinking: {type: enabled, budget_tokens}``
  (``1024 <= budget_tokens < max_tokens``; up to Claude 4.6, removed on Opus 4.7); an effort is
  adaptive thinking, ``thinking: {type: adaptive}`` with ``output_config.effort`` (Claude
  4.6 and later). Either way no temperature but 1 and ``top_p`` of at least 0.95.
  ``output_tokens`` counts the thinking (billed in full even when the trace is summarised).
- Gemini: ``generationConfig.thinkingConfig`` with ``includeThoughts: true`` and either
  ``thinkingBudget`` (2.5 models) or ``thinkingLevel`` (3 models). ``maxOutputTokens``
  includes thinking; ``thoughtsTokenCount`` is billed as output beside ``candidatesTokenCount``.
- OpenAI (and compatible servers): ``reasoning_effort``; the trace of OpenAI's own models is
  never returned, DeepSeek-style APIs and vLLM return it in ``message.reasoning_content``
  (vLLM >= 0.11: ``reasoning``), open models without a parser inline ``<think>`` tags.
  ``completion_tokens`` includes ``reasoning_tokens``. There is no token budget knob.
"""

from __future__ import annotations

from typing import Any

from distillery.config import TeacherConfig

#: The thinking tokens an ``effort`` is expected to cost: for the plan, and for Anthropic's
#: ``max_tokens`` when none is configured.
EFFORT_BUDGETS = {"low": 2048, "medium": 8192, "high": 24576}
#: The trace length ``distillery plan`` assumes when neither a budget nor an effort is set.
ASSUMED_REASONING_TOKENS = 1024
ANTHROPIC_MIN_BUDGET = 1024
#: Answer room Anthropic gets on top of the thinking budget when max_tokens is not set.
ANTHROPIC_ANSWER_TOKENS = 4096
_GEMINI_LEVELS = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH"}
_OPENAI_WIRE = ("openai", "local")


def is_on(teacher: TeacherConfig) -> bool:
    return teacher.reasoning is not None and teacher.reasoning.enabled


def anthropic_max_tokens(teacher: TeacherConfig, default: int) -> int:
    """``max_tokens`` for Anthropic: the configured one, else room for thinking plus answer."""
    if teacher.params.max_tokens is not None:
        return teacher.params.max_tokens
    if not is_on(teacher):
        return default
    return expected_reasoning_tokens(teacher) + ANTHROPIC_ANSWER_TOKENS


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
    reasoning = teacher.reasoning
    if reasoning is None or not reasoning.enabled:
        return None
    provider, params = teacher.provider, teacher.params
    if provider == "anthropic":
        budget = reasoning.budget_tokens
        if budget is None and reasoning.effort is None:
            return "reasoning: anthropic needs budget_tokens (>= 1024) or effort"
        if budget is not None and budget < ANTHROPIC_MIN_BUDGET:
            return f"reasoning.budget_tokens: {budget} is below Anthropic's minimum of 1024"
        if budget is not None and params.max_tokens is not None and budget >= params.max_tokens:
            return (
                f"reasoning.budget_tokens: {budget} must be below params.max_tokens "
                f"{params.max_tokens} (Anthropic counts thinking in max_tokens)"
            )
        if params.temperature is not None and params.temperature != 1:
            return "params.temperature: Anthropic extended thinking allows only 1 (or unset)"
        if params.top_p is not None and params.top_p < 0.95:
            return "params.top_p: Anthropic extended thinking needs top_p >= 0.95 (or unset)"
    elif provider == "gemini":
        if (
            reasoning.budget_tokens is not None
            and params.max_tokens is not None
            and reasoning.budget_tokens >= params.max_tokens
        ):
            return (
                f"reasoning.budget_tokens: {reasoning.budget_tokens} must be below "
                f"params.max_tokens {params.max_tokens} (Gemini counts thoughts in it)"
            )
    elif provider in _OPENAI_WIRE and reasoning.budget_tokens is not None:
        return (
            "reasoning.budget_tokens: the OpenAI wire format has no thinking budget; "
            "use effort: low|medium|high"
        )
    return None


def request_fields(teacher: TeacherConfig) -> dict[str, Any]:
    """Body fields that ask ``teacher``'s provider to reason (empty without reasoning).

    Anthropic's and OpenAI's are top-level; Gemini's is the ``thinkingConfig`` of
    ``generationConfig`` (the caller nests it).
    """
    reasoning = teacher.reasoning
    if reasoning is None or not reasoning.enabled:
        return {}
    if teacher.provider == "anthropic":
        if reasoning.budget_tokens is not None:
            return {"thinking": {"type": "enabled", "budget_tokens": reasoning.budget_tokens}}
        return {"thinking": {"type": "adaptive"}, "output_config": {"effort": reasoning.effort}}
    if teacher.provider == "gemini":
        config: dict[str, Any] = {"includeThoughts": True}
        if reasoning.budget_tokens is not None:
            config["thinkingBudget"] = reasoning.budget_tokens
        elif reasoning.effort is not None:
            config["thinkingLevel"] = _GEMINI_LEVELS[reasoning.effort]
        return {"thinkingConfig": config}
    if reasoning.effort is not None:
        return {"reasoning_effort": reasoning.effort}
    return {}


def expected_reasoning_tokens(teacher: TeacherConfig) -> int:
    """Thinking tokens one answer is expected to cost, for the plan (0 without reasoning)."""
    reasoning = teacher.reasoning
    if reasoning is None or not reasoning.enabled:
        return 0
    if reasoning.budget_tokens is not None:
        return reasoning.budget_tokens
    if reasoning.effort is not None:
        return EFFORT_BUDGETS[reasoning.effort]
    return ASSUMED_REASONING_TOKENS
