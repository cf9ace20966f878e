"""Server-side rate limits: requests and tokens per sliding window, and requests in flight.

Configured with ``rpm``, ``tpm`` and ``max_concurrency`` (:class:`.options.EmulatorOptions`).
``window_s`` compresses the provider's one-minute window for tests and benchmarks; the limits
scale with it, so ``rpm=1200, window_s=6`` admits 120 requests in any 6 s.

Semantics, chosen to match what real providers do and what a pacing client needs:

- **Sliding, not fixed buckets.** A request arriving at ``now`` is weighed against what was
  admitted in ``(now - window_s, now]``: it is admitted if fewer requests than the request
  allowance are in there, and if the tokens in there plus its own fit the token allowance.
  Hence no interval of ``window_s`` seconds ever holds more than the allowance, wherever it
  starts (a fixed bucket lets twice the allowance through across a bucket boundary).
- **Allowances.** Requests: ``ceil(rpm * window_s / 60)``, i.e. a request is admitted while the
  window holds fewer than ``rpm * window_s / 60``, so a client pacing at exactly ``rpm`` is never
  refused for rounding. Tokens: ``floor(tpm * window_s / 60)``: the tokens of a window never
  exceed the configured rate.
- **Tokens are charged at admission, as OpenAI does, and never corrected.** The charge is the
  prompt tokens plus the request's ``max_tokens`` (``max_completion_tokens``,
  ``maxOutputTokens``); a request without one is charged the completion the emulator will send
  (answers are deterministic, so the emulator knows it before answering). A flagged fault
  (``length``, ``empty``, ...) does not change the charge, nor does a copy of an earlier answer
  sent instead (``dup_rate``, ``near_dup_rate``: :mod:`.duplicates`; its usage is its own).
  The charge is therefore known before any work is done, the 429 hint is exact, and the
  window only ever grows by admissions, which keeps it an append-only log. Clients that
  reconcile a reservation down to the billed usage will see a little less room than they
  expect, as they would against OpenAI.
- **Refused requests cost nothing**: they are not counted in the window (so a hint stays true
  however many clients retry early) nor in flight.
- **Concurrency.** A request is in flight from its admission until its response is handed to
  aiohttp (latency, hangs and transport faults included).
- **One limit state per emulator**, shared by every format and model, like one organisation's
  key being used through three APIs at once.
- **Quantized enforcement** (``quantum_s``, optional). OpenAI documents that limits "may be
  quantized", enforced over shorter periods: 60,000 RPM may be enforced as 1,000 requests per
  second. With ``quantum_s`` the same limits are also enforced over a second, shorter sliding
  window of that length (allowances scaled to it the same way), so a client that sends a
  window's allowance in a burst is refused even though the minute would hold it; only a client
  that paces its requests gets the whole limit. A request with more tokens than a quantum allows
  (but not more than the window does) is admitted into an empty quantum, or it could never be.

The hint of a refusal (:attr:`Refusal.wait_s`) is the true time until the window admits that
request, so a client that waits for it gets in on its next try unless another client took the
room first. A concurrency refusal cannot know when a slot frees; it hints the mean time between
two completions at full concurrency (Little's law: mean latency / ``max_concurrency``).

Each admission is O(1) amortised (an append and the expiry of old entries); the hint of a token
refusal is a binary search over cumulative token sums, O(log n).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, replace
from enum import StrEnum

from distillery.emulator.window import Quota, UsageWindow

SECONDS_PER_MINUTE = 60.0
#: Bounds of the hint of a concurrency refusal, in seconds.
CONCURRENCY_HINT_MIN_S = 0.01
CONCURRENCY_HINT_MAX_S = 1.0
# Entries expired from the head of the log before it is compacted (amortises the copy).
_COMPACT_AFTER = 1024


class Refused(StrEnum):
    """Why a request was refused."""

    REQUESTS = "requests"  # the window holds its allowance of requests
    TOKENS = "tokens"  # the request's tokens do not fit what is left of the window's
    TOO_LARGE = "too_large"  # more tokens than a whole window allows: no wait will help
    CONCURRENCY = "concurrency"  # max_concurrency requests are in flight


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the limits refuse, with what a format needs to word its 429.

    ``wait_s`` is the hint (``math.inf`` for :attr:`Refused.TOO_LARGE`). ``limit`` is the limit
    as configured (per minute, or in flight); ``allowance`` and ``used`` are in the units of the
    window (requests or tokens in ``window_s``, or requests in flight); ``requested`` is what the
    request asked for (1 request, or its token charge). ``quota`` fills the rate-limit headers:
    the refusing dimension shows ``remaining`` 0 and ``reset`` = the hint.
    """

    reason: Refused
    wait_s: float
    limit: int
    allowance: int
    used: int
    requested: int
    window_s: float
    quota: Quota | None = None

    @property
    def wait_ms(self) -> int:
        """The hint in whole milliseconds, rounded up (at least 1): never earlier than true."""
        return max(1, math.ceil(round(self.wait_s * 1000, 6)))

    @property
    def wait_whole_s(self) -> int:
        """The hint in whole seconds, rounded up (at least 1), for ``retry-after``."""
        return max(1, math.ceil(round(self.wait_s, 9)))

    @property
    def retryable(self) -> bool:
        """False when no wait can make the request fit."""
        return math.isfinite(self.wait_s)

    @property
    def per(self) -> str:
        """The window as rate-limit messages name it: ``min``, or e.g. ``6s`` when compressed."""
        return "min" if self.window_s == SECONDS_PER_MINUTE else f"{self.window_s:g}s"


def request_allowance(rpm: int, window_s: float) -> int:
    """Requests admitted per window: ``ceil(rpm * window_s / 60)`` (float noise ignored)."""
    return max(1, math.ceil(round(rpm * window_s / SECONDS_PER_MINUTE, 9)))


def token_allowance(tpm: int, window_s: float) -> int:
    """Tokens admitted per window: ``floor(tpm * window_s / 60)`` (float noise ignored)."""
    return math.floor(round(tpm * window_s / SECONDS_PER_MINUTE, 9))


class SlidingWindow:
    """Admissions in the trailing ``window_s`` seconds, against request and token allowances.

    Pure: the caller passes the time (non-decreasing, e.g. ``time.monotonic()``), so the
    invariant (no ``window_s`` interval ever holds more than an allowance) can be tested with a
    fake clock. An admission at ``t`` counts until ``t + window_s`` (exclusive). ``None``
    disables a dimension.

    The log is two parallel lists, admission times and cumulative token charges, with a head
    index past the expired entries: appends and expiry are O(1) amortised, and "when will
    ``n`` tokens have left the window" is a binary search.
    """

    def __init__(self, window_s: float, max_requests: int | None, max_tokens: int | None) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.clear()

    def clear(self) -> None:
        """Forget every admission."""
        self._times: list[float] = []
        self._cumulative: list[int] = []  # tokens admitted up to and including each entry
        self._head = 0  # entries before it have left the window
        self._expired = 0  # cumulative tokens of the entries before the head
        self._total = 0  # cumulative tokens of every entry

    def used(self, now: float) -> tuple[int, int]:
        """(requests, tokens) admitted within the window ending at ``now``."""
        self._expire(now)
        return len(self._times) - self._head, self._total - self._expired

    def check(self, now: float, tokens: int = 0) -> Refusal | None:
        """Why a request of ``tokens`` tokens cannot be admitted at ``now``, or None if it can.

        When both allowances refuse, the refusal names the one that frees last, and its wait
        is the longer one: the time until both admit the request.
        """
        self._expire(now)
        requests, used_tokens = len(self._times) - self._head, self._total - self._expired
        refusal: Refusal | None = None
        if self.max_requests is not None and requests >= self.max_requests:
            # The oldest entries must leave until one fewer than the allowance remain.
            leaving = self._head + requests - self.max_requests
            refusal = Refusal(
                Refused.REQUESTS,
                self._times[leaving] + self.window_s - now,
                limit=0,
                allowance=self.max_requests,
                used=requests,
                requested=1,
                window_s=self.window_s,
            )
        if self.max_tokens is not None:
            excess = used_tokens + tokens - self.max_tokens
            if tokens > self.max_tokens:
                return Refusal(
                    Refused.TOO_LARGE,
                    math.inf,
                    limit=0,
                    allowance=self.max_tokens,
                    used=used_tokens,
                    requested=tokens,
                    window_s=self.window_s,
                )
            if excess > 0:
                # The first entry by whose expiry ``excess`` tokens have left the window.
                leaving = bisect_left(self._cumulative, self._expired + excess, lo=self._head)
                wait = self._times[leaving] + self.window_s - now
                if refusal is None or wait > refusal.wait_s:
                    refusal = Refusal(
                        Refused.TOKENS,
                        wait,
                        limit=0,
                        allowance=self.max_tokens,
                        used=used_tokens,
                        requested=tokens,
                        window_s=self.window_s,
                    )
        return refusal

    def record(self, now: float, tokens: int = 0) -> None:
        """Count an admission of ``tokens`` tokens at ``now`` (without checking it)."""
        self._total += tokens
        self._times.append(now)
        self._cumulative.append(self._total)

    def admit(self, now: float, tokens: int = 0) -> Refusal | None:
        """Admit and count the request if the allowances let it in; else say why not."""
        refusal = self.check(now, tokens)
        if refusal is None:
            self.record(now, tokens)
        return refusal

    def requests_reset_s(self, now: float) -> float:
        """Time until the window admits one more request (0 if it would now)."""
        if self.max_requests is None:
            return 0.0
        refusal = self.check(now, 0)
        return 0.0 if refusal is None else refusal.wait_s

    def tokens_reset_s(self, now: float, tokens: int) -> float:
        """Time until the window admits ``tokens`` more tokens (0 if it would now)."""
        if self.max_tokens is None:
            return 0.0
        self._expire(now)
        used = self._total - self._expired
        excess = used + min(tokens, self.max_tokens) - self.max_tokens
        if excess <= 0:
            return 0.0
        leaving = bisect_left(self._cumulative, self._expired + excess, lo=self._head)
        return self._times[leaving] + self.window_s - now

    def _expire(self, now: float) -> None:
        times, head = self._times, self._head
        horizon = now - self.window_s
        end = len(times)
        while head < end and times[head] <= horizon:
            head += 1
        if head == self._head:
            return
        self._expired = self._cumulative[head - 1]
        if head == end:
            times.clear()
            self._cumulative.clear()
            head = 0
        elif head >= _COMPACT_AFTER and head * 2 >= end:
            del times[:head]
            del self._cumulative[:head]
            head = 0
        self._head = head


def _ceil_ms(seconds: float) -> float:
    """``seconds`` rounded up to the millisecond, so a reset header is never early."""
    return math.ceil(round(seconds * 1000, 6)) / 1000


class Limiter:
    """The configured limits of one emulator: a sliding window and an in-flight count.

    The server asks :meth:`admit` after a request is parsed and, if admitted, calls
    :meth:`release` once its response is done. :meth:`quota` fills the rate-limit headers: for
    a limited dimension ``limit`` is the per-minute limit as configured, ``remaining`` what the
    window still admits right now (in window units: with the default one-minute window that is
    the provider's meaning; with a compressed one it is what a client can send before being
    refused), ``reset`` the time until the window admits another request like the one
    answered (0 while it still would). Unlimited dimensions report the nominal limits of
    :class:`~.window.UsageWindow`, as without limits.
    """

    def __init__(
        self,
        *,
        rpm: int | None,
        tpm: int | None,
        max_concurrency: int | None,
        window_s: float,
        latency_ms: float = 0.0,
        quantum_s: float | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self.window_s = window_s
        self.counts_tokens = tpm is not None
        self.window = self._sliding(window_s)
        #: The shorter window of quantized enforcement (None: the limits hold per window only).
        self.quantum = None if quantum_s is None else self._sliding(quantum_s)
        self.in_flight = 0
        hint = latency_ms / 1000 / max_concurrency if max_concurrency else 0.0
        self.concurrency_hint_s = min(CONCURRENCY_HINT_MAX_S, max(CONCURRENCY_HINT_MIN_S, hint))

    def _sliding(self, length_s: float) -> SlidingWindow | None:
        """A window of ``length_s`` over the configured limits, scaled to its length."""
        rpm, tpm = self.rpm, self.tpm
        if rpm is None and tpm is None:
            return None
        return SlidingWindow(
            length_s,
            None if rpm is None else request_allowance(rpm, length_s),
            None if tpm is None else token_allowance(tpm, length_s),
        )

    def clear(self) -> None:
        """Forget every admission (a stats reset)."""
        for window in (self.window, self.quantum):
            if window is not None:
                window.clear()

    def crowded(self, now: float, usage: UsageWindow) -> Refusal | None:
        """The refusal of any request while ``max_concurrency`` requests are in flight, or None.

        Needs no token count: the server asks it first, before counting a request's tokens.
        """
        limit = self.max_concurrency
        if limit is None or self.in_flight < limit:
            return None
        refusal = Refusal(
            Refused.CONCURRENCY,
            self.concurrency_hint_s,
            limit=limit,
            allowance=limit,
            used=self.in_flight,
            requested=1,
            window_s=self.window_s,
        )
        return _with(refusal, limit, self.quota(now, 0, usage))

    def admit(self, now: float, tokens: int, usage: UsageWindow) -> Refusal | None:
        """Admit a request charged ``tokens`` at ``now`` (and count it in flight), or refuse it.

        Concurrency is checked first, then the window (a refused request is not counted).
        """
        crowded = self.crowded(now, usage)
        if crowded is not None:
            return crowded
        window, quantum = self.window, self.quantum
        if window is not None:
            refusal = window.check(now, tokens)
            if refusal is None and quantum is not None:
                cap = quantum.max_tokens
                refusal = quantum.check(now, tokens if cap is None else min(tokens, cap))
            if refusal is not None:
                configured = self.rpm if refusal.reason is Refused.REQUESTS else self.tpm
                assert configured is not None  # a dimension refuses only when it is limited
                return _with(refusal, configured, self.quota(now, tokens, usage, refusal))
            window.record(now, tokens)
            if quantum is not None:
                quantum.record(now, tokens)
        self.in_flight += 1
        return None

    def release(self) -> None:
        """An admitted request's response is done."""
        self.in_flight -= 1

    def quota(
        self, now: float, tokens: int, usage: UsageWindow, refusal: Refusal | None = None
    ) -> Quota:
        """Rate-limit header values at ``now`` after a request charged ``tokens``.

        With ``refusal``, its dimension shows ``remaining`` 0 and the refusal's wait as reset.
        """
        window = self.window
        rpm, tpm = self.rpm, self.tpm
        nominal = usage.quota(now) if rpm is None or tpm is None else None
        if window is not None:
            requests, used_tokens = window.used(now)
        else:
            requests = used_tokens = 0
        if rpm is not None and window is not None and window.max_requests is not None:
            limit_requests = rpm
            remaining_requests = max(0, window.max_requests - requests)
            reset_requests = window.requests_reset_s(now)
        else:
            assert nominal is not None
            limit_requests = nominal.limit_requests
            remaining_requests = nominal.remaining_requests
            reset_requests = nominal.reset_requests_s
        if tpm is not None and window is not None and window.max_tokens is not None:
            limit_tokens = tpm
            remaining_tokens = max(0, window.max_tokens - used_tokens)
            reset_tokens = window.tokens_reset_s(now, tokens)
        else:
            assert nominal is not None
            limit_tokens = nominal.limit_tokens
            remaining_tokens = nominal.remaining_tokens
            reset_tokens = nominal.reset_tokens_s
        if refusal is not None and refusal.retryable:
            if refusal.reason is Refused.REQUESTS:
                remaining_requests, reset_requests = 0, refusal.wait_s
            elif refusal.reason is Refused.TOKENS:
                remaining_tokens, reset_tokens = 0, refusal.wait_s
        return Quota(
            limit_requests=limit_requests,
            limit_tokens=limit_tokens,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            reset_requests_s=_ceil_ms(reset_requests),
            reset_tokens_s=_ceil_ms(reset_tokens),
        )


def _with(refusal: Refusal, limit: int, quota: Quota) -> Refusal:
    """``refusal`` with the configured ``limit`` and the header values filled in."""
    return replace(refusal, limit=limit, quota=quota)
