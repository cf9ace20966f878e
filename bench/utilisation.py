"""How much of a teacher's rate limit ``distillery run`` uses, and how often it overshoots.

Why: a run that stays far under its limits wastes quota and hours; one that overshoots gets
429s, retries and (against real providers) risks a throttled key. The client's admission
control (``generators/ratelimit.py``: sliding windows, token reservations, AIMD concurrency,
header learning, and Prefect-held leases for ``limits.shared``) is meant to sit just under the
limit. Goals: a single worker at >= 97% of the binding limit with <= 1% of its requests
answered 429, whether the job states the limit right, states none, or states twice the
server's (issue 15: told the wrong limit, the client must converge on the one the server
announces), with two CPU hogs beside the run (``--hogs 2``: a loaded machine delivers
requests late and out of order); two workers sharing one limit at >= 95% together.

The limit is enforced server-side by the emulator in its own process (``--rpm`` / ``--tpm`` over
a sliding window compressed to ``--window-s 6``, i.e. 120 requests or 12,000 tokens per 6 s), so
every overshoot is a 429 it counts. The runs go through the real command (``distillery run``,
one subprocess per worker) against one Prefect server started with ``distillery server start``
under a temporary ``DISTILLERY_HOME``.

Cases: the job declares the same limit as the server (``limits: {rpm: 1200, window_s: 6}``);
the job declares only the window (``limits: {window_s: 6}``: rpm/tpm are learned from the
``x-ratelimit-limit-*`` headers of the first answers, as against a real provider, whose window
is the default 60 s); the job declares no ``limits`` at all (the learned per-minute limit is then
paced over 60 s, not 6); the job declares twice the server's limit (``rpm: 2400``: the lower
limit in the headers must win); the server enforces its limit quantized to 1 s slices
(``--quantum-s 1``: 20 per any second, as OpenAI may enforce 60,000 RPM as 1,000 per second;
started as ``python -m distillery.emulator``, whose flags include it); and two workers with
``limits.shared: true`` and distinct prompts.

Achieved / limit is measured over the steady state: whole windows aligned to the emulator's
first request, leaving out the first (start-up burst) and the one in which the run ran out of
prompts (a sliding limit lets the start-up burst repeat once per window, so a span that is not
made of whole aligned windows is biased). Each request is placed at its answer (``created_at``
+ ``latency_ms`` of its sample; the emulator adds ~0.2 s) and, for tokens, weighted with what
the emulator charged it: prompt tokens + ``max_tokens``.

The leases-alone cases take the shared limit's path without any HTTP (``LeaseGate`` over
a Prefect global concurrency limit, as ``flows/shared_limits.py`` sizes it), to tell the cost of
the leases from the rest.

Run by hand from the repository root::

    .venv/bin/python bench/utilisation.py [--seconds 60] [--hogs 2] [--only 'RPM, job']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import append_section, exit_cleanly_on_sigterm, markdown_table
from _flow_runs import (
    CliRun,
    LimitedEmulator,
    PrefectServer,
    Request,
    load_average,
    read_run_record,
    read_samples,
    run_all,
    short_prompts,
    write_job,
)

from distillery.flows.shared_limits import BLOCK_SHARE, IDLE_SHARE, MAX_SHARE, SLICE_WINDOWS

RPM, TPM, WINDOW_S = 1200, 120_000, 6.0
LATENCY_MS = 200.0
CONCURRENCY = 16
MAX_TOKENS = 100
LEASE_WARMUP_S = 4.0  # leases-alone workers' start-up (imports) before whole windows


@dataclass(frozen=True)
class Case:
    """One measurement: which limit, what the job declares, how many workers."""

    name: str
    kind: str  # "rpm", "tpm", or "lease" (Prefect leases alone, no HTTP)
    limits: dict[str, Any] | None
    workers: int = 1
    max_tokens: int = MAX_TOKENS
    quantum_s: float | None = None  # the emulator's quantized enforcement (--quantum-s)


CASES = (
    Case("RPM, job states it right", "rpm", {"rpm": RPM, "window_s": WINDOW_S}),
    Case("RPM, job states only window_s (learned from headers)", "rpm", {"window_s": WINDOW_S}),
    Case("RPM, job states no limits (learned from headers)", "rpm", None),
    Case(
        "RPM, job states twice the limit (rpm 2400)", "rpm", {"rpm": 2 * RPM, "window_s": WINDOW_S}
    ),
    Case(
        "RPM, job states it right, server quantized to 1 s",
        "rpm",
        {"rpm": RPM, "window_s": WINDOW_S},
        quantum_s=1.0,
    ),
    Case("TPM, declared in the job", "tpm", {"tpm": TPM, "window_s": WINDOW_S}),
    Case(
        "TPM, declared, max_tokens 20 (every answer uses all of it)",
        "tpm",
        {"tpm": TPM, "window_s": WINDOW_S},
        max_tokens=20,
    ),
    Case(
        "RPM, shared: 2 workers (`shared: true`)",
        "rpm",
        {"rpm": RPM, "window_s": WINDOW_S, "shared": True},
        workers=2,
    ),
    Case(
        "Prefect leases alone (no HTTP), 2 processes: 120 per 6 s (block 2)",
        "lease",
        {"rpm": RPM, "window_s": WINDOW_S, "shared": True},
        workers=2,
    ),
    Case(
        "Prefect leases alone (no HTTP), 2 processes: 12,000 per 6 s (block 240)",
        "lease",
        {"rpm": 100 * RPM, "window_s": WINDOW_S, "shared": True},
        workers=2,
    ),
)


TPM_CASE = next(c for c in CASES if c.kind == "tpm")
TPM_CASE_20 = next(c for c in CASES if c.kind == "tpm" and c.max_tokens == 20)


@dataclass
class Result:
    case: Case
    requests: int
    rate_limited: int
    samples: int
    failures: int
    utilisation: float
    measured_s: float
    wall_s: list[float]
    max_in_flight: int | None
    load: str = ""


def steady_utilisation(
    events: list[tuple[float, float]], first: float, allowance: float
) -> tuple[float, list[float]]:
    """Mean share of ``allowance`` used per window in the steady state; and each window's share.

    ``events`` are (time, amount). Windows are aligned to ``first`` (the emulator's first
    request): the first one is left out (the start-up burst), and so is the one holding the
    last event (the run ran out of prompts in it). A sliding limit lets a start-up burst repeat
    once per window, so only whole windows aligned to it measure the rate without bias.
    """
    last = max(t for t, _ in events)
    windows = int((last - first) // WINDOW_S)
    if windows < 2:
        raise RuntimeError("the run was too short: use more --seconds")
    shares = [
        sum(a for t, a in events if first + k * WINDOW_S <= t < first + (k + 1) * WINDOW_S)
        / allowance
        for k in range(1, windows)
    ]
    return statistics.mean(shares), shares


def charge(request: Request, case: Case) -> float:
    """What the emulator's limit counted for a request: 1, or prompt + max_tokens tokens."""
    return 1.0 if case.kind == "rpm" else float(request.prompt_tokens + case.max_tokens)


def run_case(
    case: Case,
    emulator: LimitedEmulator,
    server: PrefectServer,
    workdir: Path,
    prompts_per_worker: int,
) -> Result:
    emulator.reset()
    slug = f"{case.kind}-{CASES.index(case)}"
    if case.limits is not None and case.limits.get("shared"):
        create_shared_limit(case.limits, f"{emulator.url}/v1", server)
    runs: list[CliRun] = []
    for worker in range(case.workers):
        prefix = f"w{worker}-" if case.workers > 1 else "p"
        # Distinct prompt texts and ids per worker: the run is split between them.
        texts = [f"{text} (worker {worker})" for text in short_prompts(prompts_per_worker)]
        config = write_job(
            workdir / f"{slug}-w{worker}",
            emulator.url,
            texts,
            name=f"bench-{case.kind}",
            id_prefix=prefix,
            concurrency=CONCURRENCY,
            limits=case.limits,
            max_tokens=case.max_tokens,
        )
        runs.append(CliRun(config, f"{slug}-w{worker}", server.env))
    run_all(runs)
    stats = emulator.stats()
    requests: list[Request] = []
    failures = 0
    per_worker: list[list[Request]] = []
    for run in runs:
        per_worker.append(read_samples(run.output, run.run_id))
        requests += per_worker[-1]
        failures += int(read_run_record(run.output, run.run_id)["failures"])
    requests.sort(key=lambda r: r.done)
    allowance = RPM * WINDOW_S / 60 if case.kind == "rpm" else TPM * WINDOW_S / 60
    utilisation, shares = steady_utilisation(
        [(r.done, charge(r, case)) for r in requests], float(stats["first_request_at"]), allowance
    )
    measured = len(shares) * WINDOW_S
    result = Result(
        case,
        requests=int(stats["requests"]),
        rate_limited=int(stats["rate_limited"]),
        samples=len(requests),
        failures=failures,
        utilisation=utilisation,
        measured_s=measured,
        wall_s=[run.wall_s for run in runs],
        max_in_flight=stats["max_in_flight"],
        load=load_average(),
    )
    print(
        f"  {case.name}: {result.utilisation:.1%} of the limit over {measured:.0f} s, "
        f"{result.rate_limited} of {result.requests} answered 429, "
        f"{result.samples} samples, {failures} failures; windows "
        + " ".join(f"{share:.0%}" for share in shares)
        + "; walls "
        + ", ".join(f"{w:.1f}" for w in result.wall_s)
        + f" s; load {result.load}",
        flush=True,
    )
    if case.workers > 1:
        # Each worker's requests per window (same alignment) and its first/last answer: how
        # evenly the workers shared the limit and how far apart they finished.
        first = float(stats["first_request_at"])
        for index, own in enumerate(per_worker):
            counts = [0] * (int((max(r.done for r in own) - first) // WINDOW_S) + 1)
            for r in own:
                counts[int((r.done - first) // WINDOW_S)] += 1
            start, end = min(r.done for r in own) - first, max(r.done for r in own) - first
            print(
                f"    worker {index}: per window {counts}, answers from {start:.1f} to {end:.1f} s",
                flush=True,
            )
    return result


def prompts_for(case: Case, seconds: float) -> int:
    """Prompts that keep a single worker at the limit for about ``seconds``."""
    if case.kind == "rpm":
        return round(RPM / 60 * seconds)
    charged = 16 + case.max_tokens  # "Explain rivers, case 12. (worker 0)": ~16 prompt tokens
    return round(TPM / 60 / charged * seconds)


def run_lease_case(case: Case, server: PrefectServer, seconds: float) -> Result:
    """``case.workers`` processes taking one request at a time from the teacher's shared
    limit (flows/shared_limits.py: LeaseGate over Prefect's rate limit), sending nothing."""
    assert case.limits is not None
    base_url = f"http://127.0.0.1:9/v{CASES.index(case)}"  # never contacted
    create_shared_limit(case.limits, base_url, server)
    command = [sys.executable, str(Path(__file__).resolve()), "--lease-worker"]
    command += [json.dumps(case.limits), str(seconds), base_url]
    env = {**server.env, "PREFECT_API_URL": server.api_url}
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(case.workers)
    ]
    try:
        outputs = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    taken = sorted(t for output in outputs for t in output["times"])
    # Whole windows from the first take: a sliding-window limit lets a window's allowance
    # through in a burst, so only whole windows measure its rate.
    window = float(case.limits["window_s"])
    allowance = float(case.limits["rpm"]) * window / 60
    whole = max(1, math.floor((seconds - LEASE_WARMUP_S) / window))
    inside = [t for t in taken if t < taken[0] + whole * window]
    result = Result(
        case,
        requests=0,
        rate_limited=0,
        samples=len(taken),
        failures=0,
        utilisation=len(inside) / (whole * allowance),
        measured_s=whole * window,
        wall_s=[seconds],
        max_in_flight=None,
        load=load_average(),
    )
    leases = [int(output["leases"]) for output in outputs]
    print(f"  {case.name}: {result.utilisation:.1%} of the limit, leases {leases}", flush=True)
    return result


def lease_teacher(limits: dict[str, Any], base_url: str) -> Any:
    """The teacher whose shared limit a case uses (its name hashes the base URL)."""
    from distillery.config import TeacherConfig

    return TeacherConfig.model_validate(
        {
            "name": "t0",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "base_url": base_url,
            "api_key_env": "EMULATOR_API_KEY",
            "limits": limits,
        }
    )


def create_shared_limit(limits: dict[str, Any], base_url: str, server: PrefectServer) -> None:
    """Create the shared limit before its workers start, so they do not race to create it.

    ``shared_limits_for`` upserts it with Prefect's non-atomic
    ``upsert_global_concurrency_limit_by_name``; until flows/shared_limits.py retried on
    ObjectAlreadyExists, two workers starting at once on a new limit could fail that way.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--lease-worker"]
    command += [json.dumps(limits), "0", base_url]
    env = {**server.env, "PREFECT_API_URL": server.api_url}
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, timeout=120, check=True)


async def lease_worker(limits_json: str, seconds: str, base_url: str) -> None:
    """Take one request at a time from a shared limit for ``seconds``; print the times."""
    from distillery.flows.shared_limits import shared_limits_for

    gate = (await shared_limits_for(lease_teacher(json.loads(limits_json), base_url))).requests
    assert gate is not None
    times: list[float] = []
    end = time.time() + float(seconds)
    while time.time() < end:
        await gate.take(1)
        times.append(time.time())
    print(json.dumps({"times": times, "leases": gate.leases, "block": gate.block}))


@contextmanager
def cpu_hogs(count: int) -> Iterator[list[int]]:
    """``count`` busy-looping processes beside the run (a loaded machine), stopped at the end."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            try:
                hog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                hog.kill()
                hog.wait()


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], float]:
    results: list[Result] = []
    wanted = [part for part in args.only.split("|") if part]
    selected = [case for case in CASES if not wanted or any(w in case.name for w in wanted)]
    with PrefectServer(workdir / "home") as server, cpu_hogs(args.hogs) as hogs:
        if hogs:
            print(f"CPU hogs: pids {hogs}", flush=True)
        servers = dict.fromkeys((c.kind, c.quantum_s) for c in selected if c.kind != "lease")
        for kind, quantum_s in servers:
            limit = {"rpm": RPM} if kind == "rpm" else {"tpm": TPM}
            emulator = LimitedEmulator(LATENCY_MS, window_s=WINDOW_S, quantum_s=quantum_s, **limit)
            with emulator:
                for case in selected:
                    if (case.kind, case.quantum_s) == (kind, quantum_s):
                        per_worker = prompts_for(case, args.seconds) // case.workers
                        results.append(run_case(case, emulator, server, workdir, per_worker))
        for case in selected:
            if case.kind == "lease":
                results.append(run_lease_case(case, server, args.lease_seconds))
        start_s = server.start_s
    results.sort(key=lambda r: CASES.index(r.case))
    return results, start_s


def report(results: list[Result]) -> tuple[str, str]:
    headers = ["case", "limit per 6 s window", "requests sent", "answered 429", "429 share"]
    headers += ["achieved / limit (steady state)", "measured over", "samples", "run wall time"]
    headers += ["load average at its end"]
    rows: list[list[str]] = []
    for r in results:
        if r.case.kind == "lease":
            assert r.case.limits is not None
            window = float(r.case.limits["window_s"])
            rows.append(
                [
                    r.case.name,
                    f"{float(r.case.limits['rpm']) * window / 60:,.0f} requests per {window:g} s",
                    "—",
                    "—",
                    "—",
                    f"{r.utilisation:.1%}",
                    f"{r.measured_s:.0f} s",
                    f"{r.samples:,} taken",
                    " / ".join(f"{w:.0f} s" for w in r.wall_s),
                    r.load,
                ]
            )
            continue
        limit = "120 requests" if r.case.kind == "rpm" else "12,000 tokens"
        rows.append(
            [
                r.case.name,
                limit,
                f"{r.requests:,}",
                f"{r.rate_limited:,}",
                f"{r.rate_limited / r.requests:.1%}",
                f"{r.utilisation:.1%}",
                f"{r.measured_s:.0f} s",
                f"{r.samples:,}" + (f" ({r.failures} failed)" if r.failures else ""),
                " / ".join(f"{w:.0f} s" for w in r.wall_s),
                r.load,
            ]
        )
    return markdown_table(headers, rows), conclude(results)


def conclude(results: list[Result]) -> str:
    """Goals met or not, case by case, and by how much where not."""

    def pct(value: float) -> str:
        return f"{value:.1%}"

    def share(r: Result) -> float:
        return r.rate_limited / r.requests

    single = [r for r in results if r.case.kind != "lease" and r.case.workers == 1]
    shared = [r for r in results if r.case.kind != "lease" and r.case.workers > 1]
    leases = [r for r in results if r.case.kind == "lease"]
    sentences: list[str] = []
    if single:
        met = [r.case.name for r in single if r.utilisation >= 0.97 and share(r) <= 0.01]
        sentences.append(
            f"A single worker met both goals (>= 97% of the binding limit, <= 1% 429s) in "
            f"{len(met)} of {len(single)} cases."
        )
        for r in single:
            misses = []
            if r.utilisation < 0.97:
                misses.append(f"used {pct(r.utilisation)}, {pct(0.97 - r.utilisation)} short")
            if share(r) > 0.01:
                misses.append(f"{pct(share(r))} 429s, {pct(share(r) - 0.01)} over")
            if misses:
                sentences.append(f"Missed: {r.case.name}: {'; '.join(misses)}.")
    for r in shared:
        verdict = "met" if r.utilisation >= 0.95 else "not met"
        text = (
            f"Two workers sharing the limit used {pct(r.utilisation)} of it together (goal "
            f">= 95%: {verdict}) with {pct(share(r))} 429s"
        )
        if leases:
            text += "; the Prefect leases alone (no HTTP) reached " + " and ".join(
                f"{pct(x.utilisation)} ({x.case.name.split(': ')[-1]})" for x in leases
            )
        sentences.append(text + ".")
    return " ".join(sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=25.0, help="traffic per case at the limit (>= 24)"
    )
    parser.add_argument(
        "--lease-seconds", type=float, default=22.0, help="duration of each leases-alone case"
    )
    parser.add_argument(
        "--only", default="", help="run only the cases whose name contains this (or: a|b)"
    )
    parser.add_argument(
        "--hogs", type=int, default=0, help="busy-looping processes beside the run (load)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--lease-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lease_worker:  # a child process of a leases-alone case
        asyncio.run(lease_worker(*args.lease_worker))
        return
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-utilisation-"))
    start_load = load_average()
    print(f"load average at start: {start_load}", flush=True)
    try:
        results, server_start = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table, conclusion = report(results)
    print()
    print(table)
    print()
    print(conclusion)
    print(json.dumps({r.case.name: r.max_in_flight for r in results}))
    notes = [
        f"Emulator: `distillery emulator --latency-ms {LATENCY_MS:g} --window-s {WINDOW_S:g}` "
        f"with `--rpm {RPM}` or `--tpm {TPM}` in its own process (one per limit, reset between "
        "cases); it charges a request prompt tokens + max_tokens at admission, as OpenAI does.",
        f"Job: one OpenAI-format teacher, concurrency {CONCURRENCY}, max_tokens {MAX_TOKENS}, "
        f"max_attempts 5, batch_size 100, 4 batches in flight; ~{args.seconds:g} s of traffic at "
        "the limit per case (RPM: "
        f"{prompts_for(CASES[0], args.seconds)} prompts, TPM: "
        f"{prompts_for(TPM_CASE, args.seconds)} or, with max_tokens 20, "
        f"{prompts_for(TPM_CASE_20, args.seconds)}; the 2-worker case splits them), short "
        "distinct prompts (~16 prompt tokens).",
        f"Load: {args.hogs} CPU hog(s) (`python -c 'while True: pass'`) running beside the "
        "whole benchmark, on top of whatever else the shared machine ran; load average "
        f"{start_load} at the start, each case's at its end in the table. The twice-too-high "
        "case's job states `rpm: 2400`; the quantized case's emulator runs with "
        "`--quantum-s 1` (20 requests in any 1 s as well as 120 in any 6 s).",
        "`distillery run` as a subprocess per worker; one Prefect server for all runs "
        f"(`distillery server start` took {server_start:.0f} s), PREFECT_API_URL unset.",
        "Achieved / limit: requests (RPM) or charged tokens (TPM, prompt + max_tokens) per "
        "6 s window, each request placed at its sample's answer time (created_at + "
        "latency_ms); windows aligned to the emulator's first request, without the first one "
        "(start-up burst) and the one where the prompts ran out. 429 share: the emulator's "
        "rate_limited / requests.",
        "Leases alone: processes that only take one request at a time from the shared limit "
        "(LeaseGate over a Prefect global concurrency limit of the whole allowance, no decay, "
        f"leased in blocks of {BLOCK_SHARE:.0%} of it (doubling up to {MAX_SHARE:.1%}) with "
        f"increment-with-lease, each lease re-spent for {SLICE_WINDOWS:g} window(s) (+-25%) "
        "and given back once its last unit is a window + 2% old, or once nothing was charged "
        f"to it for {IDLE_SHARE:.0%} of a window after its units left it: "
        f"flows/shared_limits.py), for {args.lease_seconds:g} s; rate measured over whole "
        "windows from the first take (the last "
        f"{LEASE_WARMUP_S:g} s left for the workers' start-up). Every shared limit was "
        "created before its workers started "
        "(so that their workers' start-ups do not race to create it).",
    ]
    if not args.no_write:
        append_section(
            "Rate-limit utilisation through `distillery run` (bench/utilisation.py)",
            table,
            conclusion,
            notes,
        )


if __name__ == "__main__":
    main()
