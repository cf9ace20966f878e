"""Parsers for the time values providers put in headers and error bodies.

- Go durations (OpenAI ``x-ratelimit-reset-*``): ``6m0s``, ``12ms``, ``1h2m3s``, ``1.5s``.
- Protobuf durations (Gemini ``RetryInfo.retryDelay``): ``45.837906927s`` — a Go duration too.
- RFC 3339 timestamps (Anthropic ``anthropic-ratelimit-*-reset``): ``2026-01-01T00:00:30Z``.

Each returns None for text it does not understand: a malformed header must never fail a request.
"""

from __future__ import annotations

import re
from datetime import datetime

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go-style duration string, or None."""
    raw = text.strip()
    if not raw:
        return None
    if raw == "0":
        return 0.0
    position, total = 0, 0.0
    for match in _PART.finditer(raw):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total if position == len(raw) and position > 0 else None


def parse_rfc3339(text: str) -> datetime | None:
    """An aware datetime from an RFC 3339 timestamp, or None."""
    raw = text.strip()
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
