"""End-to-end samples/s of ``distillery run`` against bare HTTP loops, side by side.

Why: everything a run adds on top of sending requests — Prefect tasks and their state updates,
the teacher client (limiter, token counting, retries, parsing), the write-ahead spool, Parquet
shards — must not eat the throughput the HTTP stack gives. Goal: the flow at >= 0.5x the bare
aiohttp loop. ``generators/http.py`` sends with aiohttp directly by default
(``http_transport: aiohttp``); the flow is measured with both senders, and the bare loops
include httpx's API on aiohttp's transport (httpx-aiohttp, the default before).

The emulator runs as a separate process (latency 0, no limits) and serves every stack. The bare
loops are bench/http_stack.py's (``measure``: 100 warm-up requests, then the timed ones, the
client's and the emulator's CPU per request); the flow is the real command, one subprocess per
run, against one Prefect server started with ``distillery server start`` under a temporary
``DISTILLERY_HOME``. Stacks are measured round-robin, so background load spreads over all.

Flow rates, three ways: "flow" = requests / the flow's own time (its run record: from the
flow's start to the record, so prompts loading, planning, every batch task, spool and shards;
not process start-up, compaction or artifacts); "sending" = requests / the emulator's first to
last request; "command" = requests / the wall time of the whole command. The goal is judged on
"flow". Client CPU of the flow = the command's CPU between the emulator's first and last
request (sampled from /proc every 50 ms), per request.

Run by hand from the repository root::

    .venv/bin/python bench/overhead.py [--prompts 3000] [--concurrency 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    EmulatorProcess,
    append_section,
    exit_cleanly_on_sigterm,
    markdown_table,
    process_cpu_s,
)
from _flow_runs import (
    RUN_TIMEOUT_S,
    CliRun,
    PrefectServer,
    load_average,
    read_run_record,
    run_all,
    write_job,
)
from http_stack import (
    WARMUP_REQUESTS,
    Stack,
    aiohttp_stack,
    httpx_stack,
    make_prompts,
    measure,
)

BASELINE = "bare aiohttp.ClientSession"


@dataclass
class Result:
    """Every repeat of one stack."""

    rates: list[float] = field(default_factory=list)  # the rate the goal is judged on
    sending: list[float] = field(default_factory=list)  # flow only
    command: list[float] = field(default_factory=list)  # flow only
    client_ms: list[float] = field(default_factory=list)
    emulator_share: list[float] = field(default_factory=list)
    prefect_cpu_s: list[float] = field(default_factory=list)  # flow only
    completion_tokens: list[float] = field(default_factory=list)  # flow only
    #: Flow only, per run: flow start to the first request reaching the emulator, and the
    #: last request to the run record (prompts, planning, first tasks; dedup, record).
    start_s: list[float] = field(default_factory=list)
    end_s: list[float] = field(default_factory=list)


def bare_stacks() -> dict[str, Stack]:
    return {
        "httpx.AsyncClient, httpx transport (bare loop)": httpx_stack("httpx", None),
        "httpx.AsyncClient, AiohttpTransport (bare loop)": httpx_stack("aiohttp", None),
        BASELINE: aiohttp_stack(None),
    }


SPLIT = "`distillery run` x 2 worker processes (job split in halves), aiohttp"
FLOWS = {
    "`distillery run`, http_transport aiohttp (default)": "aiohttp",
    "`distillery run`, http_transport httpx": "httpx",
    SPLIT: "aiohttp-split",
}
ONCE = {"httpx"}  # flows measured in the first repeat only (the slowest; keeps the run short)
# Where the flow's CPU goes, from a cProfile of one run: (label, file suffix, function) whose
# cumulative time is summed. Paths are matched as suffixes of the profile's file names.
PROFILED = (
    ("prompt token counting", "generators/tokens.py", "count_message_tokens"),
    ("(of which loading the tokenizer, once)", "tiktoken/load.py", "load_tiktoken_bpe"),
    ("Prefect walking batch-task parameters", "prefect/task_engine.py", "_resolve_parameters"),
    ("", "prefect/utilities/engine/__init__.py", "collect_task_run_inputs_sync"),
    ("spool (JSON line, flush, fsync)", "storage/spool.py", "append"),
    ("", "storage/spool.py", "close"),
    ("Parquet shards per batch", "storage/shards.py", "write_shard"),
    ("aiohttp trust_env lookups (netrc, proxy)", "asyncio/base_events.py", "run_in_executor"),
    ("compaction at the end", "flows/generate.py", "_compact_run"),
)


def run_flow(
    transport: str,
    texts: list[str],
    args: argparse.Namespace,
    emulator: EmulatorProcess,
    server: PrefectServer,
    workdir: Path,
    label: str,
) -> tuple[float, float, float, float, float, float, float, float, float]:
    """One flow run: (flow req/s, sending req/s, command req/s, client CPU ms/req,
    emulator CPU share while sending, Prefect server CPU s, mean completion tokens,
    seconds from the flow's start to the first request, from the last request to its end)."""
    halves = 2 if transport.endswith("-split") else 1
    configs = [
        write_job(
            workdir / f"{label}-{part}",
            emulator.url,
            texts[part::halves],
            name="bench-overhead",
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            http_transport=transport.removesuffix("-split"),
        )
        for part in range(halves)
    ]
    emulator.reset()
    emulator_cpu, prefect_cpu = process_cpu_s(emulator.pid), server.cpu_s()
    runs = [CliRun(c, f"{label}-{part}", server.env) for part, c in enumerate(configs)]
    run_all(runs)
    emulator_cpu = process_cpu_s(emulator.pid) - emulator_cpu
    prefect_cpu = server.cpu_s() - prefect_cpu
    stats = emulator.stats()
    count = len(texts)
    if stats["requests"] != count or stats["served_ok"] != count:
        raise RuntimeError(f"{label}: the emulator saw something else than {count} OKs: {stats}")
    first, last = float(stats["first_request_at"]), float(stats["last_request_at"])
    records = [read_run_record(run.output, run.run_id) for run in runs]
    if sum(int(r["samples"]) for r in records) != count:
        raise RuntimeError(f"{label}: {[r['samples'] for r in records]} samples, expected {count}")
    # Several workers: from the first flow's start to the last one's record.
    started = min(r["started_at"] for r in records).timestamp()
    ended = max(r["ended_at"] for r in records).timestamp()
    flow_s = ended - started
    client_ms = sum(run.cpu_between(first, last) for run in runs) * 1000 / count
    return (
        count / flow_s,
        count / (last - first),
        count / max(run.wall_s for run in runs),
        client_ms,
        emulator_cpu / (last - first),
        prefect_cpu,
        float(stats["completion_tokens"]) / count,
        first - started,
        ended - last,
    )


def profile_flow(
    texts: list[str],
    args: argparse.Namespace,
    emulator: EmulatorProcess,
    server: PrefectServer,
    workdir: Path,
) -> list[tuple[str, float]]:
    """One more flow run under cProfile: (label, seconds) of each part, the whole command first.

    Every part is synchronous, so its cumulative time is time the event loop was blocked.
    """
    config = write_job(
        workdir / "profile",
        emulator.url,
        texts,
        name="bench-overhead",
        concurrency=args.concurrency,
        batch_size=args.batch_size,
    )
    output = workdir / "profile.pstats"
    command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "distillery", "run"]
    command += [str(config), "--run-id", "profile", "-o", str(workdir / "profile-out")]
    emulator.reset()
    subprocess.run(
        command,
        env=server.env,
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    stats = pstats.Stats(str(output))
    total = max(entry[3] for entry in stats.stats.values())  # type: ignore[attr-defined]
    seconds: dict[str, float] = {"the whole command": total}
    label = ""
    for name, suffix, function in PROFILED:
        label = name or label
        cumulative = sum(
            entry[3]
            for (path, _, func), entry in stats.stats.items()  # type: ignore[attr-defined]
            if func == function and path.endswith(suffix)
        )
        seconds[label] = seconds.get(label, 0.0) + cumulative
    return list(seconds.items())


def run(
    args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, Result], float, list[tuple[str, float]]]:
    messages = make_prompts(WARMUP_REQUESTS + args.prompts)
    texts = [m[0]["content"] for m in messages[WARMUP_REQUESTS:]]
    results = {name: Result() for name in [*bare_stacks(), *FLOWS]}
    with PrefectServer(workdir / "home") as server, EmulatorProcess(latency_ms=0) as emulator:
        print(f"emulator pid {emulator.pid} at {emulator.url}", flush=True)
        for repeat in range(args.repeats):
            for name, stack in bare_stacks().items():
                rate, client_ms, server_ms = asyncio.run(
                    measure(stack, emulator, messages, args.concurrency)
                )
                result = results[name]
                result.rates.append(rate)
                result.client_ms.append(client_ms)
                result.emulator_share.append(rate * server_ms / 1000)
                print(f"  repeat {repeat + 1}: {name}: {rate:,.0f} req/s", flush=True)
            for name, transport in FLOWS.items():
                if repeat > 0 and transport in ONCE:
                    continue
                label = f"{transport}-{repeat}"
                flow, sending, command, client_ms, share, prefect, tokens, start, end = run_flow(
                    transport, texts, args, emulator, server, workdir, label
                )
                result = results[name]
                result.rates.append(flow)
                result.sending.append(sending)
                result.command.append(command)
                result.client_ms.append(client_ms)
                result.emulator_share.append(share)
                result.prefect_cpu_s.append(prefect)
                result.completion_tokens.append(tokens)
                result.start_s.append(start)
                result.end_s.append(end)
                print(
                    f"  repeat {repeat + 1}: {name}: flow {flow:,.0f} req/s, sending "
                    f"{sending:,.0f}, command {command:,.0f}; client {client_ms:.2f} ms/req, "
                    f"Prefect server {prefect:.1f} s CPU; load {load_average()}",
                    flush=True,
                )
        profile = profile_flow(texts, args, emulator, server, workdir) if args.profile else []
        start_s = server.start_s
    return results, start_s, profile


def report(
    results: dict[str, Result],
    profile: list[tuple[str, float]],
    prompts: int,
    batch_size: int,
) -> tuple[str, str]:
    baseline = statistics.median(results[BASELINE].rates)
    headers = ["stack", "req/s (median)", "req/s (best)", "ratio to bare aiohttp"]
    headers += ["flow: sending / command req/s", "client CPU ms/req", "emulator CPU"]
    headers += ["Prefect server CPU s per run"]
    rows: list[list[str]] = []
    for name, r in results.items():
        median = statistics.median(r.rates)
        is_flow = bool(r.sending)
        rows.append(
            [
                name,
                f"{median:,.0f}",
                f"{max(r.rates):,.0f}",
                f"{median / baseline:.2f}",
                (
                    f"{statistics.median(r.sending):,.0f} / {statistics.median(r.command):,.0f}"
                    if is_flow
                    else "—"
                ),
                f"{statistics.median(r.client_ms):.2f}",
                f"{statistics.median(r.emulator_share):.0%}",
                f"{statistics.median(r.prefect_cpu_s):.1f}" if is_flow else "—",
            ]
        )
    names = list(results)
    flow_name = names[3]
    flow = results[flow_name]
    ratio = statistics.median(flow.rates) / baseline
    verdict = "met" if ratio >= 0.5 else "not met"
    cpu = {name: statistics.median(r.client_ms) for name, r in results.items()}
    busiest = max(max(r.emulator_share) for r in results.values())
    busy = cpu[flow_name] * statistics.median(flow.sending) / 1000
    emulator_note = (
        f"the emulator used at most {busiest:.0%} of a core, so it "
        + ("may have capped the fastest loops" if busiest > 0.75 else "capped nothing")
        + " (it saturates around 1,100-1,500 req/s)"
    )
    start_s, end_s = statistics.median(flow.start_s), statistics.median(flow.end_s)
    flow_s = prompts / statistics.median(flow.rates)
    conclusion = (
        f"The flow on its default sender (aiohttp directly) delivered "
        f"{statistics.median(flow.rates):,.0f} samples/s over its own time, {ratio:.2f}x the "
        f"bare aiohttp loop's {baseline:,.0f} req/s (goal >= 0.5x: {verdict}; {emulator_note}). "
        f"While sending it reached {statistics.median(flow.sending):,.0f} req/s "
        f"({statistics.median(flow.sending) / baseline:.2f}x) and spent {cpu[flow_name]:.2f} ms "
        f"of client CPU per request against {cpu[BASELINE]:.2f} ms for bare aiohttp and "
        f"{cpu[names[1]]:.2f} ms for the bare httpx-on-aiohttp loop, i.e. {busy:.0%} of a core, "
        "on 2 CPUs shared with the emulator, the Prefect server and other users. Of the flow's "
        f"{flow_s:.1f} s, {start_s:.2f} s passed before its first request reached the emulator "
        f"(prompts, planning, the first batch tasks) and {end_s:.2f} s after its last (the last "
        "shards, dedup, the run record): fixed per run, whatever its length. "
        f"httpx's own transport costs {cpu[names[0]] / cpu[BASELINE]:.1f}x bare aiohttp's "
        "client CPU per request (the flow on it reached "
        f"{statistics.median(results[names[4]].rates):,.0f} samples/s), httpx's API on "
        f"aiohttp's transport {cpu[names[1]] / cpu[BASELINE]:.1f}x: aiohttp directly is the "
        "default, httpx's transport stays selectable."
    )
    if SPLIT in results:
        split = statistics.median(results[SPLIT].rates)
        conclusion += (
            f" Split over two worker processes (the job's prompts in halves, one `distillery "
            f"run` each, both cores), the flow delivered {split:,.0f} samples/s from the first "
            f"flow's start to the last one's end, {split / baseline:.2f}x the bare aiohttp loop "
            f"(goal >= 0.5x: {'met' if split / baseline >= 0.5 else 'not met'})."
        )
    if profile:
        parts = dict(profile)
        per_request = {label: 1000 * t / prompts for label, t in parts.items()}
        tokens = per_request[PROFILED[0][0]] - per_request[PROFILED[1][0]]
        walk = parts[PROFILED[2][0]]
        batches = math.ceil(prompts / batch_size)
        conclusion += (
            " Under cProfile the flow's own per-request work was led by counting each prompt's "
            f"tokens with tiktoken ({tokens:.2f} ms/request, plus "
            f"{parts[PROFILED[1][0]]:.1f} s to load the tokenizer) and Prefect walking every "
            f"batch task's parameters ({walk * 1000 / batches:.0f} "
            f"ms per batch, {per_request[PROFILED[2][0]]:.2f} ms/request), ahead of the spool "
            f"({per_request[PROFILED[4][0]]:.2f}), the shards "
            f"({per_request[PROFILED[6][0]]:.2f}) and aiohttp's per-request netrc and proxy "
            f"look-ups in threads ({per_request[PROFILED[7][0]]:.2f})."
        )
    return markdown_table(headers, rows), conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--batch-size", type=int, default=500, help="the job's batch_size")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per stack")
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the cProfile run"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-overhead-"))
    print(f"load average at start: {load_average()}", flush=True)
    try:
        results, server_start, profile = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table, conclusion = report(results, profile, args.prompts, args.batch_size)
    print()
    print(table)
    print()
    print(conclusion)
    print(json.dumps({name: [round(x) for x in r.rates] for name, r in results.items()}))
    breakdown = ", ".join(
        f"{label} {seconds:.2f} s ({seconds * 1000 / args.prompts:.2f} ms/request)"
        for label, seconds in profile
    )
    print(f"profile: {breakdown}")
    notes = [
        f"{args.prompts} requests per measurement, {args.concurrency} in flight, "
        f"{args.repeats} repeats per stack (round-robin); ~1 KB prompt, distinct per request "
        "(http_stack's make_prompts, ~175 prompt tokens), answers uncapped (the emulator's: "
        f"{statistics.mean(t for r in results.values() for t in r.completion_tokens):.0f} "
        "completion tokens on average).",
        "Emulator: `distillery emulator --latency-ms 0` in its own process on loopback, no "
        "limits. Bare loops: bench/http_stack.py's measure() (100 warm-up requests first).",
        f"Flow: `distillery run` as a subprocess; job of one OpenAI-format teacher, concurrency "
        f"{args.concurrency}, batch_size {args.batch_size}, 4 batches in flight, no max_tokens; "
        f"one Prefect server for all runs (`distillery server start` took {server_start:.0f} s), "
        "PREFECT_API_URL unset.",
        "req/s of the flow rows = requests / the flow's own time (run record's ended_at - "
        "started_at: batches, spool and shards included; process start-up, compaction and "
        "artifacts not). Sending = requests / the emulator's first-to-last request; command = "
        "requests / the command's wall time. Client CPU: bare loops, the benchmark process over "
        "the timed part; flow, the command's CPU between the emulator's first and last request "
        "(/proc, sampled every 50 ms). Emulator CPU: its share of one core over the same span. "
        "Prefect server CPU: the server's process group over the whole command.",
        "httpx transport flow: measured in the first repeat only. Two worker processes: the "
        "same prompts split in halves (every other prompt), two `distillery run` at once "
        "(as tests/workers.py's run_split_job), req/s = requests / (the last run record's "
        "ended_at - the first one's started_at), client CPU = both commands'.",
    ]
    if profile:
        notes.append(
            "Where the flow's time goes: one more run (same job, default transport) under "
            "cProfile (`python -m cProfile -m distillery run ...`, which slows everything "
            "down), cumulative time of each (synchronous, so event-loop-blocking) part, and per "
            f"request: {breakdown}."
        )
    if not args.no_write:
        append_section(
            "End-to-end flow overhead vs bare HTTP loops (bench/overhead.py)",
            table,
            conclusion,
            notes,
        )


if __name__ == "__main__":
    main()
