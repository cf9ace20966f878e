"""When to retry a request and how long to wait: the official SDKs' rules, in one place.

openai-python and anthropic-sdk-python share the algorithm (PROVIDERS.md): obey
``x-should-retry``; otherwise retry 408, 409, 429 and every 5xx. Wait for the server's hint
(``retry-after-ms``, then ``retry-after`` as seconds or an HTTP date) when it is positive and at
most :data:`MAX_HINT_S`, else ``min(0.5 * 2**n, 8) * (1 - 0.25 * random())``. We always wait at
least the backoff: a hint of 1 ms from a struggling server should not become a retry storm.
"""

from __future__ import annotations

import math
import random
import time
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 409, 429})
MAX_HINT_S = 120.0
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


def status_is_retryable(status: int, headers: dict[str, str]) -> bool:
    """The SDKs' default verdict for an HTTP status, overridden by ``x-should-retry``."""
    should = headers.get("x-should-retry", "").strip().lower()
    if should == "true":
        return True
    if should == "false":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(headers: dict[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or None when it gives no usable hint.

    Header names must already be lower-case. Zero, negative, infinite and unparsable values
    are no hint at all (the SDKs then fall back to their backoff).
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        seconds = _finite_float(raw_ms)
        if seconds is not None:
            return _usable(seconds / 1000.0)
    raw = headers.get("retry-after")
    if raw is None or not raw.strip():
        return None
    seconds = _finite_float(raw)
    if seconds is None:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return _usable(seconds)


def backoff_s(retries_so_far: int, rng: random.Random | None = None) -> float:
    """The SDKs' exponential backoff with up to 25% jitter downwards."""
    draw = (rng or random).random()
    return min(INITIAL_BACKOFF_S * 2.0**retries_so_far, MAX_BACKOFF_S) * (1.0 - 0.25 * draw)


def wait_s(hint_s: float | None, retries_so_far: int, rng: random.Random | None = None) -> float:
    """How long to sleep before the next attempt: ``max(server hint, backoff)``."""
    backoff = backoff_s(retries_so_far, rng)
    if hint_s is not None and 0 < hint_s <= MAX_HINT_S:
        return max(hint_s, backoff)
    return backoff


def _finite_float(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _usable(seconds: float) -> float | None:
    return seconds if seconds > 0 else None
