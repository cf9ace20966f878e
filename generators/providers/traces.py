"""Reasoning traces as the providers return them, normalised into one shape.

Every provider exposes the teacher's thinking differently (Anthropic ``thinking`` blocks,
Gemini ``thought`` parts, ``reasoning_content`` on DeepSeek-style servers, ``<think>`` tags
inline in the answer of open models, nothing but a token count from OpenAI). A sample keeps the
trace in ``reasoning_text`` and says in ``reasoning_visibility`` how much of it we were given:

- ``full``: the trace as the model produced it;
- ``summary``: a summary the provider wrote of it (Claude 4 models, Gemini thought summaries);
- ``redacted``: some or all of it was withheld as encrypted data (Anthropic
  ``redacted_thinking``); ``reasoning_text`` holds whatever part was readable;
- ``hidden``: the teacher reasoned (tokens were billed) but the API never returns the text;
- ``none``: no reasoning that we know of.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from distillery.config import ReasoningConfig
    from distillery.generators.providers.base import Completion

Visibility = Literal["full", "summary", "redacted", "hidden", "none"]
VISIBILITIES: tuple[Visibility, ...] = ("full", "summary", "redacted", "hidden", "none")


def visibility(trace: str | None, tokens: int | None, *, summary: bool = False) -> Visibility:
    """How much of a trace came back: the text (full, or a summary), only a count, or none."""
    if trace:
        return "summary" if summary else "full"
    return "hidden" if tokens else "none"


def split_inline(text: str, tags: tuple[str, str]) -> tuple[str | None, str]:
    """``(trace, answer)`` of a text that may start with an inlined trace.

    Handles ``<think>trace</think>answer``; a trace whose opening tag was part of the chat
    template, so only the closing tag is in the output (Qwen3, DeepSeek-R1 distills); and a
    trace cut off before its closing tag (all of the text is trace, the answer is empty).
    A text with no tags is all answer.
    """
    opening, closing = tags
    stripped = text.lstrip()
    if stripped.startswith(opening):
        body = stripped[len(opening) :]
        end = body.find(closing)
        if end == -1:
            return body.strip(), ""
        return body[:end].strip(), body[end + len(closing) :].lstrip()
    end = text.find(closing)
    if end != -1 and opening not in text[:end]:
        return text[:end].strip(), text[end + len(closing) :].lstrip()
    return None, text


def split_trace(completion: Completion, reasoning: ReasoningConfig) -> Completion:
    """``completion`` with an inlined trace moved out of its text, if it has one.

    Only for teachers with reasoning enabled: without it a ``<think>`` in an answer is the
    answer's business. A trace the API already returned apart is left as it is.
    """
    if not reasoning.enabled or completion.reasoning_text is not None:
        return completion
    trace, answer = split_inline(completion.text, reasoning.think_tags)
    if trace is None:
        return completion
    return replace(completion, text=answer, reasoning_text=trace, reasoning_visibility="full")
