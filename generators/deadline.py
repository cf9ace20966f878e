"""How long one attempt may take before it is a straggler, retried rather than waited on.

A flat read timeout of 600 s let one hung request hold a whole run for ten minutes while the
rest had long finished. An attempt's deadline instead follows what was asked and what the
teacher has shown:

- before :data:`WARM_UP` answers, ``FIRST_S + max_tokens / SLOW_TOKENS_PER_S`` — room for the
  slowest plausible decode of the longest answer asked for (no ``max_tokens``: the teacher's
  ``timeout_s``);
- after, :data:`MULTIPLE` times the slowest of the last :data:`WINDOW` answers, at least
  :data:`FLOOR_S` — a request several times slower than every recent one is stuck, not slow;
- never more than the teacher's ``timeout_s``, the hard cap the job sets.

An attempt past its deadline ends as a ``timeout`` failure and is retried like one (it may have
been billed: ``maybe_billed_twice`` counts it). The multiple is generous because a retry can
cost money while waiting only costs time.
"""

from __future__ import annotations

from collections import deque

WARM_UP = 20
WINDOW = 200
MULTIPLE = 4.0
FLOOR_S = 15.0
FIRST_S = 30.0
# Tokens per second of a slow decode: a loaded server or a large model, not a typical one.
SLOW_TOKENS_PER_S = 10.0


class AttemptDeadline:
    """One teacher's attempt deadline, learnt from the wire time of its answers."""

    def __init__(self, cap_s: float, max_tokens: int | None) -> None:
        self.cap_s = cap_s
        self.max_tokens = max_tokens
        self._recent: deque[float] = deque(maxlen=WINDOW)

    def observe(self, wire_s: float) -> None:
        """An attempt answered after ``wire_s`` seconds on the wire."""
        self._recent.append(wire_s)

    def seconds(self) -> float:
        """The deadline of the next attempt, and why (see the module docstring)."""
        if len(self._recent) >= WARM_UP:
            learnt = max(FLOOR_S, MULTIPLE * max(self._recent))
            return min(self.cap_s, learnt)
        if self.max_tokens is None:
            return self.cap_s
        return min(self.cap_s, FIRST_S + self.max_tokens / SLOW_TOKENS_PER_S)

    def describe(self) -> str:
        if len(self._recent) >= WARM_UP:
            return f"{MULTIPLE:g}x the slowest of the last {len(self._recent)} answers"
        if self.max_tokens is None:
            return "the teacher's timeout_s"
        return f"room for {self.max_tokens} tokens at {SLOW_TOKENS_PER_S:g} tokens/s"
