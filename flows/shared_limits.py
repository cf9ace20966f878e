"""Rate limits shared by every worker of a run, held by the Prefect server.

Prefect's global concurrency limits in rate-limit mode hold across processes and machines, but
each acquisition is a server round trip (p50 ~35 ms, spikes to seconds; FINDINGS.md), so a
worker never acquires per request: it leases a block of requests or tokens (about 2% of a
window's allowance) and spends it through its local limiter (:class:`LeaseGate`).

Sizing: a rate limit with capacity ``C`` slots decaying at ``r`` per second lets through at most
``C + r * W`` in any window ``W``. For that to stay within the provider's allowance ``A`` per
window, ``r = (A - C) / W``. Leased credit is spent a little after it is leased, and requests
reach the provider with network jitter, so the target is :data:`HEADROOM` of ``A``: with ``C``
two blocks, the workers of a run could together use about 93% of the limit, and never all of it.

Measured, they use far less (BENCHMARKS.md, utilisation: ~50% with blocks of 2, ~82% with
blocks of 24): Prefect decays a rate limit by ``floor(decay x seconds since the row was last
updated)`` and every grant or denial updates the row, so each round trip loses a fraction of
a slot, and denied workers back off with growing Retry-After. Safe, but not yet efficient:
larger blocks or leasing ahead are the next step.
"""

from __future__ import annotations

import hashlib
import math

from prefect import get_client
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectAlreadyExists

from distillery.config import TeacherConfig
from distillery.generators.ratelimit import LeaseGate, SharedLimits

BLOCK_SHARE = 0.02
HEADROOM = 0.97


def limit_name(teacher: TeacherConfig, kind: str) -> str:
    """One name per provider + model + endpoint + key variable: the unit providers limit."""
    identity = "|".join(
        [teacher.provider, teacher.model, teacher.base_url, teacher.api_key_env or ""]
    )
    digest = hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()
    return f"distillery-{teacher.provider}-{digest}-{kind}"


def _sizing(per_minute: float, window_s: float) -> tuple[int, int, float]:
    """(block, capacity, decay per second) for a limit of ``per_minute`` over ``window_s``."""
    allowance = per_minute * window_s / 60.0
    block = max(1, math.floor(allowance * BLOCK_SHARE))
    capacity = 2 * block
    decay = max(allowance * HEADROOM - capacity, 1.0) / window_s
    return block, capacity, decay


async def _lease(name: str, slots: int) -> None:
    await rate_limit(name, occupy=slots, strict=True)


async def shared_limits_for(teacher: TeacherConfig) -> SharedLimits:
    """Create (or update) the teacher's limits on the Prefect server; return its lease gates."""
    limits = teacher.limits
    gates: dict[str, LeaseGate] = {}
    async with get_client() as client:
        for kind, per_minute in (("requests", limits.rpm), ("tokens", limits.tpm)):
            if per_minute is None:
                continue
            block, capacity, decay = _sizing(per_minute, limits.window_s)
            name = limit_name(teacher, kind)
            try:
                await client.upsert_global_concurrency_limit_by_name(name, capacity, decay)
            except ObjectAlreadyExists:
                # Another worker created it between Prefect's read and create (the upsert is
                # not atomic): now it exists, so this upsert takes the update path.
                await client.upsert_global_concurrency_limit_by_name(name, capacity, decay)
            gates[kind] = LeaseGate(name, block, _lease)
    return SharedLimits(requests=gates.get("requests"), tokens=gates.get("tokens"))
