"""The limiter's invariants, property-tested with a fake clock (no sleeping, no timing)."""

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.generators.ratelimit import (
    AdaptiveConcurrency,
    Charge,
    LeaseGate,
    Limiter,
    Limits,
    RateControl,
    SharedLimits,
    SlidingWindow,
)

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


class FakePool:
    """A shared pool of ``size`` slots, as the Prefect server keeps it (integer counts)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.active = 0
        self.open: dict[int, int] = {}
        self.expiring: dict[int, float] = {}
        self.round_trips = 0

    async def acquire(self, slots: int) -> object | None:
        self.round_trips += 1
        if self.active + slots > self.size:
            return None
        self.active += slots
        handle = len(self.open) + len(self.expiring) + 1000 * self.round_trips
        self.open[handle] = slots
        return handle

    async def free(self) -> int:
        self.round_trips += 1
        return self.size - self.active

    async def release(self, lease: object) -> None:
        assert isinstance(lease, int)
        self.active -= self.open.pop(lease)

    async def expire(self, lease: object, after_s: float) -> None:
        assert isinstance(lease, int) and lease in self.open
        self.expiring[lease] = after_s


def _gate(
    pool: FakePool,
    clock: FakeClock,
    block: int = 5,
    *,
    hold: float = 10.0,
    poll: float = 0.1,
    jitter: float = 0.0,
    background: bool = False,
    idle: float = float("inf"),
    max_share: float = 0.25,
) -> LeaseGate:
    """A gate on a fake clock; its background reaper (off unless asked) would move the clock
    by itself, so the step-by-step tests leave it off and call take/aclose only."""

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    return LeaseGate(
        "shared",
        block,
        pool,
        limit=pool.size,
        hold_s=hold,
        slice_s=2 * hold,
        slice_jitter=jitter,
        poll_s=poll,
        idle_s=idle,
        max_share=max_share,
        background=background,
        clock=clock,
        sleep=sleep,
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # which worker
            st.floats(0, 4, allow_nan=False),  # time before it asks
            st.integers(1, 12),  # units it reserves
            st.integers(0, 12),  # units given back when the answer's usage is in
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(12, 60),
    st.integers(1, 8),
    st.sampled_from([0.0, 0.5, 3.0, float("inf")]),  # idle leases given back after this
    st.sampled_from([0.125, 0.25, 1.0]),  # the largest lease, as a share of the pool
)
def test_workers_sharing_a_pool_never_exceed_it_in_any_window(
    steps: list[tuple[int, float, int, int]],
    size: int,
    block: int,
    idle: float,
    max_share: float,
) -> None:
    """Three workers (gates) over one pool, every interleaving of takes, waits and refunds,
    whatever the lease policy (idle hand-back, largest lease): the units they spent together in
    any window never exceed the pool, refunds are exact, and every slot is given back at the
    end."""
    clock = FakeClock()
    pool = FakePool(size)
    hold = 10.0
    gates = [
        _gate(
            pool,
            clock,
            block,
            hold=hold,
            poll=0.5,
            jitter=0.5,
            background=True,
            idle=idle,
            max_share=max_share,
        )
        for _ in range(3)
    ]
    spent: list[tuple[float, list[Charge], float]] = []  # (time, charges, units kept)

    async def scenario() -> None:
        for worker, dt, amount, back in steps:
            clock.now += dt
            charges = await gates[worker].take(amount)
            assert sum(c.entry[1] for c in charges) == pytest.approx(amount)
            assert pool.active <= pool.size
            back = min(back, amount)
            gates[worker].refund(charges, back)
            assert sum(c.entry[1] for c in charges) == pytest.approx(amount - back)
            spent.append((clock.now, charges, amount - back))
        for gate in gates:
            await gate.aclose()

    asyncio.run(scenario())
    for end, _, _ in spent:
        inside = sum(kept for t, _, kept in spent if end - hold + 1e-9 < t <= end)
        assert inside <= size + 1e-6
    # Everything given back, or (a window longer than the gate lingers for) left to the server
    # to take back once its units have left the window.
    assert set(pool.open) == set(pool.expiring)
    assert all(after <= hold + 1e-6 for after in pool.expiring.values())


def test_lease_is_respent_within_its_slice_then_given_back_after_its_window() -> None:
    clock = FakeClock()
    pool = FakePool(100)
    gate = _gate(pool, clock, block=5, hold=10.0)

    async def scenario() -> None:
        for _ in range(5):
            await gate.take(1)
        assert gate.leases == 1 and pool.active == 5
        clock.now += 10.5  # the five units left the window: re-spent without a round trip
        for _ in range(5):
            await gate.take(1)
        assert gate.leases == 1 and pool.round_trips == 1
        clock.now += 9.6  # the slice (20 s) is over: a new lease; the old one is retired
        await gate.take(1)
        # The new lease is twice the first (leases grow while granted); the old one's units are
        # still in the window, so it is still held.
        assert gate.leases == 2 and pool.active == 5 + 10
        clock.now += 0.6  # now they have left it
        await gate.take(1)
        assert pool.active == 10 and gate.held == 10
        await gate.aclose()  # waits out the window of the last two units, then gives back
        assert pool.active == 0

    asyncio.run(scenario())


def test_idle_lease_goes_back_early_and_a_waiting_worker_takes_it_over_at_once() -> None:
    clock = FakeClock()
    pool = FakePool(40)
    # Leases of at most 10 (a quarter), given back 1 s after their window emptied if nothing
    # was charged to them; the slice (20 s) is far longer.
    first = _gate(pool, clock, block=5, hold=10.0, idle=1.0)
    second = _gate(pool, clock, block=5, hold=10.0, idle=1.0)

    async def scenario() -> None:
        for _ in range(40):  # the whole pool, one unit at a time: leases of 5, 10, 10, 10, 5
            await first.take(1)
        assert pool.active == 40 and first.leases == 5
        clock.now += 10.5  # every unit left the window; the first worker needs only 3 now
        await first.take(3)  # charged to its first lease: the others stay empty
        assert first.idle_returns == 0 and pool.active == 40
        # The second worker is refused (the pool is full). Polling, it sees the first worker's
        # four empty leases come back once idle (its reaper) and takes one of the largest
        # size in one round trip, rather than growing from one block again.
        first_reaper = asyncio.ensure_future(first._reap_forever())
        await second.take(1)
        assert second.refused >= 1 and second.leases == 1 and second.held == 10
        assert first.idle_returns == 4 and first.held == 5  # the one in use was kept
        first_reaper.cancel()
        await first.aclose()
        await second.aclose()
        assert pool.active == 0  # every slot given back

    asyncio.run(scenario())


def test_lease_gate_splits_and_settles_token_reservations() -> None:
    clock = FakeClock()
    pool = FakePool(1000)
    gate = _gate(pool, clock, block=20)

    async def scenario() -> None:
        first = await gate.take(15)
        assert [c.entry[1] for c in first] == [15]
        second = await gate.take(30)  # 5 left in the first lease, 25 from a new one (of 40)
        assert [c.entry[1] for c in second] == [5, 25] and gate.held == 60
        gate.refund(second, 27)  # the answer used 3 of the 30 reserved
        assert [c.entry[1] for c in second] == [3, 0]
        gate.refund(first, -7)  # the answer used 7 more than reserved: charged
        # More than a block: one lease of what is missing. The first lease (20) now carries
        # 15 + 7 + 3 = 25, 5 over its size, which comes out of the second's 40 left.
        assert gate.spent(clock.now) == pytest.approx(25)
        await gate.take(400)
        assert gate.leases == 3 and gate.held == 60 + (400 - (40 - 5))

    asyncio.run(scenario())


def test_full_pool_makes_a_worker_wait_for_slots_given_back() -> None:
    clock = FakeClock()
    pool = FakePool(10)
    # The first worker's reaper gives its lease back while it sends nothing more.
    first = _gate(pool, clock, block=10, background=True)
    second = _gate(pool, clock, block=10)

    async def scenario() -> None:
        await first.take(10)
        start = clock.now
        await second.take(1)  # refused until the first lease is retired and out of its window
        assert clock.now - start >= 20.0
        assert second.refused >= 1 and first.held == 0 and second.held == 10
        await first.aclose()
        await second.aclose()

    asyncio.run(scenario())


def test_shared_limit_sizing() -> None:
    from distillery.flows.shared_limits import poll_s, sizing

    for per_minute, window in [(60, 60), (1200, 6), (30_000, 60), (2_000_000, 60), (5, 60)]:
        slots, block = sizing(per_minute, window)
        assert slots <= max(1, per_minute * window / 60)  # never more than the allowance
        assert 1 <= block <= slots
        assert 0.05 <= poll_s(window) <= 1.0


def test_no_refund_below_max_tokens_where_the_provider_keeps_it() -> None:
    clock = FakeClock()
    limiter = Limiter(
        Limits(tpm=6000, window_s=60),
        8,
        expected_completion_tokens=100,
        clock=clock,
        refund_below_reservation=False,
        sleep=fake_sleep(clock),  # the second request is paced 1.5 s after the first
    )

    async def scenario() -> None:
        ticket = await limiter.acquire(prompt_tokens=50)
        limiter.release(ticket, usage_tokens=70, completion_tokens=20)
        assert limiter.tokens is not None and limiter.tokens.used(clock.now) == 150
        ticket = await limiter.acquire(prompt_tokens=50)
        limiter.release(ticket, usage_tokens=400, completion_tokens=350)  # over: charged
        assert limiter.tokens.used(clock.now) == 550

    asyncio.run(scenario())


class SlowReleasePool(FakePool):
    """A pool whose releases wait on the network (here: until ``answer`` is set)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.answer = asyncio.Event()
        self.releasing = 0

    async def release(self, lease: object) -> None:
        self.releasing += 1
        await self.answer.wait()
        await super().release(lease)


def test_closing_while_the_reaper_gives_a_lease_back_still_returns_it() -> None:
    clock = FakeClock()
    pool = SlowReleasePool(20)
    gate = _gate(pool, clock, block=5, hold=1.0, background=True, idle=0.5)

    async def scenario() -> None:
        await gate.take(1)
        assert pool.active == 5
        clock.now += 5.0  # the unit left the window and the lease is idle: the reaper returns it
        reaper = gate._reaper
        assert reaper is not None
        while pool.releasing == 0:  # the reaper's release is on the wire
            await asyncio.sleep(0)
        pool.answer.set()
        await gate.aclose()  # cancels the reaper mid-release; the lease must still go back
        assert reaper.done()
        assert pool.active == 0 and gate.held == 0

    asyncio.run(scenario())


# --- Converging on the server's limit (issue 15): a simulated server is the emulator's own
# window (distillery.emulator.limits), a fake clock drives both, and sleeping advances it.


class Server:
    """The emulator's limits at ``rpm`` over a 6 s window, answered with or without headers."""

    def __init__(self, rpm: int, headers: bool, quantum_s: float | None = None) -> None:
        from distillery.emulator.limits import Limiter as ServerLimits
        from distillery.emulator.window import UsageWindow

        self.limits = ServerLimits(
            rpm=rpm, tpm=None, max_concurrency=None, window_s=6.0, quantum_s=quantum_s
        )
        self.usage = UsageWindow()
        self.headers = headers
        self.log: list[tuple[float, bool]] = []  # (arrival, admitted)

    def answer(self, now: float) -> tuple[bool, dict[str, float] | None]:
        refusal = self.limits.admit(now, 0, self.usage)
        if refusal is None:
            self.limits.release()  # answered at once
        self.log.append((now, refusal is None))
        if not self.headers:
            return refusal is None, None
        quota = self.limits.quota(now, 0, self.usage, refusal)
        return refusal is None, {
            "requests_limit": float(quota.limit_requests),
            "requests_remaining": float(quota.remaining_requests),
            "requests_reset_s": quota.reset_requests_s,
        }

    def between(self, start: float, end: float) -> tuple[int, int]:
        """(admitted, refused) of the requests that arrived in [start, end)."""
        inside = [ok for at, ok in self.log if start <= at < end]
        return sum(inside), len(inside) - sum(inside)


def simulate(limiter: Limiter, clock: FakeClock, server: Server, until: float) -> None:
    """One request after another (answered at once) until the fake clock reaches ``until``."""

    async def scenario() -> None:
        while clock.now < until:
            ticket = await limiter.acquire(prompt_tokens=0)
            limiter.sent(ticket)
            ok, headers = server.answer(clock.now)
            if headers is not None:
                ticket.server_s = 0.0  # it says how long it worked, as openai-processing-ms
            limiter.release(
                ticket, usage_tokens=1 if ok else None, rate_limited=not ok, headers=headers
            )

    asyncio.run(scenario())


def fake_sleep(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    return sleep


@pytest.mark.parametrize(
    "job",
    [{"rpm": 1200, "window_s": 6}, {"rpm": 600, "window_s": 6}, {"window_s": 6}, {}],
    ids=["twice too high", "right", "absent (window stated)", "absent"],
)
def test_the_limit_the_server_announces_is_reached_and_never_overshot(
    job: dict[str, float],
) -> None:
    # Real limit 600 RPM over 6 s (60 per 6 s), announced in every answer's headers.
    clock = FakeClock()
    limiter = Limiter(Limits(**job), 64, clock=clock, sleep=fake_sleep(clock))
    server = Server(600, headers=True)
    simulate(limiter, clock, server, until=clock.now + 66)
    assert limiter.requests is not None
    assert limiter.requests.limit == pytest.approx(60 if job.get("window_s") else 600)
    admitted, refused = server.between(106, 166)  # after the first window
    assert refused <= 0.01 * (admitted + refused)
    assert admitted >= 0.97 * 600  # >= 97% of the binding limit
    assert limiter.rate_limited <= 2


def test_repeated_429s_without_headers_cut_the_rate_and_it_recovers() -> None:
    # The job says 1,200 RPM, the server allows 600 and says nothing but 429.
    clock = FakeClock()
    limiter = Limiter(Limits(rpm=1200, window_s=6), 64, clock=clock, sleep=fake_sleep(clock))
    server = Server(600, headers=False)
    simulate(limiter, clock, server, until=clock.now + 120)
    assert limiter.control.cuts >= 5
    admitted, refused = server.between(160, 220)
    assert refused <= 0.05 * (admitted + refused)  # a probe now and then, not 50% for ever
    assert admitted >= 0.85 * 600
    assert limiter.control.factor < 0.6
    # The server now allows what the job says: the rate grows back to all of it.
    server.limits = Server(1200, headers=False).limits
    simulate(limiter, clock, server, until=clock.now + 150)
    assert limiter.control.factor == 1.0
    admitted, refused = server.between(clock.now - 30, clock.now)
    assert refused == 0 and admitted >= 0.97 * 1200 / 2


def test_without_any_known_limit_429s_find_a_rate() -> None:
    clock = FakeClock()
    limiter = Limiter(Limits(window_s=6), 8, clock=clock, sleep=fake_sleep(clock))
    server = Server(600, headers=False)
    simulate(limiter, clock, server, until=clock.now + 120)
    assert limiter.found_rate is not None
    admitted, refused = server.between(160, 220)
    assert refused <= 0.05 * (admitted + refused)
    assert admitted >= 0.85 * 600


def test_a_burst_of_429s_sent_before_a_cut_is_one_cut() -> None:
    control = RateControl(window_s=6)
    for _ in range(2):
        control.on_rate_limited(sent_at=1.0, now=2.0, sent_in_window=100)
    assert control.cuts == 1 and control.factor == pytest.approx(0.9)
    for _ in range(50):  # answers of requests that left before the cut: no further cut
        assert not control.on_rate_limited(sent_at=1.5, now=2.1, sent_in_window=100)
    assert control.factor == pytest.approx(0.9)
    assert not control.on_rate_limited(sent_at=2.2, now=2.4, sent_in_window=100)  # one alone
    control.on_success(8.0, 1.0)  # a window after the cut: back to just under what failed
    assert control.factor == pytest.approx(0.98)
    control.on_success(14.0, 1.0)  # held there for three windows
    assert control.factor == pytest.approx(0.98)
    control.on_success(20.5, 1.0)  # then probing on: 5% per window
    assert control.factor == pytest.approx(1.0)


def test_a_request_counts_from_when_it_left_and_from_when_the_server_started_on_it() -> None:
    clock = FakeClock()
    limiter = Limiter(Limits(rpm=60, window_s=6), 4, clock=clock, sleep=fake_sleep(clock))
    window = limiter.requests
    assert window is not None

    async def scenario() -> None:
        ticket = await limiter.acquire(0)  # admitted at 100
        clock.now = 103.0  # e.g. a busy event loop, a connection being opened
        limiter.sent(ticket)
        assert window.oldest(clock.now) == 103.0
        # Stamped at its admission it would have left the 6.12 s window at 106.12.
        assert window.used(106.5) == 1
        clock.now = 104.0
        ticket.server_s = 0.5  # the server says it worked 0.5 s: it arrived at 103.5 at most
        limiter.release(ticket, usage_tokens=1)
        assert window.oldest(clock.now) == 103.5
        # Counted from no earlier than the server did, the 2% margin shrinks to 1%.
        assert window.window_s == pytest.approx(6.06)
        assert window.used(103.5 + 6.06 - 0.01) == 1
        assert window.used(103.5 + 6.06 + 0.01) == 0

    asyncio.run(scenario())


def test_moved_entries_stay_in_time_order() -> None:
    sliding = SlidingWindow(10, 5.0)
    first, second, third = (sliding.admit(1, t) for t in (0.0, 0.1, 0.2))
    sliding.move(first, 0.3)
    sliding.move(third, 0.25)
    assert [e[0] for e in sliding._entries] == [0.1, 0.25, 0.3]
    assert sliding.used(5.2) == 2  # 0.1 left; the moved ones stay
    sliding.move(second, 9.0)  # already out: nothing counts it
    assert sliding.used(5.2) == 2


def test_the_limiter_paces_rather_than_bursts() -> None:
    # 1,200 RPM enforced as 20 per second (quantized): a paced client is never refused, where
    # a window's 120 in one burst would be refused 100 times.
    clock = FakeClock()
    limiter = Limiter(Limits(rpm=1200, window_s=6), 64, clock=clock, sleep=fake_sleep(clock))
    server = Server(1200, headers=True, quantum_s=1.0)
    simulate(limiter, clock, server, until=clock.now + 30)
    times = [at for at, _ in server.log]
    assert server.between(0, math.inf)[1] == 0
    for index, start in enumerate(times):
        assert len([t for t in times[index:] if t < start + 0.2]) <= 5  # ~4 per 0.2 s
    assert len(times) >= 0.97 * 1200 / 2


def test_a_shared_limit_is_not_paced_locally() -> None:
    # Its leases spread it already; paced, each lease's units would be spread over its whole
    # window and a retired lease would idle longer (BENCHMARKS.md, "Rate-limit utilisation").
    clock = FakeClock()
    shared = SharedLimits(requests=_gate(FakePool(120), clock, block=120, hold=6.12))
    limiter = Limiter(Limits(rpm=1200, window_s=6), 64, clock=clock, shared=shared)
    assert limiter.request_rate() is None
    alone = Limiter(Limits(rpm=1200, window_s=6), 64, clock=clock)
    assert alone.request_rate() == pytest.approx(120 / 6.12)

    async def scenario() -> None:
        for _ in range(20):  # a lease of the whole pool: 20 at once, not one per 51 ms
            limiter.release(await limiter.acquire(0), usage_tokens=1)

    asyncio.run(scenario())
    assert clock.now == 100.0
