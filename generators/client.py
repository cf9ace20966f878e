"""Send one chat request to one teacher, with the one retry layer, and report what happened.

Retries live here and nowhere else (not in Prefect, not around the batch): tenacity drives
the retries (from the second attempt: the first runs without its per-request machinery),
waiting ``max(server hint, backoff)`` between them (:mod:`.retry`). Every attempt's
status is kept, because a retry after a lost answer may have been billed — lineage says so.

Outcomes, never exceptions, leave this module — except :class:`TeacherUnusable`, raised when the
answer proves every later request would fail too (a bad key), so the run stops at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from distillery.config import GenerationParams, TeacherConfig
from distillery.errors import FatalRunError
from distillery.generators.deadline import AttemptDeadline
from distillery.generators.http import (
    HttpSender,
    HttpTransportError,
    describe_error,
    json_body,
)
from distillery.generators.providers.base import (
    Completion,
    ErrorVerdict,
    HttpCall,
    MalformedResponse,
    Message,
    Provider,
)
from distillery.generators.providers.traces import split_trace
from distillery.generators.ratelimit import Limiter, Ticket
from distillery.generators.retry import MAX_HINT_S, wait_s
from distillery.generators.tokens import count_message_tokens


class TeacherUnusable(FatalRunError):
    """Every request to this teacher would fail (authentication, quota): stop the run."""


@dataclass
class _AttemptFailed(Exception):
    """One attempt went wrong; ``retryable`` decides whether tenacity tries again."""

    error_class: str
    message: str
    retryable: bool
    status: int | None = None
    retry_after_s: float | None = None
    rate_limits: dict[str, float] | None = None


@dataclass(frozen=True)
class Failure:
    """Why a request failed for good (one failure row)."""

    error_class: str
    message: str
    http_status: int | None


@dataclass
class Outcome:
    """What one request came to: a completion or a failure, and what it took.

    Its time, from ``started_at`` to the answer, is split three ways so the teacher's speed is
    told from our pacing: ``latency_ms`` is the last attempt's, from its admission to its
    answer (the teacher's time, on the wire); ``queue_ms`` is every attempt's wait for the
    limiter's admission (our pacing under rpm/tpm/concurrency limits); ``retry_ms`` is the
    rest, the earlier attempts and the backoffs between them (0 when the first attempt ended
    the request).
    """

    completion: Completion | None
    failure: Failure | None
    attempts: int
    attempt_statuses: list[str] = field(default_factory=list)
    maybe_billed_twice: int = 0
    request_hash: str | None = None
    latency_ms: float = 0.0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: Follow-up requests made to repair a structured answer (None: the job has no schema).
    repairs: int | None = None
    queue_ms: float = 0.0
    retry_ms: float = 0.0
    #: Clock reading when the latest attempt was admitted (None before the first).
    _admitted_at: float | None = field(default=None, init=False, repr=False, compare=False)

    def admitted(self, queued_at: float, now: float) -> None:
        """An attempt that began waiting for admission at ``queued_at`` is sent at ``now``
        (readings of the client's clock, in seconds)."""
        if self._admitted_at is not None:  # the previous attempt, and the wait after it
            self.retry_ms += (queued_at - self._admitted_at) * 1000.0
        self.queue_ms += (now - queued_at) * 1000.0
        self._admitted_at = now

    def ended(self, now: float) -> None:
        """The request ended at ``now``: the last attempt's time since its admission."""
        if self._admitted_at is not None:
            self.latency_ms = (now - self._admitted_at) * 1000.0


class TeacherClient:
    """One teacher's requests over its pooled :class:`~distillery.generators.http.HttpSender`."""

    def __init__(
        self,
        teacher: TeacherConfig,
        provider: Provider,
        http: HttpSender,
        limiter: Limiter | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.teacher = teacher
        self.provider = provider
        self.http = http
        self.limiter = limiter
        #: Times the parts of a request (:class:`Outcome`); injected by tests.
        self._clock = clock or time.perf_counter
        #: When an attempt is a straggler to retry rather than wait on (generators/deadline.py).
        self.deadline = AttemptDeadline(teacher.timeout_s, teacher.params.max_tokens)

    def _api_key(self) -> str | None:
        if self.teacher.api_key_env is None:
            return None
        key = os.environ.get(self.teacher.api_key_env)
        if not key:
            raise TeacherUnusable(
                f"teacher {self.teacher.name!r}: environment variable "
                f"{self.teacher.api_key_env} is not set"
            )
        return key

    async def complete(
        self,
        messages: list[Message],
        params: GenerationParams | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Outcome:
        """Send ``messages``, retrying what is worth retrying; never raises for one request.

        ``params`` replaces the teacher's parameters for this request (one sample of several
        asks with its own seed and temperature). ``extra_body`` is merged into the provider's
        request body, nested mappings key by key (structured output's fields, e.g. Gemini's
        inside ``generationConfig``)."""
        key = self._api_key()
        teacher = self.teacher
        if params is not None and params is not teacher.params:
            teacher = teacher.model_copy(update={"params": params})
        call = self.provider.build_call(teacher, messages, key)
        if extra_body:
            call = replace(call, body=merge_body(call.body, extra_body))
        # Counting a new text costs CPU (BENCHMARKS.md, "Flow overhead"; tokens.py remembers
        # it): only when a token window (configured, learnt from headers, or shared) will be
        # charged with it.
        prompt_tokens = (
            count_message_tokens(messages, self.teacher.model)
            if self.limiter is not None and self.limiter.counts_tokens
            else 0
        )
        # Created after the counting, so created_at and the first queue_ms start together.
        outcome = Outcome(
            completion=None, failure=None, attempts=0, request_hash=request_hash(call.body)
        )
        payload = json_body(call.body)
        try:
            try:
                outcome.attempts = 1
                outcome.completion = await self._attempt(
                    call.url, call.headers, payload, outcome, prompt_tokens
                )
            except _AttemptFailed as first:
                if not first.retryable or self.teacher.max_attempts == 1:
                    raise
                await asyncio.sleep(wait_s(first.retry_after_s, 0))
                outcome.completion = await self._retry(call, payload, outcome, prompt_tokens)
        except _AttemptFailed as exc:
            outcome.failure = Failure(exc.error_class, _scrub(exc.message, key), exc.status)
        except TeacherUnusable as exc:
            raise TeacherUnusable(_scrub(str(exc), key)) from None
        outcome.ended(self._clock())
        if outcome.completion is not None and self.teacher.reasoning is not None:
            outcome.completion = split_trace(outcome.completion, self.teacher.reasoning)
        return outcome

    async def _retry(
        self, call: HttpCall, payload: bytes, outcome: Outcome, prompt_tokens: int
    ) -> Completion:
        """Attempts 2..``max_attempts``, driven by tenacity.

        The first attempt runs without it: building tenacity's machinery costs CPU on every
        request (BENCHMARKS.md, "Flow overhead"), and nearly every request succeeds first time.
        Its wait already done, tenacity's attempt ``n`` is the request's attempt ``n + 1``.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.teacher.max_attempts - 1),
            wait=_wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, _AttemptFailed) and exc.retryable),
            reraise=True,
        )
        completion: Completion | None = None
        async for attempt in retrying:
            with attempt:
                outcome.attempts += 1
                completion = await self._attempt(
                    call.url, call.headers, payload, outcome, prompt_tokens
                )
        assert completion is not None  # tenacity re-raises the last failure
        return completion

    async def _attempt(
        self,
        url: str,
        headers: dict[str, str],
        payload: bytes,
        outcome: Outcome,
        prompt_tokens: int,
    ) -> Completion:
        """One attempt, admitted by the teacher's limiter and settled with what it learned."""
        limiter = self.limiter
        queued_at = self._clock()
        if limiter is None:
            outcome.admitted(queued_at, queued_at)
            return await self._send(url, headers, payload, outcome)
        ticket = await limiter.acquire(prompt_tokens)
        outcome.admitted(queued_at, self._clock())
        try:
            completion = await self._send(url, headers, payload, outcome, ticket)
        except _AttemptFailed as exc:
            limiter.release(ticket, rate_limited=exc.status == 429, headers=exc.rate_limits)
            raise
        except BaseException:
            limiter.release(ticket)
            raise
        used = None
        if completion.prompt_tokens is not None and completion.completion_tokens is not None:
            used = completion.prompt_tokens + completion.completion_tokens
        limiter.release(
            ticket,
            usage_tokens=used,
            completion_tokens=completion.completion_tokens,
            headers=completion.rate_limits,
        )
        return completion

    async def _send(
        self,
        url: str,
        headers: dict[str, str],
        payload: bytes,
        outcome: Outcome,
        ticket: Ticket | None = None,
    ) -> Completion:
        if ticket is not None and self.limiter is not None:
            # Counted against the windows from now, when it leaves, not from its admission.
            self.limiter.sent(ticket)
        sent_at = self._clock()
        deadline_s = self.deadline.seconds()
        try:
            if deadline_s < self.deadline.cap_s:
                response = await asyncio.wait_for(
                    self.http.request("POST", url, headers, payload), deadline_s
                )
            else:  # the transport's own read timeout is the teacher's timeout_s
                response = await self.http.request("POST", url, headers, payload)
        except TimeoutError as exc:
            outcome.attempt_statuses.append("timeout")
            if outcome.attempts < self.teacher.max_attempts:  # it reached the server
                outcome.maybe_billed_twice += 1
            raise _AttemptFailed(
                "timeout",
                f"no answer within {deadline_s:.0f}s ({self.deadline.describe()})",
                retryable=True,
            ) from exc
        except HttpTransportError as exc:
            outcome.attempt_statuses.append(exc.error_class)
            # The server may have answered (and billed) the request whose answer we lost.
            if exc.reached_server and outcome.attempts < self.teacher.max_attempts:
                outcome.maybe_billed_twice += 1
            raise _AttemptFailed(exc.error_class, str(exc), retryable=True) from exc
        status = response.status
        outcome.attempt_statuses.append(str(status))
        lowered = response.headers
        if ticket is not None:
            ticket.server_s = processing_s(lowered)
        if 200 <= status < 300:
            self.deadline.observe(self._clock() - sent_at)
            try:
                return self.provider.parse_success(json.loads(response.content), lowered)
            except (ValueError, MalformedResponse) as exc:
                # A 2xx was billed even if its body is unusable; retrying buys it again.
                if outcome.attempts < self.teacher.max_attempts:
                    outcome.maybe_billed_twice += 1
                raise _AttemptFailed(
                    "malformed_response", describe_error(exc), retryable=True, status=status
                ) from exc
        verdict: ErrorVerdict = self.provider.classify_error(status, lowered, response.content)
        if verdict.fatal_for_run:
            where = f" (key from {self.teacher.api_key_env})" if self.teacher.api_key_env else ""
            raise TeacherUnusable(
                f"teacher {self.teacher.name!r}: HTTP {status} {verdict.error_class}{where}: "
                f"{verdict.message}"
            )
        retryable = verdict.retryable and (
            verdict.retry_after_s is None or verdict.retry_after_s <= MAX_HINT_S
        )
        raise _AttemptFailed(
            verdict.error_class,
            verdict.message,
            retryable=retryable,
            status=status,
            retry_after_s=verdict.retry_after_s,
            rate_limits=self.provider.parse_rate_limits(lowered),
        )


def merge_body(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``extra`` laid over it; where both hold a mapping, merged recursively."""
    merged = dict(body)
    for name, value in extra.items():
        current = merged.get(name)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[name] = merge_body(current, value)
        else:
            merged[name] = value
    return merged


def processing_s(headers: dict[str, str]) -> float | None:
    """How long the server says it worked on a request (``openai-processing-ms``), or None.

    The limiter counts the request from (its answer's arrival - this): no earlier than the
    server started on it, however late the request reached it (a loaded machine, a queue).
    """
    raw = headers.get("openai-processing-ms")
    if raw is None:
        return None
    try:
        value = float(raw) / 1000.0
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def request_hash(body: dict[str, object]) -> str:
    """Fingerprint of exactly what was asked (model, messages, parameters; never the key,
    which travels in headers): lineage can prove two samples came from identical requests."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _wait(state: RetryCallState) -> float:
    """The wait after tenacity's attempt ``n``, the request's ``n + 1`` (see ``_retry``)."""
    exc = state.outcome.exception() if state.outcome else None
    hint = exc.retry_after_s if isinstance(exc, _AttemptFailed) else None
    return wait_s(hint, state.attempt_number)


def _scrub(text: str, secret: str | None) -> str:
    """Servers sometimes echo the key they were sent; it must never reach a log or a row."""
    return text.replace(secret, "***") if secret else text
