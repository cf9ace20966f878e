"""Does ``distillery run`` keep ``concurrency`` requests in flight against a slow teacher?

Why: real teachers take seconds per answer, so throughput is concurrency / latency, and only if
the run really keeps ``concurrency`` requests in flight — across batch boundaries, Prefect task
starts and shard writes. Goal: >= 0.9 of concurrency / latency (256 in flight against a 1 s
teacher: 256 req/s).

The emulator runs as a separate process with ``--latency-ms 1000`` (each answer waits a uniform
0.5-1.5 s, mean 1 s) and ``--max-concurrency 100000`` (never refuses; it only makes the
emulator track the most requests in flight it saw). The runs go through the real command against
one Prefect server started with ``distillery server start`` under a temporary
``DISTILLERY_HOME``. The job's ``batch_size`` x ``max_batches_in_flight`` must exceed the
concurrency, or batches cap the requests in flight: batch_size 500 x 4 (2,000 slots, the
default) as the main case, and 100 x 4 (400, the default before) for comparison. A bare
aiohttp loop with the same concurrency (bench/http_stack.py's) shows what the machine allows
without distillery.

Steady-state rate: answers between the emulator's first request + 1.5 s (the longest latency:
by then every first answer has come back and been replaced) and the last request sent (after
which the run drains), per second. Each request is placed with its sample's ``created_at`` (sent)
and ``created_at`` + ``latency_ms`` (answered).

Run by hand from the repository root::

    .venv/bin/python bench/latency_hiding.py [--prompts 1500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import append_section, exit_cleanly_on_sigterm, markdown_table
from _flow_runs import (
    CliRun,
    LimitedEmulator,
    PrefectServer,
    Request,
    load_average,
    read_samples,
    short_prompts,
    write_job,
)
from http_stack import aiohttp_stack, make_prompts

LATENCY_MS = 1000.0
MAX_LATENCY_S = 1.5  # the emulator's latency is uniform in 0.5x..1.5x the mean
MAX_TOKENS = 100
BARE = "bare aiohttp loop (http_stack), same concurrency"


@dataclass(frozen=True)
class Setup:
    name: str
    batch_size: int = 0  # 0: the bare loop
    max_batches_in_flight: int = 4


@dataclass
class Result:
    steady: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    max_in_flight: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)


def steady_span(requests: list[Request], first: float) -> tuple[float, float]:
    """The steady state: from the first request + the longest latency to the last send."""
    return first + MAX_LATENCY_S, max(r.sent for r in requests)


def rates(requests: list[Request], first: float) -> tuple[float, float, float]:
    """(steady-state answers/s, whole-run answers/s, mean latency seen by the client in s)."""
    start, end = steady_span(requests, first)
    if end - start < 1.0:
        raise RuntimeError("too few prompts for a steady state: use more --prompts")
    steady = sum(start <= r.done <= end for r in requests) / (end - start)
    whole = len(requests) / (max(r.done for r in requests) - first)
    latency = statistics.mean(r.done - r.sent for r in requests)
    return steady, whole, latency


async def bare_loop(url: str, count: int, concurrency: int) -> list[Request]:
    """``count`` requests through http_stack's aiohttp loop; each one's (sent, answered)."""
    prompts = make_prompts(count)
    done: list[Request] = []
    async with aiohttp_stack(MAX_TOKENS)(url, concurrency) as send:
        queue = iter(prompts)

        async def worker() -> None:
            for messages in queue:  # one shared iterator: each prompt is sent once
                sent = time.time()
                await send(messages)
                done.append(Request(sent, time.time(), 0, 0, 1))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def measure(
    setup: Setup,
    args: argparse.Namespace,
    emulator: LimitedEmulator,
    server: PrefectServer,
    workdir: Path,
    label: str,
) -> tuple[float, float, float, int, float, float]:
    """One run: (steady req/s, whole-run req/s, mean latency s, max in flight, wall s, client
    CPU as a share of one core over the steady state, or the whole loop for the bare loop)."""
    emulator.reset()
    if not setup.batch_size:
        clock, cpu = time.perf_counter(), time.process_time()
        requests = asyncio.run(bare_loop(emulator.url, args.prompts, args.concurrency))
        wall = time.perf_counter() - clock
        client_cpu = (time.process_time() - cpu) / wall
    else:
        config = write_job(
            workdir / label,
            emulator.url,
            short_prompts(args.prompts),
            name="bench-latency",
            concurrency=args.concurrency,
            batch_size=setup.batch_size,
            max_batches_in_flight=setup.max_batches_in_flight,
            max_tokens=MAX_TOKENS,
        )
        run = CliRun(config, label, server.env).launch().wait()
        requests, wall = read_samples(run.output, label), run.wall_s
    stats = emulator.stats()
    if stats["served_ok"] != args.prompts or len(requests) != args.prompts:
        raise RuntimeError(f"{label}: {len(requests)} answers, emulator stats {stats}")
    first = float(stats["first_request_at"])
    steady, whole, latency = rates(requests, first)
    if setup.batch_size:
        start, end = steady_span(requests, first)
        client_cpu = run.cpu_between(start, end) / (end - start)
    return steady, whole, latency, int(stats["max_in_flight"]), wall, client_cpu


def run(
    args: argparse.Namespace, setups: list[Setup], workdir: Path
) -> tuple[dict[str, Result], float]:
    results = {setup.name: Result() for setup in setups}
    with (
        PrefectServer(workdir / "home") as server,
        LimitedEmulator(LATENCY_MS, max_concurrency=100_000) as emulator,
    ):
        for repeat in range(args.repeats):
            for index, setup in enumerate(setups):
                steady, whole, latency, in_flight, wall, cpu = measure(
                    setup, args, emulator, server, workdir, f"s{index}-r{repeat}"
                )
                result = results[setup.name]
                result.steady.append(steady)
                result.whole.append(whole)
                result.latency_s.append(latency)
                result.max_in_flight.append(in_flight)
                result.wall_s.append(wall)
                result.client_cpu.append(cpu)
                print(
                    f"  repeat {repeat + 1}: {setup.name}: steady {steady:.0f} req/s, whole "
                    f"{whole:.0f}, latency {latency:.3f} s, max in flight {in_flight}, "
                    f"client CPU {cpu:.0%}, wall {wall:.1f} s; load {load_average()}",
                    flush=True,
                )
        start_s = server.start_s
    return results, start_s


def report(results: dict[str, Result], concurrency: int) -> tuple[str, str]:
    ideal = concurrency / (LATENCY_MS / 1000)
    headers = ["setup", "steady req/s (median)", "runs", "steady / ideal"]
    headers += ["whole run req/s", "max in flight (emulator)", "mean latency seen (s)"]
    headers += ["Little's-law bound (req/s)", "client CPU (share of a core)"]
    rows: list[list[str]] = []
    for name, r in results.items():
        steady = statistics.median(r.steady)
        latency = statistics.median(r.latency_s)
        rows.append(
            [
                name,
                f"{steady:.0f}",
                ", ".join(f"{x:.0f}" for x in r.steady),
                f"{steady / ideal:.2f}",
                f"{statistics.median(r.whole):.0f}",
                ", ".join(str(x) for x in r.max_in_flight),
                f"{latency:.3f}",
                f"{concurrency / latency:.0f}",
                f"{statistics.median(r.client_cpu):.0%}",
            ]
        )
    names = list(results)
    main = results[names[0]]
    ratio = statistics.median(main.steady) / ideal
    verdict = "met" if ratio >= 0.9 else "not met"
    bare = results.get(BARE)
    conclusion = (
        f"With batch_size 500 x 4 in flight the flow answered "
        f"{statistics.median(main.steady):.0f} req/s in the steady state, {ratio:.2f} of "
        f"concurrency / latency = {ideal:.0f}/s (goal >= 0.9: {verdict}); the emulator saw at "
        f"most {max(main.max_in_flight)} requests in flight and the client measured a mean "
        f"latency of {statistics.median(main.latency_s):.3f} s, so the shortfall from {ideal:.0f}"
        f"/s is {'mostly ' if statistics.median(main.latency_s) > 1.02 else ''}time each request "
        "spent in the client beyond the teacher's 1 s, with the command using "
        f"{statistics.median(main.client_cpu):.0%} of a core (its event loop is its one core)"
        + (
            f" (the bare aiohttp loop, {statistics.median(bare.steady):.0f} req/s, "
            f"{statistics.median(bare.latency_s):.3f} s)"
            if bare is not None
            else ""
        )
        + "."
    )
    if len(names) > 2:
        smaller = results[names[1]]
        conclusion += (
            " batch_size 100 x 4 (the default before 500) reached "
            f"{statistics.median(smaller.steady):.0f} "
            f"req/s ({statistics.median(smaller.steady) / ideal:.2f}), most "
            f"{max(smaller.max_in_flight)} in flight."
        )
    return markdown_table(headers, rows), conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1500, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=256, help="the job's concurrency")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    setups = [
        Setup("`distillery run`, batch_size 500, 4 batches in flight", 500),
        Setup("`distillery run`, batch_size 100, 4 in flight", 100),
        Setup(BARE),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-latency-"))
    print(f"load average at start: {load_average()}", flush=True)
    try:
        results, server_start = run(args, setups, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table, conclusion = report(results, args.concurrency)
    print()
    print(table)
    print()
    print(conclusion)
    notes = [
        f"Emulator: `distillery emulator --latency-ms {LATENCY_MS:g} --max-concurrency 100000` "
        "in its own process (uniform 0.5-1.5 s per answer; the concurrency limit never binds, "
        "it only makes the emulator count the requests in flight).",
        f"Job: {args.prompts} short distinct prompts, one OpenAI-format teacher, concurrency "
        f"{args.concurrency}, max_tokens {MAX_TOKENS}; {args.repeats} runs per setup, "
        "round-robin. `distillery run` as a subprocess; one Prefect server for all runs "
        f"(`distillery server start` took {server_start:.0f} s), PREFECT_API_URL unset.",
        "Steady req/s: answers (created_at + latency_ms of each sample; the bare loop times its "
        f"own requests) from the emulator's first request + {MAX_LATENCY_S:g} s to the last "
        "request sent, per second. Whole run: requests / (last answer - first request). Mean "
        "latency seen: answered - sent, as the client measures it; Little's-law bound = "
        "concurrency / that latency. Client CPU: the command's CPU over the steady state "
        "(/proc, sampled every 50 ms) per second; the bare loop's over the whole loop.",
    ]
    if not args.no_write:
        append_section(
            "Latency hiding at concurrency 256 (bench/latency_hiding.py)",
            table,
            conclusion,
            notes,
        )


if __name__ == "__main__":
    main()
