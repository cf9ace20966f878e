"""Counters a test or benchmark reads back to check what the client really did.

A client's own numbers can be wrong in exactly the way under test (a retry counted twice, a
lost answer billed once); the server's view is the ground truth. Updated only from the event
loop thread, so plain attributes need no lock.

Every API request is counted once in ``requests`` and once in ``by_status``: under its HTTP
status, or, when no complete HTTP response reached the client, under the name of the transport
fault (``"timeout"``, ``"reset"``, ``"truncate"``), so ``requests == sum(by_status.values())``.
A ``malformed-json`` answer is a 200. ``served_ok`` counts clean answers only, ``served_flagged``
successes flagged by a fault (length, content-filter, empty, refusal); ``prompt_tokens`` and
``completion_tokens`` sum the usage those two reported, i.e. what the client can reconcile.
Answers lost to ``truncate`` or ``malformed-json`` were generated (a real provider bills them)
but are not in the token totals; ``faults`` counts every injection by name.

With limits configured (:mod:`.limits`), ``rate_limited`` counts the requests they refused
(429s, also in ``by_status``; never in ``faults``, which are injected) and ``max_in_flight`` is
the most requests in flight at once, admitted and not yet answered. Without limits the server
does no limit work, so ``rate_limited`` stays 0 and ``max_in_flight`` is None (not tracked).

With ``dup_rate`` or ``near_dup_rate`` set (:mod:`.duplicates`), ``dup_answers`` and
``near_dup_answers`` count the clean answers that were an earlier answer verbatim or lightly
edited; they are also in ``served_ok``, since they are clean successful answers.
"""

from __future__ import annotations

from distillery.emulator.duplicates import Copy


class Stats:
    """Totals since start or the last reset."""

    requests: int
    by_status: dict[int | str, int]
    served_ok: int
    served_flagged: int
    faults: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    first_request_at: float | None
    last_request_at: float | None
    rate_limited: int
    max_in_flight: int | None
    dup_answers: int
    near_dup_answers: int

    def __init__(self, track_in_flight: bool = False) -> None:
        self._track_in_flight = track_in_flight
        self.reset()

    def reset(self) -> None:
        """Zero everything."""
        self.requests = 0
        self.by_status = {}
        self.served_ok = 0
        self.served_flagged = 0
        self.faults = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_request_at = None
        self.last_request_at = None
        self.rate_limited = 0
        self.max_in_flight = 0 if self._track_in_flight else None
        self.dup_answers = 0
        self.near_dup_answers = 0

    def received(self, now: float) -> None:
        """An API request arrived at ``now`` (unix seconds), whatever becomes of it."""
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at = now
        self.last_request_at = now

    def answered(self, status: int | str) -> None:
        """The response status sent for an API request, or the transport fault that ate it."""
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def injected(self, fault: str) -> None:
        """A fault replaced the normal answer to a request."""
        self.faults[fault] = self.faults.get(fault, 0) + 1

    def served(self, prompt_tokens: int, completion_tokens: int, copy: Copy | None = None) -> None:
        """A clean answer was sent: these are the tokens a real provider would bill. ``copy``
        says it copied an earlier answer, verbatim or edited."""
        self.served_ok += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if copy is Copy.DUP:
            self.dup_answers += 1
        elif copy is Copy.NEAR_DUP:
            self.near_dup_answers += 1

    def flagged(self, prompt_tokens: int, completion_tokens: int) -> None:
        """A flagged success was sent; its usage is billed like a clean answer's."""
        self.served_flagged += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def refused(self) -> None:
        """The configured limits refused a request (its status is counted by :meth:`answered`)."""
        self.rate_limited += 1

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy (status codes as strings, as JSON object keys must be).

        Keys sort as strings: three-digit statuses first, in numeric order, then fault names.
        """
        return {
            "requests": self.requests,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items(), key=_text)},
            "served_ok": self.served_ok,
            "served_flagged": self.served_flagged,
            "faults": dict(sorted(self.faults.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "rate_limited": self.rate_limited,
            "max_in_flight": self.max_in_flight,
            "dup_answers": self.dup_answers,
            "near_dup_answers": self.near_dup_answers,
        }


def _text(item: tuple[int | str, int]) -> str:
    return str(item[0])
