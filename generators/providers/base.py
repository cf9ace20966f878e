"""The provider interface: what differs between wire formats, and nothing else.

A provider knows how to build one HTTP call for a chat request, how to read a successful answer
into a :class:`Completion`, and how to judge an error answer (:class:`ErrorVerdict`); and
everything else its wire format decides: reasoning knobs and their checks, structured-output
fields, rate-limit headers, token estimates for ``distillery plan``. Sending, retrying, timing
and lineage are the same for every provider and live in :mod:`distillery.generators.client`,
so a new wire format is one module plus one registration (docs/extending.md).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from distillery.config import SubmissionOptions, TeacherConfig
from distillery.generators.providers.traces import Visibility
from distillery.generators.ratelimit_headers import RateLimitHeaders
from distillery.generators.tokens import count_message_tokens

if TYPE_CHECKING:
    from distillery.generators.http import HttpSender
    from distillery.generators.providers.submissions import SubmissionApi

    #: What makes a provider's batch API: its class, called as
    #: ``(provider, teacher, sender, api_key, clock, sleep)``.
    SubmissionsFactory = Callable[
        [
            "Provider",
            TeacherConfig,
            HttpSender,
            str | None,
            Callable[[], float],
            Callable[[float], Awaitable[None]],
        ],
        SubmissionApi,
    ]

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


@dataclass(frozen=True)
class SubmissionLimits:
    """What one submission to a provider's batch API may hold, as the provider documents it.

    Sizes are in bytes, decimal (a documented "200 MB" is 200,000,000 here): smaller than
    either reading of the provider's megabyte, so a submission split at them is never refused.
    ``max_requests`` None: the provider documents no count (Gemini). ``inline_max_bytes``: below
    it requests may travel in the call itself rather than an uploaded file (Gemini's 20 MB).
    """

    max_requests: int | None
    max_bytes: int
    inline_max_bytes: int | None = None
    #: Whether every request of one submission must name the same model (OpenAI's file rule;
    #: Gemini's model is in the URL).
    one_model: bool = False
    #: Hours within which the provider promises a result (or expires what is left).
    window_h: int = 24

    def problem(self, options: SubmissionOptions, provider: str) -> str | None:
        """Why ``options`` ask for more than the provider takes (one line naming the field,
        relative to the teacher), or None."""
        if (
            options.max_requests is not None
            and self.max_requests is not None
            and options.max_requests > self.max_requests
        ):
            return (
                f"submissions.max_requests: {options.max_requests:,} is above {provider}'s cap "
                f"of {self.max_requests:,} requests per submission"
            )
        if options.max_bytes is not None and options.max_bytes > self.max_bytes:
            return (
                f"submissions.max_bytes: {options.max_bytes:,} is above {provider}'s cap of "
                f"{self.max_bytes:,} bytes per submission"
            )
        return None

    def within(self, options: SubmissionOptions) -> SubmissionLimits:
        """The limits one teacher's submissions are split at: the provider's, lowered where
        the teacher's ``submissions:`` block asks for less."""
        requests = self.max_requests
        if options.max_requests is not None:
            requests = min(options.max_requests, requests or options.max_requests)
        size = min(options.max_bytes or self.max_bytes, self.max_bytes)
        return replace(self, max_requests=requests, max_bytes=size)


class MalformedResponse(Exception):
    """A 2xx answer whose body is not what the wire format promises (retried: it was cheap)."""


class Provider(ABC):
    """One wire format: everything about it the rest of the code asks, and nothing else.

    Subclasses register themselves in :mod:`.registry`. What a provider does not override it
    does not support: the defaults refuse ``reasoning:`` and ``response_schema`` (at config
    load), send and read no rate-limit headers, and estimate tokens as OpenAI counts them.
    The provider batch APIs (OpenAI Batch, Anthropic Message Batches, Gemini batch mode) are
    wire-format business too: they belong here, beside :meth:`build_call` and
    :meth:`parse_success`, which a batch's requests and results reuse. A provider without one
    leaves :attr:`submission_limits` None, and ``delivery: batch`` is refused at config load.
    """

    name: ClassVar[str]
    #: The wire format spoken, as the emulator's formats name theirs: the provider's own name,
    #: unless it inherits its format from a provider it extends (``local`` speaks ``openai``).
    wire_format: ClassVar[str]
    #: Whether the provider charges ``max_tokens`` against its token limit at admission for
    #: good (OpenAI), rather than settling to the real usage (Anthropic's estimate-then-adjust).
    rate_limit_counts_max_tokens: ClassVar[bool] = False
    #: The headers its answers carry rate-limit state in; None when it sends none.
    rate_limit_headers: ClassVar[RateLimitHeaders | None] = None
    #: What one submission to its batch API may hold; None: it has no batch API.
    submission_limits: ClassVar[SubmissionLimits | None] = None

    # ------------------------------------------------------------------ the chat call

    @abstractmethod
    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        """The HTTP call for one chat request to ``teacher``."""

    @abstractmethod
    def parse_success(self, payload: Any, headers: dict[str, str]) -> Completion:
        """Read a 2xx JSON body; raise :class:`MalformedResponse` if it is not well-formed."""

    @abstractmethod
    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ErrorVerdict:
        """Judge a non-2xx answer."""

    def parse_rate_limits(self, headers: dict[str, str]) -> dict[str, float]:
        """Rate-limit state from a response's headers, in normalised keys (see
        :mod:`distillery.generators.ratelimit_headers`); empty when the provider sends none."""
        scheme = self.rate_limit_headers
        return scheme.parse(headers) if scheme is not None else {}

    # ------------------------------------------------------------------ reasoning

    def reasoning_problem(self, teacher: TeacherConfig) -> str | None:
        """Why ``teacher``'s ``reasoning:`` settings cannot be sent to this provider, or None;
        one line naming the field (relative to the teacher). Checked when the job loads.

        By default a provider has no reasoning knob, so asking for one is refused rather than
        sent as some other provider's.
        """
        if teacher.reasoning is None or not teacher.reasoning.enabled:
            return None
        return (
            f"reasoning: provider {self.name!r} has no reasoning knob distillery can set "
            "(remove reasoning:, or set enabled: false)"
        )

    def reasoning_fields(self, teacher: TeacherConfig) -> dict[str, Any]:
        """Body fields asking this provider to reason as ``teacher`` says (empty without
        reasoning); where in the body they go is :meth:`build_call`'s business."""
        return {}

    # ------------------------------------------------------------------ structured output

    def structured_output(self, schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
        """Request-body fields asking for an answer that is JSON matching ``schema`` (merged
        into the body, nested mappings key by key); see :mod:`distillery.generators.structured`.
        """
        raise NotImplementedError(f"provider {self.name!r} does not support response_schema")

    # ------------------------------------------------------------------ batch API

    def submission_api(
        self,
        teacher: TeacherConfig,
        sender: HttpSender,
        api_key: str | None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> SubmissionApi | None:
        """The provider's batch API for ``teacher`` over ``sender``
        (:mod:`~distillery.generators.providers.submissions`), or None when the wire format
        has none (an OpenAI-compatible server: llama.cpp, vLLM...).

        ``clock`` (unix seconds) and ``sleep`` (between retries) are injected by tests.
        """
        make = self.submissions()
        return None if make is None else make(self, teacher, sender, api_key, clock, sleep)

    def submissions(self) -> SubmissionsFactory | None:
        """The class implementing this wire format's batch API, imported only when asked
        for (a run without batch teachers never loads it); None: there is none."""
        return None

    # ------------------------------------------------------------------ estimates for the plan

    def prompt_tokens(self, messages: list[Message], model: str) -> int:
        """Prompt tokens of one request, as ``distillery plan`` estimates them (tiktoken:
        exact for OpenAI models, an estimate for others)."""
        return count_message_tokens(messages, model)

    def completion_bound(self, teacher: TeacherConfig) -> int | None:
        """The completion tokens one answer of ``teacher`` is bounded by, as far as the plan
        knows: ``params.max_tokens``, or what the provider sends in its place for a reasoning
        teacher (None: unbounded)."""
        return teacher.params.max_tokens
