"""Rate limits shared by every worker of a run, held by the Prefect server.

A shared limit is a Prefect global concurrency limit *without* decay whose slots are units of
the provider's allowance per window (requests, or tokens). Workers never ask the server per
request (each call is a round trip to the server, which can take seconds): a worker leases
a block of slots (``increment-with-lease``; 2% of the allowance, doubling while the server grants
them, up to an eighth) and spends it through its local
:class:`~distillery.generators.ratelimit.LeaseGate`, which keeps every slot leased until the
units it covered have left the window, and gives it back then (``decrement-with-lease``): at the
end of its slice, or as soon as nothing was charged to it for a twentieth of a window.
Slots held = units spent in the last window or still unspent, so the workers together never
spend more than the limit in any window, whatever their clocks or round-trip times.

Why not Prefect's rate limits (a limit *with* ``slot_decay_per_second``, through
``rate_limit()``): the server decays them by ``floor(decay x seconds since the row's last
update)``, and every grant *and every refusal* updates the row (a refusal only bumps
``denied_slots`` yet moves ``updated``), so under contention the decay is lost again and
again: two workers reached far less of a limit that way (BENCHMARKS.md, "Rate-limit
utilisation"). Integer increments and decrements lose nothing.

Leases (rather than bare increments) make the server take slots back from a worker that died
holding them: each lease lasts the slice it may be spent in, plus the window, plus a minute.
Prefect keeps leases in its lease storage (in memory by default: one API server process; a
server with several replicas needs the Redis lease storage, prefect-redis).
"""

from __future__ import annotations

import hashlib
import math
from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError

from distillery.config import TeacherConfig
from distillery.generators.ratelimit import LeaseGate, SharedLimits, window_margin_s

BLOCK_SHARE = 0.02
"""A lease is 2% of a window's allowance: ~50 round trips per window per limit at full use."""

SLICE_WINDOWS = 4.0
"""A lease is spent (and re-spent as its units leave the window) for four windows, then given
back, so slots circulate between workers while costing few round trips. Each lease's slice is
jittered by +-25% so that leases taken together do not all come back at once. (Slices of one
and two windows were tried: every lease retired with its units still spread over the window
idles part of its slots until the last one leaves, and two workers used less of the limit with
them than with four: BENCHMARKS.md, "Rate-limit utilisation".)"""

SLICE_JITTER = 0.5

MAX_SHARE = 0.125
"""The largest lease, as a share of the allowance: a lease goes back whole once its last unit
has left the window, so a worker that stops strands at most about this much for a window."""

IDLE_SHARE = 0.05
"""A lease nothing was charged to for 5% of a window (after its units left it) goes back at
once: its worker has no demand for it (end of its queue, or it holds more than it sends)."""

PRE_EXPIRY_S = 60.0
"""Prefect's shortest lease, and the slack added to each lease's expected life."""

LOCKED = 423


def limit_name(teacher: TeacherConfig, kind: str) -> str:
    """One name per provider + model + endpoint + key variable: the unit providers limit.

    ``-leased``: limits of this kind have no decay; an older limit of the same teacher that
    decayed (Prefect rate-limit mode) keeps its own name and is simply no longer used.
    """
    identity = "|".join(
        [teacher.provider, teacher.model, teacher.base_url, teacher.api_key_env or ""]
    )
    digest = hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()
    return f"distillery-{teacher.provider}-{digest}-{kind}-leased"


def sizing(per_minute: float, window_s: float) -> tuple[int, int]:
    """(slots, block) for a limit of ``per_minute`` over ``window_s``: the whole allowance."""
    allowance = max(1, math.floor(per_minute * window_s / 60.0))
    return allowance, max(1, math.floor(allowance * BLOCK_SHARE))


def poll_s(window_s: float) -> float:
    """How often a worker the pool refused looks again: 1% of the window, 50 ms to 1 s."""
    return min(1.0, max(0.05, 0.01 * window_s))


class PrefectLeasePool:
    """A :class:`~distillery.generators.ratelimit.LeasePool` over one Prefect global
    concurrency limit (concurrency mode, no decay) and its leases."""

    def __init__(self, name: str, lease_s: float) -> None:
        self.name = name
        self.lease_s = max(PRE_EXPIRY_S, lease_s)

    async def acquire(self, slots: int) -> object | None:
        async with get_client() as client:
            try:
                response = await client.increment_concurrency_slots_with_lease(
                    names=[self.name],
                    slots=slots,
                    mode="concurrency",
                    lease_duration=self.lease_s,
                )
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code == LOCKED:
                    return None
                raise
        return UUID(response.json()["lease_id"])

    async def free(self) -> int:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(self.name)
        return max(0, limit.limit - limit.active_slots)

    async def release(self, lease: object) -> None:
        assert isinstance(lease, UUID)
        async with get_client() as client:
            await client.release_concurrency_slots_with_lease(lease)

    async def expire(self, lease: object, after_s: float) -> None:
        assert isinstance(lease, UUID)
        async with get_client() as client:
            await client.renew_concurrency_lease(lease, max(PRE_EXPIRY_S, after_s))


async def shared_limits_for(teacher: TeacherConfig) -> SharedLimits:
    """Create (or update) the teacher's limits on the Prefect server; return its lease gates."""
    limits = teacher.limits
    window = limits.window_s
    hold = window + window_margin_s(window)
    slice_s = SLICE_WINDOWS * window
    gates: dict[str, LeaseGate] = {}
    async with get_client() as client:
        for kind, per_minute in (("requests", limits.rpm), ("tokens", limits.tpm)):
            if per_minute is None:
                continue
            slots, block = sizing(per_minute, window)
            name = limit_name(teacher, kind)
            try:
                await client.upsert_global_concurrency_limit_by_name(name, slots, 0.0)
            except ObjectAlreadyExists:
                # Another worker created it between Prefect's read and create (the upsert is
                # not atomic): now it exists, so this upsert takes the update path.
                await client.upsert_global_concurrency_limit_by_name(name, slots, 0.0)
            longest_slice = slice_s * (1 + SLICE_JITTER / 2)
            pool = PrefectLeasePool(name, longest_slice + hold + PRE_EXPIRY_S)
            gates[kind] = LeaseGate(
                name,
                block,
                pool,
                limit=slots,
                hold_s=hold,
                slice_s=slice_s,
                poll_s=poll_s(window),
                slice_jitter=SLICE_JITTER,
                idle_s=max(poll_s(window), IDLE_SHARE * window),
                max_share=MAX_SHARE,
            )
    return SharedLimits(requests=gates.get("requests"), tokens=gates.get("tokens"))
