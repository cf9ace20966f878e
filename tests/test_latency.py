"""Where a request's time went: the teacher's answer (``latency_ms``), our limiter's queue
(``queue_ms``) and the retries (``retry_ms``), kept apart so a slow teacher and a binding limit
are told from each other (issue 15, item 9)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from distillery.config import LimitsConfig, TeacherConfig, load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.generators.batch import TeacherPool, run_batch
from distillery.generators.client import Outcome, TeacherClient
from distillery.generators.http import make_http_client
from distillery.generators.providers.registry import get_provider
from distillery.generators.ratelimit import Limiter, Limits, Ticket
from distillery.storage.catalog import open_catalog
from distillery.storage.location import as_location
from distillery.storage.shards import write_shard

from .conftest import batch_before_commit, write_job


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_API_KEY", "k")


#: The emulator's mean added latency; it answers within 0.5x..1.5x of it.
EMULATOR_LATENCY_MS = 40.0


class OffsetClock:
    """Real time plus an offset the test moves: a queue of minutes costs no real waiting,
    while the round trip to the emulator is still measured as it really happens."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.perf_counter() + self.offset


class QueuedLimiter(Limiter):
    """A real limiter, in front of which every admission first waits ``queue_s`` on the
    test's clock (what a binding rpm/tpm limit does, without sleeping through it)."""

    def __init__(self, clock: OffsetClock, queue_s: float) -> None:
        super().__init__(Limits(), 4, clock=clock)
        self.test_clock, self.queue_s = clock, queue_s

    async def acquire(self, prompt_tokens: int) -> Ticket:
        self.test_clock.offset += self.queue_s
        return await super().acquire(prompt_tokens)


def _ask(url: str, clock: OffsetClock, queue_s: float) -> Outcome:
    spec = TeacherConfig.model_validate(
        {"name": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": f"{url}/v1"}
    )

    async def scenario() -> Outcome:
        http = make_http_client("aiohttp", 2, 10.0, spec.base_url)
        try:
            limiter = QueuedLimiter(clock, queue_s)
            client = TeacherClient(spec, get_provider("openai"), http, limiter, clock=clock)
            await client.complete([{"role": "user", "content": "warm the connection"}])
            return await client.complete([{"role": "user", "content": "Explain tides."}])
        finally:
            await http.aclose()

    return asyncio.run(scenario())


def test_a_queue_before_admission_is_not_the_teachers_latency() -> None:
    """Ten seconds in the limiter's queue and a ~40 ms answer: ``latency_ms`` is the answer's
    time on the wire, ``queue_ms`` the ten seconds. (Before the split, latency_ms was ~10 s.)"""
    clock = OffsetClock()
    with RunningEmulator(EmulatorOptions(seed=3, latency_ms=EMULATOR_LATENCY_MS)) as emulator:
        outcome = _ask(emulator.url, clock, queue_s=10.0)
    assert outcome.completion is not None and outcome.attempts == 1
    # The emulator waits at least half its mean; a loaded machine may add a lot, never 10 s.
    assert EMULATOR_LATENCY_MS * 0.5 * 0.9 <= outcome.latency_ms < 5_000
    assert 10_000 <= outcome.queue_ms < 15_000
    assert outcome.retry_ms == 0.0


def test_no_limiter_no_queue() -> None:
    """Without a limiter nothing waits for admission: the whole request is on the wire."""
    spec = TeacherConfig.model_validate(
        {"name": "t", "provider": "openai", "model": "m", "base_url": "http://x/v1"}
    )
    with RunningEmulator(EmulatorOptions(seed=3, latency_ms=EMULATOR_LATENCY_MS)) as emulator:
        spec = spec.model_copy(update={"base_url": f"{emulator.url}/v1"})

        async def scenario() -> Outcome:
            http = make_http_client("aiohttp", 2, 10.0, spec.base_url)
            try:
                client = TeacherClient(spec, get_provider("openai"), http)
                return await client.complete([{"role": "user", "content": "Explain bees."}])
            finally:
                await http.aclose()

        outcome = asyncio.run(scenario())
    assert outcome.completion is not None
    assert outcome.queue_ms == 0.0 and outcome.retry_ms == 0.0
    assert EMULATOR_LATENCY_MS * 0.5 * 0.9 <= outcome.latency_ms < 5_000


@pytest.mark.slow
def test_a_binding_rate_limit_shows_in_queue_ms_not_latency_ms(tmp_path: Path) -> None:
    """The issue's case end to end (batch, lineage rows, shards, DuckDB views): a limit of one
    request per 0.55 s window holds four requests back by up to ~1.65 s, while the emulator
    answers each in ~40 ms. latency_ms reports the ~40 ms, queue_ms the pacing."""
    limits = LimitsConfig(rpm=120, window_s=0.5)  # one request per window (+ the margin)
    options = EmulatorOptions(seed=5, latency_ms=EMULATOR_LATENCY_MS)
    rows: dict[str, list[Mapping[str, Any]]] = {"samples": [], "rejected": [], "failures": []}
    with RunningEmulator(options) as emulator:
        job = load_config(write_job(tmp_path, emulator.url, prompts=4))
        teacher = job.teachers[0].model_copy(update={"limits": limits})
        job = job.model_copy(update={"teachers": [teacher]})
        items, ctx, spool = batch_before_commit(job, "r")
        spool.discard()

        async def batch() -> None:
            async with TeacherPool(job) as pool:
                await run_batch(items, pool, ctx, sink=lambda t, row: rows[t].append(row))

        asyncio.run(batch())
    assert len(rows["samples"]) == 4, rows["failures"]
    write_shard(as_location(job.output), "samples", "r", rows["samples"], 0)
    con = open_catalog(job.output)
    latency, queue, retry = con.execute(
        "SELECT max(latency_ms), max(queue_ms), max(retry_ms) FROM samples"
    ).fetchall()[0]
    assert queue >= 1_000  # the fourth admission waited three windows
    assert latency < 1_000  # each answer took ~40 ms (generous for a loaded machine)
    assert retry == 0
    view = con.execute(
        "SELECT latency_ms_p50, queue_ms_p90, retry_ms_mean FROM teachers WHERE teacher_name='t0'"
    ).fetchall()
    assert len(view) == 1
    latency_p50, queue_p90, retry_mean = view[0]
    assert latency_p50 < 1_000 <= queue_p90 and retry_mean == 0
