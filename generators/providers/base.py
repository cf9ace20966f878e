"""The provider interface: what differs between wire formats, and nothing else.

A provider knows how to build one HTTP call for a chat request, how to read a successful answer
into a :class:`Completion`, and how to judge an error answer (:class:`ErrorVerdict`). Sending,
retrying, timing and lineage are the same for every provider and live in
:mod:`distillery.generators.client`, so a new wire format is one module plus one registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from distillery.config import TeacherConfig
from distillery.generators.providers.traces import Visibility

Message = dict[str, str]
FinishReason = Literal["stop", "length", "content_filter", "refusal", "other"]


@dataclass(frozen=True)
class HttpCall:
    """One request to send: the provider's URL, headers (key included) and JSON body."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Completion:
    """A successful answer, normalised across providers (each field lands in a column).

    Usage means the same for every provider: ``prompt_tokens`` counts all input tokens,
    including those read from a prompt cache (``cached_tokens``) and those written to one
    (``cache_write_tokens``) — as OpenAI's and Gemini's prompt counts do, and unlike Anthropic's
    ``input_tokens``, which the Anthropic provider adds its cache counts to.
    """

    text: str
    finish_reason: FinishReason
    finish_reason_raw: str | None
    model_version: str | None
    response_id: str | None
    request_id: str | None = None
    system_fingerprint: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    rate_limits: dict[str, float] = field(default_factory=dict)
    #: The teacher's trace without the answer, and how much of it the API gave us
    #: (:mod:`.traces`); ``text`` is then the answer alone.
    reasoning_text: str | None = None
    reasoning_visibility: Visibility = "none"


@dataclass(frozen=True)
class ErrorVerdict:
    """How to treat an error answer.

    ``fatal_for_run`` means every further request would fail the same way (bad key, no quota):
    the run stops at once instead of writing one failure row per prompt.
    """

    error_class: str
    message: str
    retryable: bool
    fatal_for_run: bool = False
    retry_after_s: float | None = None


def split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    """(system text, conversation turns) for APIs that take the system prompt apart from the
    turns (Anthropic ``system``, Gemini ``systemInstruction``); developer messages count as
    system, several are joined by blank lines."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    return ("\n\n".join(system) if system else None), turns


class MalformedResponse(Exception):
    """A 2xx answer whose body is not what the wire format promises (retried: it was cheap)."""


class Provider(ABC):
    """One wire format. Subclasses register themselves in :mod:`.registry`."""

    name: ClassVar[str]
    #: Path under an emulator's root where this format's SDK base URL points (OpenAI: ``/v1``).
    emulator_path: ClassVar[str] = ""
    #: Whether the provider charges ``max_tokens`` against its token limit at admission for
    #: good (OpenAI), rather than settling to the real usage (Anthropic's estimate-then-adjust).
    rate_limit_counts_max_tokens: ClassVar[bool] = False

    @abstractmethod
    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        """The HTTP call for one chat request to ``teacher``."""

    @abstractmethod
    def parse_success(self, payload: Any, headers: dict[str, str]) -> Completion:
        """Read a 2xx JSON body; raise :class:`MalformedResponse` if it is not well-formed."""

    def structured_output(self, schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
        """Request-body fields asking for an answer that is JSON matching ``schema`` (merged
        into the body, nested mappings key by key); see :mod:`distillery.generators.structured`.
        """
        raise NotImplementedError(f"provider {self.name!r} does not support response_schema")

    def parse_rate_limits(self, headers: dict[str, str]) -> dict[str, float]:
        """Rate-limit state from a response's headers, in normalised keys (see
        :mod:`distillery.generators.ratelimit_headers`); empty when the provider sends none."""
        return {}

    @abstractmethod
    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ErrorVerdict:
        """Judge a non-2xx answer."""
