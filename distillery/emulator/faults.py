"""Injected faults: their names, which one (if any) hits a request, and their neutral meaning.

A client's retry and accounting code is only as good as the failures it was tested against, so
the emulator can replace a share (``fault_rate``) of its answers with what real providers send
on a bad day. This module owns everything about a fault that does not depend on the wire
format: the menu of names, the random choice, the wait a rate limit asks for and the neutral
:class:`~.completion.Answer` of a flagged success. Each format renders the HTTP errors and the
flagged answers in its provider's shape; the server does the transport-level ones (hang,
reset, truncated body, malformed JSON), which look the same in every format.

The choice is drawn from a RNG seeded by the emulator's seed, *per request*: a run is
reproducible, yet retrying the same request can succeed, as it can against a real API.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import replace
from enum import StrEnum

from distillery.emulator import structured
from distillery.emulator.completion import Answer, ChatRequest, Finish, answer_with, cut
from distillery.generators.tokens import count_tokens


class Fault(StrEnum):
    """Every fault the emulator can inject; the value is the name used in options and stats."""

    RATE_LIMIT = "429"  # retry-after: 1 (seconds)
    RATE_LIMIT_MS = "429-ms"  # retry-after-ms
    RATE_LIMIT_DATE = "429-date"  # retry-after as an HTTP date
    RATE_LIMIT_LONG = "429-long"  # retry-after over every SDK's cap
    SPEND_LIMIT = "spend-limit"  # a 429 that no wait will fix
    GEMINI_RETRYINFO = "gemini-retryinfo"  # Gemini: RetryInfo + per-minute QuotaFailure
    GEMINI_PERDAY = "gemini-perday"  # Gemini: per-day QuotaFailure (fatal until reset)
    INTERNAL = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"
    OVERLOADED = "529"
    NO_RETRY_5XX = "no-retry-5xx"  # a 500 with x-should-retry: false
    LOADING = "loading"  # llama.cpp's 503 while the model loads
    TIMEOUT = "timeout"  # hang, then close without an answer
    RESET = "reset"  # TCP reset instead of an answer
    TRUNCATE = "truncate"  # 200, full Content-Length, part of the body, close
    MALFORMED_JSON = "malformed-json"  # 200 whose body is not JSON
    LENGTH = "length"  # answer cut short by the token limit
    CONTENT_FILTER = "content-filter"  # answer withheld by a safety filter
    EMPTY = "empty"  # success with no text
    REFUSAL = "refusal"  # the model declines
    INVALID_JSON = "invalid-json"  # structured output: the answer text is not JSON
    SCHEMA_MISMATCH = "schema-mismatch"  # structured output: JSON that breaks the schema


#: Faults that spoil a structured-output answer; a prose answer has nothing for them to spoil
#: (it is served as it is, though counted as flagged). Drawn only when named.
SCHEMA_FAULTS = frozenset({Fault.INVALID_JSON, Fault.SCHEMA_MISMATCH})
#: The default menu: every fault but the structured-output ones.
FAULT_NAMES: tuple[str, ...] = tuple(f.value for f in Fault if f not in SCHEMA_FAULTS)
ALL_FAULT_NAMES: tuple[str, ...] = tuple(fault.value for fault in Fault)

#: Answered with an HTTP error status, rendered by the format.
HTTP_ERRORS = frozenset(
    {
        Fault.RATE_LIMIT,
        Fault.RATE_LIMIT_MS,
        Fault.RATE_LIMIT_DATE,
        Fault.RATE_LIMIT_LONG,
        Fault.SPEND_LIMIT,
        Fault.GEMINI_RETRYINFO,
        Fault.GEMINI_PERDAY,
        Fault.INTERNAL,
        Fault.BAD_GATEWAY,
        Fault.UNAVAILABLE,
        Fault.GATEWAY_TIMEOUT,
        Fault.OVERLOADED,
        Fault.NO_RETRY_5XX,
        Fault.LOADING,
    }
)
#: Refused by the rate limiter before any work, so answered without the configured latency.
RATE_LIMITS = frozenset(
    {
        Fault.RATE_LIMIT,
        Fault.RATE_LIMIT_MS,
        Fault.RATE_LIMIT_DATE,
        Fault.RATE_LIMIT_LONG,
        Fault.SPEND_LIMIT,
        Fault.GEMINI_RETRYINFO,
        Fault.GEMINI_PERDAY,
    }
)
#: Successful answers whose content is unusable or incomplete (counted as ``served_flagged``).
FLAGGED = frozenset(
    {Fault.LENGTH, Fault.CONTENT_FILTER, Fault.EMPTY, Fault.REFUSAL, *SCHEMA_FAULTS}
)
#: No complete HTTP response reaches the client; ``by_status`` counts them under their name.
TRANSPORT = frozenset({Fault.TIMEOUT, Fault.RESET, Fault.TRUNCATE})

# Waits the rate-limit faults ask for. Small, so a client honouring them stays fast in tests.
RETRY_AFTER_S = 1
RETRY_AFTER_MS = 200
RETRY_AFTER_LONG_S = 600  # over openai's 120 s and anthropic's 60 s caps
GEMINI_RETRY_DELAY_S = 1.5
GEMINI_PERDAY_RETRY_DELAY_S = 38.0  # real per-day errors carry a RetryInfo too: a trap
#: Wait each rate-limit fault asks for, in seconds (None: no hint at all).
RETRY_WAIT_S: dict[Fault, float | None] = {
    Fault.RATE_LIMIT: RETRY_AFTER_S,
    Fault.RATE_LIMIT_MS: RETRY_AFTER_MS / 1000,
    Fault.RATE_LIMIT_DATE: RETRY_AFTER_S,
    Fault.RATE_LIMIT_LONG: RETRY_AFTER_LONG_S,
    Fault.GEMINI_RETRYINFO: GEMINI_RETRY_DELAY_S,
    Fault.SPEND_LIMIT: None,
    Fault.GEMINI_PERDAY: GEMINI_PERDAY_RETRY_DELAY_S,
}
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


def unknown_faults(names: list[str]) -> list[str]:
    """The names in ``names`` that are not faults, in order."""
    return [name for name in names if name not in ALL_FAULT_NAMES]


class FaultPicker:
    """Draws, per request, whether a fault hits it and which one (uniformly among ``faults``)."""

    def __init__(self, rate: float, faults: list[str], seed: int) -> None:
        self._rate = rate
        self._faults = tuple(Fault(name) for name in faults)
        # A string seed keeps this stream independent of the latency jitter's (seeded by int).
        self._rng = random.Random(f"faults/{seed}")

    def pick(self) -> Fault | None:
        """The fault for the next request, or None to answer it cleanly."""
        rng = self._rng
        if not self._faults or rng.random() >= self._rate:
            return None
        return rng.choice(self._faults)


def without_gemini_details(fault: Fault) -> Fault:
    """The plain fault a Gemini-specific one stands for in a format without ``details[]``.

    ``gemini-retryinfo`` becomes a plain ``429``, ``gemini-perday`` a ``spend-limit`` (the
    quota that no wait will fix: OpenAI's ``insufficient_quota``, Anthropic's spend limit).
    """
    if fault is Fault.GEMINI_RETRYINFO:
        return Fault.RATE_LIMIT
    if fault is Fault.GEMINI_PERDAY:
        return Fault.SPEND_LIMIT
    return fault


def retry_after_headers(fault: Fault, now: float | None = None) -> dict[str, str]:
    """The retry hint of a rate-limit fault as OpenAI and Anthropic send it (header names and
    semantics are shared; both SDKs read ``retry-after-ms``, then ``retry-after``)."""
    if fault is Fault.RATE_LIMIT_MS:
        return {"retry-after-ms": str(RETRY_AFTER_MS)}
    if fault is Fault.RATE_LIMIT_DATE:
        # HTTP dates have whole seconds: the next second plus one is 1-2 s ahead, never <= 0.
        moment = math.floor(now if now is not None else time.time()) + 1 + RETRY_AFTER_S
        return {"retry-after": email.utils.formatdate(moment, usegmt=True)}
    if fault is Fault.RATE_LIMIT_LONG:
        return {"retry-after": str(RETRY_AFTER_LONG_S)}
    if fault is Fault.RATE_LIMIT:
        return {"retry-after": str(RETRY_AFTER_S)}
    return {}  # spend limits and per-day quotas: waiting does not help, so no hint


def flag(answer: Answer, fault: Fault, chat: ChatRequest) -> Answer:
    """The neutral answer of a flagged success; formats render exactly its text and usage.

    - ``length``: the answer cut to half its tokens (at least one), finish ``LENGTH``.
    - ``content-filter``: no text and no billed output, finish ``CONTENT_FILTER``.
    - ``empty``: no text, finish ``STOP`` (the model simply said nothing).
    - ``refusal``: a short refusal sentence, finish ``REFUSAL``.
    - ``invalid-json``: a chatty preface and half the JSON, finish ``STOP``.
    - ``schema-mismatch``: JSON that parses but breaks the schema, finish ``STOP``.
    """
    if fault in SCHEMA_FAULTS:
        if chat.schema is None:
            return answer
        text = (
            structured.invalid_json(answer.text)
            if fault is Fault.INVALID_JSON
            else structured.mismatch(chat.schema, answer.text)
        )
        return replace(answer_with(text, chat, answer.prompt_tokens), trace=answer.trace)
    if fault is Fault.LENGTH:
        shorter = cut(answer, max(1, answer.completion_tokens // 2), chat.model)
        return replace(shorter, finish=Finish.LENGTH)  # even a one-token answer
    if fault is Fault.CONTENT_FILTER:
        return Answer("", Finish.CONTENT_FILTER, answer.prompt_tokens, 0)
    if fault is Fault.EMPTY:
        return Answer("", Finish.STOP, answer.prompt_tokens, 0)
    if fault is Fault.REFUSAL:
        tokens = count_tokens(REFUSAL_TEXT, chat.model)
        return Answer(REFUSAL_TEXT, Finish.REFUSAL, answer.prompt_tokens, tokens)
    raise ValueError(f"{fault.value} is not a flagged-answer fault")


def proto_duration(seconds: float) -> str:
    """A ``google.protobuf.Duration`` in JSON (``"1.5s"``, ``"38s"``), as Gemini's RetryInfo."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"
