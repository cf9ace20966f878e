"""A run's spending cap: stop sending before the money runs out, not after.

Each request reserves its estimated cost before it is sent and settles to its real cost when
the answer arrives. A request is sent only if what was spent, plus what is reserved by requests
in flight, plus its own estimate stays within the budget; when only the reservations stand in
the way it waits for them to settle (estimates are pessimistic, so room usually frees up). The
run ends once even the spent amount leaves no room — overshooting by at most the estimation
error of the requests in flight, never by a whole batch.
"""

from __future__ import annotations

import asyncio


class Budget:
    """USD spent and reserved against a cap (shared by every teacher of a run)."""

    def __init__(self, limit_usd: float, spent_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self.exhausted = spent_usd >= limit_usd
        self._settled = asyncio.Event()

    async def reserve(self, estimate_usd: float) -> bool:
        """Reserve ``estimate_usd`` once it fits; False (and exhausted) when it never can."""
        while not self.exhausted:
            if self.spent_usd + estimate_usd > self.limit_usd:
                self.exhausted = True
                break
            if self.spent_usd + self.reserved_usd + estimate_usd <= self.limit_usd:
                self.reserved_usd += estimate_usd
                return True
            self._settled.clear()
            await self._settled.wait()
        return False

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd
        self._settled.set()

    def room_for(self, estimate_usd: float) -> bool:
        """Whether ``estimate_usd`` fits now, beside what is spent and reserved (no waiting)."""
        return self.spent_usd + self.reserved_usd + estimate_usd <= self.limit_usd

    def hold(self, estimate_usd: float) -> None:
        """Reserve ``estimate_usd`` without waiting or checking: for a provider submission,
        whose reservation stands until it is collected, possibly in another invocation, so
        waiting for room would wait on itself (callers check :meth:`room_for` first, or hold
        what an earlier invocation already committed)."""
        self.reserved_usd += estimate_usd
