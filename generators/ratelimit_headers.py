"""Rate-limit headers, normalised across providers.

Keys: ``{requests,tokens,input_tokens,output_tokens}_{limit,remaining,reset_s}``, where
``reset_s`` is seconds until the window refills. OpenAI sends Go durations
(``x-ratelimit-reset-requests: 6m0s``); Anthropic sends RFC 3339 instants
(``anthropic-ratelimit-tokens-reset``). Gemini and OpenAI-compatible servers send none.
Unparsable values are left out: a malformed header must never fail a request.
"""

from __future__ import annotations

import time

from distillery.generators.durations import parse_go_duration, parse_rfc3339


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def openai_rate_limits(headers: dict[str, str]) -> dict[str, float]:
    parsed: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        for field in ("limit", "remaining"):
            value = _number(headers.get(f"x-ratelimit-{field}-{kind}"))
            if value is not None:
                parsed[f"{kind}_{field}"] = value
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_go_duration(reset) if reset is not None else None
        if seconds is not None:
            parsed[f"{kind}_reset_s"] = seconds
    return parsed


def anthropic_rate_limits(headers: dict[str, str], now: float | None = None) -> dict[str, float]:
    parsed: dict[str, float] = {}
    clock = time.time() if now is None else now
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        key = kind.replace("-", "_")
        for field in ("limit", "remaining"):
            value = _number(headers.get(f"anthropic-ratelimit-{kind}-{field}"))
            if value is not None:
                parsed[f"{key}_{field}"] = value
        reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
        moment = parse_rfc3339(reset) if reset is not None else None
        if moment is not None:
            parsed[f"{key}_reset_s"] = max(0.0, moment.timestamp() - clock)
    return parsed
