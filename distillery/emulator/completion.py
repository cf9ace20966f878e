"""The answer to a chat request, independent of any wire format.

Formats only translate: they parse their request shape into :class:`ChatRequest` and render an
:class:`Answer` back. Keeping generation, truncation and token counting here means every format
answers the same prompt with the same text and the same usage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from distillery.emulator import instructions, structured
from distillery.emulator import text as answer_text
from distillery.generators.tokens import (
    count_message_tokens,
    count_tokens,
    encoding,
    encoding_for_model,
)

if TYPE_CHECKING:
    from distillery.emulator.reasoning import Thinking, Trace


class Finish(Enum):
    """Why generation ended, in neutral terms; each format names it its own way.

    ``CONTENT_FILTER`` and ``REFUSAL`` only come from injected faults (:mod:`.faults`).
    """

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"


#: The line distillery's judge prompts end with; the emulator then answers with a score.
JUDGE_INSTRUCTION = "Reply with 'Score: N'"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A parsed chat request.

    ``messages`` are normalised to string values (multi-part content joined), the shape token
    counting takes. ``seed`` is the request's own seed parameter, if any. ``schema`` is the
    JSON Schema of a structured-output request (``{}``: any JSON), None for prose.
    """

    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    seed: int | None = None
    #: The request's ask to reason (:mod:`.reasoning`); None: answer without a trace.
    thinking: Thinking | None = None
    schema: dict[str, Any] | None = None
    #: Whether the request asks for prompt caching (Anthropic's ``cache_control``; the other
    #: APIs cache without being asked). See :mod:`.caching`.
    cache_marked: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """Generated text with its usage, counted with the requested model's tokenizer."""

    text: str
    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    #: The reasoning before the answer; its tokens are not in ``completion_tokens``.
    trace: Trace | None = None
    #: Parts of ``prompt_tokens`` read from and written to the prompt cache (:mod:`.caching`).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def output_tokens(self) -> int:
        """Output billed: the answer's tokens and the trace's (what every API charges)."""
        return self.completion_tokens + (self.trace.tokens if self.trace is not None else 0)


def warm_up() -> None:
    """Load the default tokenizer and the text banks before serving.

    Together they take ~0.5 s; left to the first request they would skew latency measurements.
    """
    encoding("o200k_base")
    answer_text.warm_up()


def request_key(chat: ChatRequest, seed: int) -> bytes:
    """What identifies the answer: same key, same text, in any process."""
    messages = json.dumps(chat.messages, sort_keys=True, separators=(",", ":"))
    return f"{seed}\x00{chat.seed}\x00{chat.model}\x00{messages}".encode()


def complete(chat: ChatRequest, seed: int, prompt_tokens: int | None = None) -> Answer:
    """Answer ``chat`` under the emulator-wide ``seed``, cut to ``max_tokens`` if it is set.

    ``prompt_tokens``, if the caller counted them already (the rate limiter does), saves
    counting them again.
    """
    prompt = "\n".join(m.get("content", "") for m in chat.messages if m.get("role") != "assistant")
    key = request_key(chat, seed)
    # Instruction-synthesis requests get answers in the shape their recipe parses.
    text = (
        instructions.task_list(key, prompt)
        or instructions.rewrite(key, prompt)
        or answer_text.generate(key, prompt)
    )
    if chat.schema is not None:
        # Asked for JSON: a document matching the schema, its strings taken from the prose.
        text = structured.answer_text(chat.schema, key, text)
    elif JUDGE_INSTRUCTION in prompt:
        # Asked to grade (an LLM judge): answer with a deterministic score, as a judge would.
        score = 1 + int.from_bytes(hashlib.blake2b(key).digest()[:4]) % 10
        text = f"Score: {score}\n{text}"
    if prompt_tokens is None:
        prompt_tokens = count_message_tokens(chat.messages, chat.model)
    answer = answer_with(text, chat, prompt_tokens)
    if chat.thinking is not None:
        from distillery.emulator.reasoning import think

        answer = think(answer, chat, key, prompt)
    return answer


def answer_with(text: str, chat: ChatRequest, prompt_tokens: int) -> Answer:
    """``text`` as the answer to ``chat``: its tokens counted, cut to ``max_tokens`` if set."""
    answer = Answer(
        text=text,
        finish=Finish.STOP,
        prompt_tokens=prompt_tokens,
        completion_tokens=count_tokens(text, chat.model),
    )
    if chat.max_tokens is not None and answer.completion_tokens > chat.max_tokens:
        return cut(answer, chat.max_tokens, chat.model)
    return answer


def cut(answer: Answer, max_tokens: int, model: str) -> Answer:
    """``answer`` stopped after ``max_tokens`` tokens, as a model hitting its limit would be."""
    tokenizer = encoding_for_model(model)
    tokens = tokenizer.encode(answer.text, disallowed_special=())
    if len(tokens) <= max_tokens:
        return answer
    text = tokenizer.decode(tokens[:max_tokens])
    return Answer(
        text=text,
        finish=Finish.LENGTH,
        prompt_tokens=answer.prompt_tokens,
        # Re-count: decoding a prefix and encoding it again need not give the same tokens.
        completion_tokens=count_tokens(text, model),
    )
