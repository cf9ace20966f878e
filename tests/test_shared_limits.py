"""A shared limit on a real Prefect server: leased slots, never more than the limit, all given
back. Real time on purpose: what it asserts holds however long the round trips take (the lease
policy's timings are tested on a fake clock in tests/test_ratelimit.py), and on a fake clock
every poll of the server is a round trip that moves time by one poll only, which made this
test 2x slower. Starts Prefect, so it is slow (tests/conftest.py). (The two-worker-process run
against a limiting emulator is tests/test_postgres_server.py.)
"""

import asyncio
import time

from distillery.config import TeacherConfig
from distillery.flows.shared_limits import limit_name, shared_limits_for


def _teacher(base_url: str) -> TeacherConfig:
    return TeacherConfig.model_validate(
        {
            "name": "t0",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "base_url": base_url,
            "api_key_env": "EMULATOR_API_KEY",
            # 60 requests per 2 s: a block is 1 request, a lease is re-spent for 4 windows.
            "limits": {"rpm": 1800, "window_s": 2.0, "shared": True},
        }
    )


def test_two_workers_lease_from_one_prefect_limit(prefect_api: str) -> None:
    from prefect import get_client

    teacher = _teacher(f"http://127.0.0.1:9/{time.time_ns()}")  # a fresh limit per run
    name = limit_name(teacher, "requests")

    async def scenario() -> tuple[list[float], int, int]:
        workers = [await shared_limits_for(teacher) for _ in range(2)]
        gates = [w.requests for w in workers]
        assert gates[0] is not None and gates[1] is not None
        taken: list[float] = []
        most = 0

        async def spend(gate_index: int, count: int) -> None:
            nonlocal most
            gate = gates[gate_index]
            assert gate is not None
            for _ in range(count):
                await gate.take(1)
                taken.append(time.monotonic())
                async with get_client() as client:
                    limit = await client.read_global_concurrency_limit_by_name(name)
                most = max(most, limit.active_slots)

        # 100 requests against 60 per window: the second window's must wait for leases given
        # back (or re-spent) once the first window's units are out.
        await asyncio.gather(spend(0, 50), spend(1, 50))
        for worker in workers:
            await worker.aclose()
        async with get_client() as client:
            after = (await client.read_global_concurrency_limit_by_name(name)).active_slots
        return taken, most, after

    taken, most, after = asyncio.run(scenario())
    assert most <= 60  # the server never granted more than the limit
    assert after == 0  # every lease was given back at the end
    window = 2.0
    for end in taken:
        assert sum(1 for t in taken if end - window < t <= end) <= 60
    assert taken[-1] - taken[0] >= window  # the limit did bind: not all in one window
