"""Rate-limit headers, normalised across providers.

Keys: ``{requests,tokens,input_tokens,output_tokens}_{limit,remaining,reset_s}``, where
``reset_s`` is seconds until the window refills. Which headers a provider sends is its own
business: each provider that sends any declares a :class:`RateLimitHeaders` (its
``rate_limit_headers``), and this module reads them all the same way. OpenAI sends Go durations
(``x-ratelimit-reset-requests: 6m0s``, :func:`reset_after`); Anthropic sends RFC 3339 instants
(``anthropic-ratelimit-tokens-reset``, :func:`reset_at`). Gemini and OpenAI-compatible servers
send none. Unparsable values are left out: a malformed header must never fail a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from distillery.generators.durations import parse_go_duration, parse_rfc3339

#: Seconds until a window refills, from a reset header's text and the time now (None: the
#: caller did not say, read the wall clock if needed); None when the text is unparsable.
ResetParser = Callable[[str, float | None], float | None]


def reset_after(raw: str, now: float | None) -> float | None:
    """A reset given as a duration from now (OpenAI: ``6m0s``)."""
    return parse_go_duration(raw)


def reset_at(raw: str, now: float | None) -> float | None:
    """A reset given as an instant (Anthropic: ``2026-01-01T00:00:30Z``); never negative."""
    moment = parse_rfc3339(raw)
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RateLimitHeaders:
    """Where one provider puts its rate-limit state.

    ``name`` is a header name with ``{kind}`` (one of ``kinds``, as the provider spells it:
    ``input-tokens``) and ``{field}`` (``limit``, ``remaining`` or ``reset``).
    """

    name: str
    kinds: tuple[str, ...]
    reset: ResetParser

    def parse(self, headers: dict[str, str], now: float | None = None) -> dict[str, float]:
        """The normalised state in ``headers`` (lower-cased names); ``now`` is the wall-clock
        time reset instants count from (default: read it)."""
        parsed: dict[str, float] = {}
        for kind in self.kinds:
            key = kind.replace("-", "_")
            for field in ("limit", "remaining"):
                value = _number(headers.get(self.name.format(kind=kind, field=field)))
                if value is not None:
                    parsed[f"{key}_{field}"] = value
            raw = headers.get(self.name.format(kind=kind, field="reset"))
            seconds = self.reset(raw, now) if raw is not None else None
            if seconds is not None:
                parsed[f"{key}_reset_s"] = seconds
        return parsed


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None
