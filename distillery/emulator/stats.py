"""Counters a test or benchmark reads back to check what the client really did.

A client's own numbers can be wrong in exactly the way under test (a retry counted twice, a
lost answer billed once); the server's view is the ground truth. Updated only from the event
loop thread, so plain attributes need no lock.
"""

from __future__ import annotations


class Stats:
    """Totals since start or the last reset."""

    requests: int
    by_status: dict[int, int]
    served_ok: int
    prompt_tokens: int
    completion_tokens: int
    first_request_at: float | None
    last_request_at: float | None

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero everything."""
        self.requests = 0
        self.by_status = {}
        self.served_ok = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_request_at = None
        self.last_request_at = None

    def received(self, now: float) -> None:
        """An API request arrived at ``now`` (unix seconds), whatever becomes of it."""
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at = now
        self.last_request_at = now

    def answered(self, status: int) -> None:
        """The response status sent for an API request."""
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def served(self, prompt_tokens: int, completion_tokens: int) -> None:
        """A clean answer was sent: these are the tokens a real provider would bill."""
        self.served_ok += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy (status codes as strings, as JSON object keys must be)."""
        return {
            "requests": self.requests,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "served_ok": self.served_ok,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
        }
