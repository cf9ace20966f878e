"""Admission control: keep each teacher just under its rate limits, and adapt live.

Per teacher (provider + model + key) a :class:`Limiter` admits every *attempt* (retries count
against a provider's limits too) when these gates agree:

- requests per window and tokens per window, as sliding windows over the attempts sent
  (:class:`SlidingWindow`): a request reserves its estimated tokens when it is admitted — the
  prompt counted with tiktoken plus the expected completion (``max_tokens`` or, without one, a
  running average of real completions) — and the reservation is corrected to the usage the API
  reports, so the window holds what was really spent. An attempt counts from when it left,
  and once answered from when the server says it started on it, never from its admission;
- a pace (:class:`Pacer`): the same limits spread evenly over the window instead of let out in
  bursts, which a loaded machine delivers late and out of order, and which a server enforcing
  its limit over shorter quanta refuses;
- a rate multiplier (:class:`RateControl`): cut when 429s exceed 1% of a window's requests,
  grown back after, so a limit that is wrong, unknown, quantized or shared is converged on;
- in-flight requests (:class:`AdaptiveConcurrency`): starts at the configured ``concurrency``,
  cut with the rate and grown back additively on successes;
- what the server says: the limits its rate-limit headers announce (normalised by
  :mod:`.ratelimit_headers`) replace the job's where lower, and a window they show exhausted
  holds new attempts until its reset.

Limits come from the job file, lowered by what the headers announce, or, where the job gives
none, from the headers alone. The pure parts take the clock as an argument, so their
invariants are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


class SlidingWindow:
    """At most ``limit`` units in any ``window_s`` interval of admissions.

    Entries are (admission time, amount); amounts can be corrected afterwards (token
    reservations reconciled with real usage) without moving the entry in time.
    """

    def __init__(self, limit: float, window_s: float) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("limit and window_s must be positive")
        self.limit = limit
        self.window_s = window_s
        self._entries: deque[list[float]] = deque()
        self._total = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._entries and self._entries[0][0] <= horizon:
            self._total -= self._entries.popleft()[1]
        if not self._entries:
            self._total = 0.0

    def used(self, now: float) -> float:
        self._expire(now)
        return self._total

    def oldest(self, now: float) -> float | None:
        """When the oldest entry still in the window was counted (None: it is empty)."""
        self._expire(now)
        return self._entries[0][0] if self._entries else None

    def wait_s(self, amount: float, now: float) -> float:
        """0 if ``amount`` fits now, else how long until enough expires for it to fit.

        An amount larger than the whole limit is admitted once the window is empty, or it
        could never be sent.
        """
        self._expire(now)
        need = min(amount, self.limit)
        if self._total + need <= self.limit + 1e-9:
            return 0.0
        running = self._total
        for at, size in self._entries:
            running -= size
            if running + need <= self.limit + 1e-9:
                return max(0.0, at + self.window_s - now)
        return self.window_s

    def admit(self, amount: float, now: float) -> list[float]:
        """Record an admission (call only after :meth:`wait_s` returned 0); returns its entry."""
        entry = [now, float(amount)]
        self._entries.append(entry)
        self._total += amount
        return entry

    def correct(self, entry: list[float], amount: float, now: float) -> None:
        """Replace an admission's amount (a reservation settled to real usage)."""
        self._expire(now)
        if self._entries and entry[0] > now - self.window_s:
            self._total += amount - entry[1]
        entry[1] = float(amount)

    def move(self, entry: list[float], at: float) -> None:
        """Count an entry from ``at`` instead (later only), keeping the entries in time order.

        An attempt is admitted a little before it leaves, and the server counts it when it
        arrives: the entry is moved to the moment it was sent, then to when the server says
        it started on it, so it leaves this window no earlier than it leaves the server's.
        Entries moved are recent (admitted less than a round trip ago): the search starts at
        the newest end.
        """
        if at <= entry[0]:
            return
        entries = self._entries
        index = len(entries) - 1
        while index >= 0 and entries[index] is not entry:
            index -= 1
        if index < 0:  # already out of the window: nothing counts it any more
            return
        del entries[index]
        entry[0] = at
        while index < len(entries) and entries[index][0] <= at:
            index += 1
        entries.insert(index, entry)


#: Least catch-up of a :class:`Pacer`: how late the admitting task may wake up (a busy event
#: loop) without the time being lost. Small against a quantum (OpenAI enforces 60,000 RPM as
#: 1,000 per second), whose slack is the window margin: 10-20 ms of it.
MIN_BURST_S = 0.015
#: Most catch-up, before any cut of the rate: a run that stalled for this long (a shard write
#: on a loaded machine) sends what it owes at once rather than losing it.
MAX_BURST_S = 0.25


class Pacer:
    """Admissions spread evenly at a rate, instead of a window's allowance in one burst.

    A sliding window alone lets its whole allowance out at once, then again the moment that
    burst expires: on a loaded machine such a burst reaches the server spread over tens or
    hundreds of milliseconds, in another order, and the next burst overlaps it there (429s),
    and a server that enforces its limit over shorter quanta refuses it outright. The pacer is
    virtual scheduling (GCRA): ``due`` is when the next admission is due; each admission moves
    it on by ``amount / rate``. An admission that comes late (the event loop was busy) may catch
    up by ``burst_s`` (at least one unit), so a stall is not lost; a fresh schedule starts
    without a burst.
    """

    def __init__(self) -> None:
        self.due = -math.inf

    def wait_s(self, now: float) -> float:
        return max(0.0, self.due - now)

    def admit(self, amount: float, rate: float, now: float, burst_s: float = MIN_BURST_S) -> None:
        step = amount / rate
        late = now if self.due == -math.inf else now - max(burst_s, step)
        self.due = max(self.due, late) + step

    def refund(self, amount: float, rate: float) -> None:
        """Give back units reserved but not spent (a reservation settled lower)."""
        self.due -= amount / rate

    def start(self, sent: SlidingWindow, rate: float, now: float) -> None:
        """Start pacing a window that already holds units (a limit learnt mid-run): as if they
        had been paced from the first of them, so the window is not filled twice."""
        oldest = sent.oldest(now)
        if oldest is not None:
            self.due = oldest + sent.used(now) / rate


class RateControl:
    """A multiplier on a teacher's paced rate: cut when 429s keep coming, grown back after.

    429s are noise below the benchmark's tolerance (1% of a window's requests, at least two);
    above it the server allows less than the client paces to (a limit that is wrong, unknown,
    quantized, or shared with others), so the rate is cut by ``DECREASE``. Only 429s of
    requests sent after the last cut count towards the next one: those sent before were sent
    at the old rate and that cut already answered them, so a burst of 429s is one cut, not one
    per 429 (the rate would collapse). Successes grow the multiplier back quickly (``FAST``
    per window) to just under the rate that failed, hold it there for ``HOLD_WINDOWS``, then
    probe further slowly (``RECOVERY`` per window) up to the ceiling (1: the known limit): a
    persistent cause (a quantized server) costs a probe every few windows, a transient one a
    few windows. Each cut also halves how much a late admission may catch up at once
    (``burst_s``): a server that refuses bursts is sent none.
    """

    DECREASE = 0.9
    FAST = 0.25
    BELOW_FAILED = 0.98
    HOLD_WINDOWS = 3.0
    RECOVERY = 0.05
    TOLERANCE = 0.01
    FLOOR = 0.02

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.factor = 1.0
        #: The multiplier at which 429s last forced a cut (None: never).
        self.failed: float | None = None
        self.burst_s = max(MIN_BURST_S, min(MAX_BURST_S, window_s / 40))
        self.cuts = 0
        self.cut_at = -math.inf
        self._refused: deque[float] = deque()
        self._grown_at: float | None = None

    def on_rate_limited(self, sent_at: float, now: float, sent_in_window: float) -> bool:
        """Count a 429 of an attempt sent at ``sent_at``; True if the rate was cut."""
        if sent_at < self.cut_at:
            return False
        refused = self._refused
        refused.append(now)
        while refused and refused[0] <= now - self.window_s:
            refused.popleft()
        if len(refused) < max(2.0, self.TOLERANCE * sent_in_window):
            return False
        self.failed = self.factor
        self.factor = max(self.FLOOR, self.factor * self.DECREASE)
        self.burst_s = max(MIN_BURST_S, self.burst_s / 2)
        self.cuts += 1
        self.cut_at = self._grown_at = now
        refused.clear()
        return True

    def on_success(self, now: float, ceiling: float) -> None:
        last, self._grown_at = self._grown_at, now
        if last is None or self.factor >= ceiling:
            return
        windows = min(now - last, self.window_s) / self.window_s
        if self.failed is not None:
            below = min(ceiling, self.failed * self.BELOW_FAILED)
            if self.factor < below:
                self.factor = min(below, self.factor + self.FAST * windows)
                return
            if now - self.cut_at < self.HOLD_WINDOWS * self.window_s:
                return
        self.factor = min(ceiling, self.factor + self.RECOVERY * windows)


class AdaptiveConcurrency:
    """In-flight cap that halves-ish on rate limiting and creeps back up on success (AIMD)."""

    def __init__(self, ceiling: int, decrease: float = 0.7, floor: int = 1) -> None:
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self.limit = float(ceiling)
        self.in_flight = 0

    def can_start(self) -> bool:
        return self.in_flight < max(self.floor, math.floor(self.limit))

    def on_success(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1.0 / max(1.0, self.limit))

    def on_rate_limited(self) -> None:
        self.limit = max(float(self.floor), self.limit * self.decrease)


class LeasePool(Protocol):
    """Slots of a limit shared by every worker of a run (``flows/shared_limits.py``: a Prefect
    global concurrency limit without decay, whose slots are leased and given back)."""

    async def acquire(self, slots: int) -> object | None:
        """Lease ``slots`` if that many are free now (one round trip); else None."""

    async def free(self) -> int:
        """Slots free now (a read: cheaper on the server than a refused acquire)."""

    async def release(self, lease: object) -> None:
        """Give a lease's slots back."""

    async def expire(self, lease: object, after_s: float) -> None:
        """Let the server give a lease's slots back ``after_s`` from now (or a little later)."""


@dataclass
class _Lease:
    """Slots leased from the pool, spent locally as a sliding window of their own size."""

    handle: object
    window: SlidingWindow
    opened: float
    retires: float  # when it stops being re-spent
    retired: bool = False
    last_charged: float | None = None  # when a unit was last charged to it

    def idle_since(self, hold_s: float) -> float:
        """When its window emptied (its last unit left it), or when it was leased if unused."""
        return self.opened if self.last_charged is None else self.last_charged + hold_s


@dataclass
class Charge:
    """Part of an admission charged to one lease (to correct when the answer's usage is in)."""

    lease: _Lease
    entry: list[float]


class LeaseGate:
    """Local credit drawn in blocks from a limit shared by every worker of a run.

    A shared limit that holds across processes and machines (a Prefect global concurrency limit)
    costs a server round trip per acquisition, so a worker leases a *block* of slots at a time
    and spends it locally. A unit spent at time ``t`` keeps its slot leased until ``t + hold_s``
    (the window, plus the client's margin), so at any moment every unit spent in the last
    window is covered by a slot that some worker holds: all workers together never spend more
    than the pool's size in any window. Within a lease's *slice* (``slice_s`` after it was
    leased) its expired units are spent again without asking the server; after it, the lease is
    retired and given back as soon as its last unit leaves the window, so slots circulate
    between workers. A lease whose window has stayed empty for ``idle_s`` (this worker had no
    demand for it: its units are charged to the leases it holds in the order it took them, so
    spare ones empty first) is given back at once, whatever its slice: a worker whose queue ran
    out, or that needs less than it holds, hands its spare slots to the others within a
    fraction of a window instead of holding them until its slice ends. Credit is corrected when
    a reservation settles (up when an answer used fewer tokens than reserved, down when more).

    Every lease is given back only with an empty window (retired or idle), and units are
    charged only to leases held, so the invariant never depends on the policy's timings.
    """

    def __init__(
        self,
        name: str,
        block: int,
        pool: LeasePool,
        *,
        limit: int,
        hold_s: float,
        slice_s: float,
        poll_s: float,
        linger_s: float = 10.0,
        slice_jitter: float = 0.0,
        idle_s: float = math.inf,
        max_share: float = 0.25,
        background: bool = True,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.limit = max(1, limit)
        self.block = min(max(1, block), self.limit)
        # Leases grow (doubling) while the pool grants them, up to ``max_share`` of it, so a
        # worker fills its share in a few round trips; a refusal brings them back to one block.
        # Smaller leases cost more round trips but strand fewer slots when a worker stops: a
        # lease goes back whole, once its last unit has left the window.
        self.max_block = max(self.block, math.floor(self.limit * max_share))
        self._next_block = self.block
        self.hold_s = hold_s
        self.slice_s = slice_s
        self.poll_s = poll_s
        self.linger_s = linger_s
        self.slice_jitter = slice_jitter
        self.idle_s = idle_s
        self.idle_returns = 0  # leases given back early because nothing was charged to them
        self._random = random.Random()
        self._background = background
        self._pool = pool
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._leases: list[_Lease] = []
        self.leases = 0  # leases taken (round trips that got slots)
        self.refused = 0  # acquisitions the pool refused (full)
        self._reaper: asyncio.Future[None] | None = None
        # Leases taken off ``_leases`` whose release has not returned yet: a reaper cancelled
        # mid-release (at aclose) would otherwise leave them held until their TTL.
        self._releasing: list[_Lease] = []

    @property
    def held(self) -> int:
        """Slots this worker holds now."""
        return sum(int(lease.window.limit) for lease in self._leases)

    def spent(self, now: float) -> float:
        """Units spent in the last ``hold_s`` (what the held slots cover)."""
        return sum(lease.window.used(now) for lease in self._leases)

    def _live(self, now: float) -> list[_Lease]:
        for lease in self._leases:
            if not lease.retired and now >= lease.retires:
                lease.retired = True
        return [lease for lease in self._leases if not lease.retired]

    def _idle(self, lease: _Lease, now: float) -> bool:
        return now - lease.idle_since(self.hold_s) >= self.idle_s - 1e-9

    async def reap(self) -> None:
        """Give back every lease whose units have all left the window and that is retired, or
        that nothing was charged to for ``idle_s`` since."""
        now = self._clock()
        self._live(now)
        done = []
        for lease in self._leases:
            if lease.window.used(now) > 1e-9:
                continue
            if lease.retired:
                done.append(lease)
            elif self._idle(lease, now):
                done.append(lease)
                self.idle_returns += 1
        for lease in done:
            self._leases.remove(lease)
            self._releasing.append(lease)
        for lease in done:
            await self._pool.release(lease.handle)
            self._releasing.remove(lease)

    async def take(self, amount: float) -> list[Charge]:
        """Wait until ``amount`` units are covered by held slots; charge them to the leases.

        An amount larger than the whole pool is charged as the whole pool (as
        :class:`SlidingWindow` admits it once its window is empty), or it could never be sent.
        """
        amount = min(float(amount), float(self.limit))
        denied = False
        ask_at = -math.inf  # when the pool may be asked next (not more than once a poll)
        fresh = False  # a lease was just taken: charge it before anything could find it idle
        while True:
            if not fresh:
                await self.reap()
            fresh = False
            now = self._clock()
            live = self._live(now)
            room = [(lease, lease.window.limit - lease.window.used(now)) for lease in live]
            # A lease charged more than its size (an answer that used more tokens than
            # reserved) takes the excess out of the others' room.
            available = sum(free for _, free in room)
            if available + 1e-9 >= amount:
                return self._charge(room, amount, now)
            own = self._own_wait_s(live, amount, now)
            if own <= self.poll_s or now < ask_at:
                # Units of this worker's own leases come free soon enough: no round trip.
                await self._sleep(max(0.001, min(own, ask_at - now)))
                continue
            need = math.ceil(amount - available - 1e-9)
            want = min(max(self._next_block, need), self.limit)
            if denied:
                # Poll with reads; as soon as what is free covers what is missing, lease it (up
                # to the largest lease) in one round trip rather than growing from one block
                # again: slots a worker gave back are taken over at once, and any this worker
                # does not need go back once idle.
                free = await self._pool.free()
                want = min(free, max(self.max_block, need)) if free >= need else 0
            handle = await self._pool.acquire(want) if want > 0 else None
            if handle is not None:
                window = SlidingWindow(want, self.hold_s)
                opened = self._clock()
                # Jittered slices: leases taken together (a run's start) do not all retire,
                # and leave the whole pool to be leased again, at the same moment.
                spread = self.slice_s * self.slice_jitter * (self._random.random() - 0.5)
                self._leases.append(_Lease(handle, window, opened, opened + self.slice_s + spread))
                self.leases += 1
                self._next_block = min(self.max_block, 2 * self._next_block)
                if self._background and (self._reaper is None or self._reaper.done()):
                    self._reaper = asyncio.ensure_future(self._reap_forever())
                denied = False
                fresh = True
                continue
            self.refused += 1
            self._next_block = self.block
            denied = True
            ask_at = self._clock() + self.poll_s

    def _own_wait_s(self, live: list[_Lease], amount: float, now: float) -> float:
        """Until units of a held lease leave the window (before the lease retires), or inf."""
        waits = [math.inf]
        for lease in live:
            wait = lease.window.wait_s(min(amount, lease.window.limit), now)
            if wait > 0 and now + wait < lease.retires:
                waits.append(wait)
        return min(waits)

    def _next_event_s(self, now: float) -> float:
        """Until a lease may be given back: retired or idle, with its last unit out of the
        window."""
        events = [
            max(
                min(lease.retires, lease.idle_since(self.hold_s) + self.idle_s) - now,
                lease.window.wait_s(lease.window.limit, now),
            )
            for lease in self._leases
        ]
        return max(0.01, min(events, default=self.poll_s))

    async def _reap_forever(self) -> None:
        """Give leases back on time even while this worker sends nothing (between batches)."""
        while self._leases:
            await self._sleep(self._next_event_s(self._clock()))
            await self.reap()

    def _charge(self, room: list[tuple[_Lease, float]], amount: float, now: float) -> list[Charge]:
        charges: list[Charge] = []
        left = amount
        for lease, free in room:
            if left <= 1e-9:
                break
            part = min(left, max(0.0, free))
            if part <= 0:
                continue
            charges.append(Charge(lease, lease.window.admit(part, now)))
            lease.last_charged = now
            left -= part
        if left > 1e-9:  # rounding: the last lease takes the remainder
            lease = room[-1][0]
            charges.append(Charge(lease, lease.window.admit(left, now)))
            lease.last_charged = now
        return charges

    def refund(self, charges: list[Charge], amount: float) -> None:
        """Settle a reservation: ``amount`` units back (negative: charge that much more)."""
        now = self._clock()
        if not charges:
            return
        if amount < 0:
            last = charges[-1]
            last.lease.window.correct(last.entry, last.entry[1] - amount, now)
            return
        for charge in reversed(charges):
            back = min(amount, charge.entry[1])
            charge.lease.window.correct(charge.entry, charge.entry[1] - back, now)
            amount -= back
            if amount <= 1e-9:
                break

    async def aclose(self) -> None:
        """End of run: give every lease back once the units it covers have left the window.

        Waiting is what keeps the invariant: a slot given back while it still covers a unit
        sent less than a window ago could be spent again by another worker at once. Waits
        longer than ``linger_s`` are left to the server instead: the lease is cut to expire
        when its units have left the window (Prefect's shortest lease is 60 s).
        """
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait([self._reaper])
            self._reaper = None
        for lease in list(self._releasing):
            # The cancelled reaper was giving these back: finish (a lease the server already
            # released answers with an error, which changes nothing).
            with contextlib.suppress(Exception):
                await self._pool.release(lease.handle)
            self._releasing.remove(lease)
        now = self._clock()
        for lease in self._leases:
            lease.retired = True
        last = max((x.window.wait_s(x.window.limit, now) for x in self._leases), default=0.0)
        if last > self.linger_s:
            for lease in self._leases:
                wait = lease.window.wait_s(lease.window.limit, now)
                if wait > 0:
                    await self._pool.expire(lease.handle, wait)
                else:
                    await self._pool.release(lease.handle)
            self._leases.clear()
            return
        await self.reap()
        while self._leases:
            # Each lease as soon as its own units are out (other workers can use it then), at
            # least a millisecond apart: float rounding can make wait_s say 0 a hair early.
            now = self._clock()
            first = min(x.window.wait_s(x.window.limit, now) for x in self._leases)
            await self._sleep(max(first, 0.001))
            await self.reap()


@dataclass(frozen=True)
class SharedLimits:
    """The lease gates of one teacher's shared limits (either may be absent)."""

    requests: LeaseGate | None = None
    tokens: LeaseGate | None = None

    async def aclose(self) -> None:
        for gate in (self.requests, self.tokens):
            if gate is not None:
                await gate.aclose()


def window_margin_s(window_s: float) -> float:
    """Extra window length on the client: 2% of the window, at least 50 ms, at most 1 s."""
    return min(1.0, max(0.05, 0.02 * window_s))


def timed_margin_s(window_s: float) -> float:
    """The margin once answers tell when the server started on them: 1%, 10 ms to 0.5 s."""
    return min(0.5, max(0.01, 0.01 * window_s))


@dataclass
class Ticket:
    """One admitted attempt: what it reserved, to settle afterwards."""

    tokens_entry: list[float] | None
    reserved_tokens: float
    shared_tokens: list[Charge] = field(default_factory=list)
    settled: bool = False
    requests_entry: list[float] | None = None
    #: When it left (:meth:`Limiter.sent`); until then, when it was admitted.
    sent_at: float = 0.0
    #: How long the server says it worked on the answer (``openai-processing-ms``), if it did.
    server_s: float | None = None


@dataclass(frozen=True)
class Limits:
    """Configured or discovered limits of one teacher (per minute, like the providers')."""

    rpm: float | None = None
    tpm: float | None = None
    window_s: float = 60.0


class Limiter:
    """The gates of one teacher, shared by every batch of a run in this process.

    Requests and tokens are paced (:class:`Pacer`) at the known limit times the
    :class:`RateControl` multiplier, under sliding windows that hold the limit itself. A limit
    the job states is a ceiling, not a fact: when the server announces a lower one in its
    headers, that one is used (the job's again if the server later announces more). Without
    any known request limit, the first cut of the rate sets one: the rate sent in the last
    window, cut.
    """

    def __init__(
        self,
        limits: Limits,
        concurrency: int,
        expected_completion_tokens: int | None = None,
        clock: Callable[[], float] | None = None,
        shared: SharedLimits | None = None,
        refund_below_reservation: bool = True,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.limits = limits
        # OpenAI counts max_tokens against TPM when a request is admitted and never gives it
        # back; refunding to the usage would make the client think it has room it has not.
        self._refunds = refund_below_reservation or expected_completion_tokens is None
        self.shared = shared or SharedLimits()
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._length = limits.window_s + window_margin_s(limits.window_s)
        self._timed = False  # answers tell when the server started on them
        # The job's allowances per window: ceilings for what the headers announce.
        self._job_requests = self._allowance(limits.rpm)
        self._job_tokens = self._allowance(limits.tpm)
        # Always kept (without a known limit, an unlimited one): the requests sent in the last
        # window are what a limit learnt later, or a rate cut without one, starts from.
        self._sent = SlidingWindow(self._job_requests, self._length)
        self.tokens = self._window(limits.tpm)
        self.control = RateControl(limits.window_s)
        #: Requests per second found by the first rate cut while no request limit is known.
        self.found_rate: float | None = None
        self._request_pacer = Pacer()
        self._token_pacer = Pacer()
        self.concurrency = AdaptiveConcurrency(concurrency)
        self.blocked_until = 0.0
        self.rate_limited = 0
        self._expected = expected_completion_tokens
        self._completion_avg: float | None = None
        # Admission is FIFO through one lock: only the head of the queue computes delays and
        # sleeps, so a thousand waiting requests cost one timer, not a thousand.
        self._gate = asyncio.Lock()
        self._slot_freed = asyncio.Event()

    def _allowance(self, per_minute: float | None) -> float:
        """Units per window for a per-minute limit (inf: none)."""
        return math.inf if per_minute is None else per_minute * self.limits.window_s / 60.0

    def _window(self, per_minute: float | None) -> SlidingWindow | None:
        """A window over what the provider allows, a little longer than the provider's own.

        A request leaves the limiter some milliseconds before the provider counts it (event
        loop, network); with windows of exactly the provider's length, an admission made the
        instant an old one expires can arrive before the provider's copy of that one expires.
        """
        if per_minute is None:
            return None
        return SlidingWindow(self._allowance(per_minute), self._length)

    @property
    def requests(self) -> SlidingWindow | None:
        """The requests window, once a request limit is known (configured or announced)."""
        return self._sent if math.isfinite(self._sent.limit) else None

    @property
    def counts_tokens(self) -> bool:
        """Whether admissions are charged tokens (so prompts must be counted)."""
        return self.tokens is not None or self.shared.tokens is not None

    def request_rate(self) -> float | None:
        """Requests per second to pace at now (None: not paced).

        A limit shared between workers is not paced here: the leases of :class:`LeaseGate`
        already spread it, and a lease whose units were spread over its whole window idles
        longer once retired (its last unit leaves a window later): two workers used less of a
        shared limit paced than unpaced (BENCHMARKS.md, "Rate-limit utilisation").
        """
        if self.shared.requests is not None:
            return None
        limit = self._sent.limit
        base = limit / self._length if math.isfinite(limit) else self.found_rate
        return None if base is None else base * self.control.factor

    def token_rate(self) -> float | None:
        """Tokens per second to pace at now (None: not paced; see :meth:`request_rate`)."""
        if self.tokens is None or self.shared.tokens is not None:
            return None
        return self.tokens.limit / self._length * self.control.factor

    def estimate_completion(self) -> float:
        """Tokens to reserve for an answer: max_tokens, else the running average (else 256)."""
        if self._expected is not None:
            return float(self._expected)
        return self._completion_avg if self._completion_avg is not None else 256.0

    def _delay(self, tokens: float, now: float) -> float:
        waits = [self.blocked_until - now, self._sent.wait_s(1, now)]
        rate = self.request_rate()
        if rate is not None:
            if self._request_pacer.due == -math.inf:
                self._request_pacer.start(self._sent, rate, now)
            waits.append(self._request_pacer.wait_s(now))
        if self.tokens is not None:
            waits.append(self.tokens.wait_s(tokens, now))
            if self.token_rate() is not None:
                waits.append(self._token_pacer.wait_s(now))
        return max(0.0, *waits)

    async def acquire(self, prompt_tokens: int) -> Ticket:
        """Wait until an attempt with ``prompt_tokens`` may be sent; reserve its share."""
        tokens = prompt_tokens + self.estimate_completion()
        async with self._gate:
            while True:
                now = self._clock()
                delay = self._delay(tokens, now)
                if delay > 0:
                    await self._sleep(delay)
                elif not self.concurrency.can_start():
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                else:
                    break
            if self.shared.requests is not None:
                await self.shared.requests.take(1)
            charges = []
            if self.shared.tokens is not None:
                charges = await self.shared.tokens.take(tokens)
            now = self._clock()
            requests_entry = self._sent.admit(1, now)
            rate = self.request_rate()
            burst_s = self.control.burst_s
            if rate is not None:
                self._request_pacer.admit(1, rate, now, burst_s)
            entry = None
            if self.tokens is not None:
                entry = self.tokens.admit(tokens, now)
                token_rate = self.token_rate()
                if token_rate is not None:
                    self._token_pacer.admit(tokens, token_rate, now, burst_s)
            self.concurrency.in_flight += 1
        return Ticket(entry, tokens, charges, requests_entry=requests_entry, sent_at=now)

    def sent(self, ticket: Ticket) -> None:
        """The attempt leaves now: it counts against the windows from now, not its admission."""
        now = self._clock()
        ticket.sent_at = max(ticket.sent_at, now)
        self._move(ticket, now)

    def _timed_by_server(self) -> None:
        """Answers say when the server started on them: a smaller margin will do.

        The 2% margin is for requests counted by the server later than the client counted
        them; an entry moved to (answer - processing time) is counted no earlier than the
        server did, so only rounding is left to cover (BENCHMARKS.md, "Rate-limit utilisation").
        """
        self._timed = True
        self._length = self.limits.window_s + timed_margin_s(self.limits.window_s)
        for window in (self._sent, self.tokens):
            if window is not None:
                window.window_s = self._length

    def _move(self, ticket: Ticket, at: float) -> None:
        if ticket.requests_entry is not None:
            self._sent.move(ticket.requests_entry, at)
        if ticket.tokens_entry is not None and self.tokens is not None:
            self.tokens.move(ticket.tokens_entry, at)

    def release(
        self,
        ticket: Ticket,
        *,
        usage_tokens: int | None = None,
        completion_tokens: int | None = None,
        rate_limited: bool = False,
        headers: dict[str, float] | None = None,
    ) -> None:
        """Settle an attempt: real usage, whether it was rate limited, the server's view.

        A 429 does not pause the teacher — the rate-limited request itself waits for the
        server's hint in the retry layer, the others go on — but 429s beyond the tolerance cut
        the rate and the concurrency (:class:`RateControl`).
        """
        if ticket.settled:
            return
        ticket.settled = True
        now = self._clock()
        self.concurrency.in_flight -= 1
        if ticket.server_s is not None:
            # The server started on it at most this long before its answer reached us.
            self._move(ticket, now - ticket.server_s)
            if not self._timed:
                self._timed_by_server()
        if rate_limited:
            # A refused request is not counted by the server: nor here.
            if ticket.requests_entry is not None:
                self._sent.correct(ticket.requests_entry, 0, now)
            if ticket.tokens_entry is not None and self.tokens is not None:
                self.tokens.correct(ticket.tokens_entry, 0, now)
                usage_tokens = None
        if usage_tokens is not None and not self._refunds:
            usage_tokens = max(usage_tokens, int(ticket.reserved_tokens))
        if ticket.tokens_entry is not None and self.tokens is not None and usage_tokens is not None:
            self.tokens.correct(ticket.tokens_entry, usage_tokens, now)
            token_rate = self.token_rate()
            if token_rate is not None and usage_tokens < ticket.reserved_tokens:
                self._token_pacer.refund(ticket.reserved_tokens - usage_tokens, token_rate)
        if self.shared.tokens is not None and usage_tokens is not None:
            self.shared.tokens.refund(ticket.shared_tokens, ticket.reserved_tokens - usage_tokens)
        if completion_tokens is not None:
            previous = self._completion_avg
            self._completion_avg = (
                float(completion_tokens)
                if previous is None
                else 0.9 * previous + 0.1 * completion_tokens
            )
        if headers:
            self._learn(headers, now)
        if rate_limited:
            self.rate_limited += 1
            self._rate_limited(ticket, now)
        elif usage_tokens is not None:
            self.concurrency.on_success()
            known = math.isfinite(self._sent.limit) or self.tokens is not None
            self.control.on_success(now, 1.0 if known else math.inf)
        self._slot_freed.set()

    def _rate_limited(self, ticket: Ticket, now: float) -> None:
        """429s beyond the tolerance: cut the rate (finding one if none is known)."""
        sent = self._sent.used(now)
        if not self.control.on_rate_limited(ticket.sent_at, now, sent):
            return
        self.concurrency.on_rate_limited()
        if self.request_rate() is None:
            # No limit known: the rate sent over the last window (or since the first request,
            # if the run is younger than a window) was too much.
            oldest = self._sent.oldest(now)
            span = self._length if oldest is None else min(self._length, max(now - oldest, 1.0))
            self.found_rate = max(sent, 1.0) / span

    def _learn(self, headers: dict[str, float], now: float) -> None:
        """Adopt the limits the server announces, under the job's; hold off when it says a
        window is exhausted."""
        announced = headers.get("requests_limit")
        if announced:
            self._sent.limit = min(self._job_requests, self._allowance(announced))
        announced = headers.get("tokens_limit")
        if announced:
            allowance = min(self._job_tokens, self._allowance(announced))
            if self.tokens is None:
                self.tokens = SlidingWindow(allowance, self._length)
            else:
                self.tokens.limit = allowance
        for kind in ("requests", "tokens", "input_tokens", "output_tokens"):
            remaining = headers.get(f"{kind}_remaining")
            reset = headers.get(f"{kind}_reset_s")
            if remaining is not None and remaining <= 0 and reset is not None:
                self.blocked_until = max(self.blocked_until, now + min(reset, 60.0))
