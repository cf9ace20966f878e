"""What was served in the last minute, for the rate-limit headers every success carries.

Without configured limits these headers report nominal, generous limits; with them, the
limited dimensions are reported by :mod:`.limits`, which also enforces them.

Per-second buckets in a ring keep each update O(1) and allocation-free, which matters at
thousands of requests a second; the window is therefore exact to the second, which is finer
than any client's use of these headers.
"""

from __future__ import annotations

from dataclasses import dataclass

# Reported when no limit is configured. Clients pace by these headers, so they must be far
# above anything the emulator can serve (BENCHMARKS.md, "HTTP stack"), or an unlimited emulator
# would announce limits it never enforces and throttle every client that believes it.
NOMINAL_REQUESTS_PER_MINUTE = 10_000_000
NOMINAL_TOKENS_PER_MINUTE = 10_000_000_000
WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits and what is left of them after the current request, in neutral units.

    ``reset_*`` is the time, in seconds, for usage to refill to the full limit at the limit's
    own rate, which is how OpenAI fills its ``x-ratelimit-reset-*`` headers.
    """

    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int
    reset_requests_s: float
    reset_tokens_s: float


class UsageWindow:
    """Requests and tokens served in the trailing ``seconds`` (by a monotonic clock)."""

    requests: int
    tokens: int

    def __init__(self, seconds: int = WINDOW_SECONDS) -> None:
        self._size = seconds
        self.clear()

    def add(self, now: float, tokens: int) -> None:
        """Count one request of ``tokens`` tokens at time ``now``."""
        second = int(now)
        self._advance(second)
        slot = second % self._size
        self._requests[slot] += 1
        self._tokens[slot] += tokens
        self.requests += 1
        self.tokens += tokens

    def used(self, now: float) -> tuple[int, int]:
        """(requests, tokens) within the window ending at ``now``."""
        self._advance(int(now))
        return self.requests, self.tokens

    def quota(
        self,
        now: float,
        limit_requests: int = NOMINAL_REQUESTS_PER_MINUTE,
        limit_tokens: int = NOMINAL_TOKENS_PER_MINUTE,
    ) -> Quota:
        """The limits as seen at ``now``."""
        requests, tokens = self.used(now)
        return Quota(
            limit_requests=limit_requests,
            limit_tokens=limit_tokens,
            remaining_requests=max(0, limit_requests - requests),
            remaining_tokens=max(0, limit_tokens - tokens),
            reset_requests_s=min(requests, limit_requests) * self._size / limit_requests,
            reset_tokens_s=min(tokens, limit_tokens) * self._size / limit_tokens,
        )

    def clear(self) -> None:
        """Forget everything, so a stats reset also restores the full quota."""
        self._requests = [0] * self._size
        self._tokens = [0] * self._size
        self._second: int | None = None
        self.requests = 0
        self.tokens = 0

    def _advance(self, second: int) -> None:
        last = self._second
        if last is None or second - last >= self._size:
            if self.requests or self.tokens:
                self.clear()
            self._second = second
            return
        for expired in range(last + 1, second + 1):
            slot = expired % self._size
            self.requests -= self._requests[slot]
            self.tokens -= self._tokens[slot]
            self._requests[slot] = 0
            self._tokens[slot] = 0
        if second > last:
            self._second = second
