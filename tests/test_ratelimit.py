"""The limiter's invariants, property-tested with a fake clock (no sleeping, no timing)."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.generators.ratelimit import AdaptiveConcurrency, Limiter, Limits, SlidingWindow

# Amounts stay within the smallest limit drawn: a request larger than the whole limit is
# admitted alone into an empty window by design (or it could never be sent).
events = st.lists(
    st.tuples(st.floats(0, 3, allow_nan=False), st.integers(1, 20)), min_size=1, max_size=120
)


@given(events, st.integers(20, 200), st.floats(0.5, 10, allow_nan=False))
def test_never_more_than_the_limit_in_any_window(
    steps: list[tuple[float, int]], limit: int, window: float
) -> None:
    sliding = SlidingWindow(limit, window)
    now, admitted = 0.0, []
    for dt, amount in steps:
        now += dt
        if sliding.wait_s(amount, now) == 0:
            sliding.admit(amount, now)
            admitted.append((now, amount))
    for start, _ in admitted:
        # Half-open windows (start - window, start]; an entry exactly one window old is out
        # (1e-9 absorbs float rounding at that boundary).
        inside = sum(a for t, a in admitted if start - window + 1e-9 < t <= start)
        assert inside <= limit + 1e-6


@given(events, st.integers(50, 200))
def test_waiting_the_answer_always_admits(steps: list[tuple[float, int]], limit: int) -> None:
    sliding = SlidingWindow(limit, 1.0)
    now = 0.0
    for dt, amount in steps:
        now += dt
        wait = sliding.wait_s(amount, now)
        now += wait
        assert sliding.wait_s(amount, now) == 0
        sliding.admit(amount, now)


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 80)), min_size=1, max_size=50))
def test_refunds_are_exact(reservations: list[tuple[int, int]]) -> None:
    sliding = SlidingWindow(10_000, 60)
    entries = [(sliding.admit(reserved, 1.0), actual) for reserved, actual in reservations]
    for entry, actual in entries:
        sliding.correct(entry, actual, 2.0)
    assert sliding.used(2.0) == sum(actual for _, actual in reservations)
    assert sliding.used(61.5) == 0  # everything expired


def test_oversized_request_waits_for_an_empty_window() -> None:
    sliding = SlidingWindow(100, 10)
    sliding.admit(30, 0.0)
    assert sliding.wait_s(500, 1.0) == pytest.approx(9.0)
    assert sliding.wait_s(500, 10.0) == 0


def test_aimd() -> None:
    aimd = AdaptiveConcurrency(ceiling=20)
    aimd.on_rate_limited()
    assert aimd.limit == pytest.approx(14.0)
    for _ in range(200):
        aimd.on_success()
    assert aimd.limit == 20.0
    for _ in range(50):
        aimd.on_rate_limited()
    assert aimd.limit == 1.0  # never below one request in flight


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_reserves_then_settles_to_real_usage() -> None:
    clock = FakeClock()
    limiter = Limiter(
        Limits(rpm=600, tpm=6000, window_s=60), 8, expected_completion_tokens=100, clock=clock
    )

    async def scenario() -> None:
        ticket = await limiter.acquire(prompt_tokens=50)
        assert limiter.tokens is not None and limiter.tokens.used(clock.now) == 150
        limiter.release(ticket, usage_tokens=70, completion_tokens=20)
        assert limiter.tokens.used(clock.now) == 70
        assert limiter.concurrency.in_flight == 0
        limiter.release(ticket, usage_tokens=999)  # settling twice changes nothing
        assert limiter.tokens.used(clock.now) == 70

    asyncio.run(scenario())


def test_limiter_learns_limits_and_exhaustion_from_headers() -> None:
    clock = FakeClock()
    limiter = Limiter(Limits(), 4, clock=clock)

    async def scenario() -> None:
        ticket = await limiter.acquire(prompt_tokens=10)
        limiter.release(
            ticket,
            usage_tokens=20,
            headers={"requests_limit": 120, "requests_remaining": 0, "requests_reset_s": 2.5},
        )
        assert limiter.requests is not None and limiter.requests.limit == 120
        assert limiter.blocked_until == pytest.approx(102.5)

    asyncio.run(scenario())


@settings(deadline=None, max_examples=10)
@given(st.integers(1, 6), st.integers(5, 40))
def test_concurrency_cap_holds_under_load(cap: int, requests: int) -> None:
    limiter = Limiter(Limits(), cap)
    peak = 0

    async def one() -> None:
        nonlocal peak
        ticket = await limiter.acquire(1)
        peak = max(peak, limiter.concurrency.in_flight)
        await asyncio.sleep(0)
        limiter.release(ticket, usage_tokens=1)

    async def scenario() -> None:
        await asyncio.gather(*(one() for _ in range(requests)))

    asyncio.run(scenario())
    assert 1 <= peak <= cap
    assert limiter.concurrency.in_flight == 0


def test_budget_waits_for_reservations_then_stops() -> None:
    from distillery.generators.budget import Budget

    async def scenario() -> None:
        budget = Budget(1.0)
        assert await budget.reserve(0.4) and await budget.reserve(0.4)
        waiting = asyncio.create_task(budget.reserve(0.4))
        await asyncio.sleep(0)
        assert not waiting.done()  # only the reservations stand in the way: wait
        budget.settle(0.4, 0.1)  # an answer came in cheaper than estimated
        assert await waiting
        budget.settle(0.4, 0.4)
        budget.settle(0.4, 0.4)
        assert budget.spent_usd == pytest.approx(0.9)
        assert not await budget.reserve(0.2)  # spent + estimate over the cap: done
        assert budget.exhausted and not await budget.reserve(0.01)

    asyncio.run(scenario())


def test_lease_gate_leases_blocks_and_settles_credit() -> None:
    from distillery.generators.ratelimit import LeaseGate

    leased: list[tuple[str, int]] = []

    async def source(name: str, slots: int) -> None:
        leased.append((name, slots))

    async def scenario() -> None:
        gate = LeaseGate("shared-tokens", 100, source)
        await gate.take(30)
        await gate.take(30)
        assert leased == [("shared-tokens", 100)] and gate.credit == 40
        await gate.take(150)  # needs two more blocks
        assert len(leased) == 3 and gate.credit == pytest.approx(90)
        gate.refund(-120)  # an answer used 120 more tokens than reserved
        await gate.take(1)
        assert len(leased) == 4 and gate.credit == pytest.approx(69)

    asyncio.run(scenario())


def test_shared_limit_sizing_never_exceeds_the_allowance() -> None:
    from distillery.flows.shared_limits import _sizing

    for per_minute, window in [(60, 60), (1200, 6), (30_000, 60), (2_000_000, 60), (5, 60)]:
        block, capacity, decay = _sizing(per_minute, window)
        allowance = per_minute * window / 60
        assert 1 <= block <= capacity
        if allowance > capacity + 1:
            # The most a decaying bucket lets through in one window stays within it ...
            assert capacity + decay * window <= allowance + 1e-6
            # ... while using most of it.
            assert capacity + decay * window >= 0.9 * allowance


def test_no_refund_below_max_tokens_where_the_provider_keeps_it() -> None:
    clock = FakeClock()
    limiter = Limiter(
        Limits(tpm=6000, window_s=60),
        8,
        expected_completion_tokens=100,
        clock=clock,
        refund_below_reservation=False,
    )

    async def scenario() -> None:
        ticket = await limiter.acquire(prompt_tokens=50)
        limiter.release(ticket, usage_tokens=70, completion_tokens=20)
        assert limiter.tokens is not None and limiter.tokens.used(clock.now) == 150
        ticket = await limiter.acquire(prompt_tokens=50)
        limiter.release(ticket, usage_tokens=400, completion_tokens=350)  # over: charged
        assert limiter.tokens.used(clock.now) == 550

    asyncio.run(scenario())
