"""Reasoning traces, as the teachers' APIs return them when asked to think.

Each format reads its own request knob into a neutral :class:`Thinking` (Anthropic
``thinking``, Gemini ``generationConfig.thinkingConfig``, OpenAI ``reasoning_effort`` or a
reasoning model's name); :func:`think` gives the answer a deterministic :class:`Trace` before
it, inside the same ``max_tokens``; each format renders it its own way. Two emulator options
decide what the client gets to see, so every visibility a real API has can be tested:

- ``reasoning_redact_rate``: that share of traces is withheld, decided per request by a hash
  (the same request is always withheld or always not). Anthropic sends a
  ``redacted_thinking`` block instead; Gemini and OpenAI-compatible servers have no redacted
  form and send only the token count.
- ``openai_reasoning``: where the OpenAI-compatible route puts a trace: ``field``
  (``message.reasoning_content``, DeepSeek and vLLM), ``inline`` (``<think>…</think>`` before the
  answer, an open model served without a reasoning parser), ``hidden`` (only
  ``reasoning_tokens``, as OpenAI's own models), or ``auto``: hidden for OpenAI's model names
  (o-series, gpt-5), the field for the rest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Literal

from distillery.emulator import text as answer_text
from distillery.emulator.completion import Answer, ChatRequest, Finish, cut
from distillery.generators.tokens import count_tokens, encoding_for_model

OpenAIStyle = Literal["auto", "field", "inline", "hidden"]
#: Trace tokens at most per OpenAI ``reasoning_effort`` / Gemini ``thinkingLevel``.
EFFORT_TOKENS = {"minimal": 64, "low": 128, "medium": 256, "high": 512}
#: Model names the OpenAI route treats as reasoning models even without ``reasoning_effort``.
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)|r1|reasoner|qwq|thinking", re.IGNORECASE)
_OPENAI_OWN = re.compile(r"^(o\d|gpt-5)")


@dataclass(frozen=True, slots=True)
class Thinking:
    """A request's ask to think: the trace's token budget (None: the model decides) and
    whether the API returns the text (Gemini only with ``includeThoughts``)."""

    budget: int | None = None
    shown: bool = True
    withheld: bool = False
    style: OpenAIStyle = "auto"


@dataclass(frozen=True, slots=True)
class Trace:
    """The trace before an answer: its text, tokens and how the client gets to see it."""

    text: str
    tokens: int
    shown: bool = True
    withheld: bool = False
    style: OpenAIStyle = "auto"

    @property
    def visible(self) -> bool:
        return self.shown and not self.withheld


def configure(chat: ChatRequest, seed: int, redact_rate: float, style: OpenAIStyle) -> ChatRequest:
    """``chat`` with the emulator's visibility options applied to its :class:`Thinking`."""
    thinking = chat.thinking
    if thinking is None or (redact_rate <= 0 and style == "auto"):
        return chat
    withheld = False
    if redact_rate > 0:
        digest = hashlib.blake2b(f"{seed}\x00redact\x00{chat.messages}".encode()).digest()
        withheld = int.from_bytes(digest[:4]) / 2**32 < redact_rate
    return replace(chat, thinking=replace(thinking, withheld=withheld, style=style))


def openai_style(trace: Trace, model: str) -> OpenAIStyle:
    """Where the OpenAI route puts ``trace`` (``hidden`` when withheld)."""
    if not trace.visible:
        return "hidden"
    if trace.style != "auto":
        return trace.style
    return "hidden" if _OPENAI_OWN.match(model) else "field"


def think(answer: Answer, chat: ChatRequest, key: bytes, prompt: str) -> Answer:
    """``answer`` with a trace before it, both inside ``chat.max_tokens``.

    A trace that fills ``max_tokens`` leaves no room for the answer: empty, finish ``LENGTH``
    (what a real thinking model does when its budget is too close to its limit).
    """
    thinking = chat.thinking
    assert thinking is not None
    text = answer_text.generate(key + b"\x00thinking", prompt)
    tokens = count_tokens(text, chat.model)
    limit = thinking.budget
    if chat.max_tokens is not None:
        limit = chat.max_tokens if limit is None else min(limit, chat.max_tokens)
    if limit is not None and tokens > limit:
        tokenizer = encoding_for_model(chat.model)
        text = tokenizer.decode(tokenizer.encode(text, disallowed_special=())[:limit])
        tokens = count_tokens(text, chat.model)
    if chat.max_tokens is not None:
        room = chat.max_tokens - tokens
        if room <= 0:
            answer = Answer("", Finish.LENGTH, answer.prompt_tokens, 0)
        elif answer.completion_tokens > room:
            answer = cut(answer, room, chat.model)
    trace = Trace(text, tokens, thinking.shown, thinking.withheld, thinking.style)
    return replace(answer, trace=trace)


def signature(text: str) -> str:
    """An opaque stand-in for Anthropic's thinking ``signature`` (stable per trace)."""
    return hashlib.blake2b(text.encode(), digest_size=48).hexdigest()
