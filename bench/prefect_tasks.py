"""What a Prefect task costs here, and which ``batch_size`` the generate flow should default to.

Why: ``flows/generate.py`` runs one Prefect task per batch of prompts (``batch_size``, default
100). Every task costs Prefect bookkeeping (a task run, its state changes, parameter handling)
and the flow a shard per batch; bigger batches amortise that, but ``batch_size`` x
``max_batches_in_flight`` must stay above a teacher's concurrency or batches starve it, and a
batch holds its rows in memory until it commits.

Part 1, in this process, against one Prefect server started with ``distillery server start``
under a temporary ``DISTILLERY_HOME``: N trivial async tasks (``cache_policy=NO_CACHE``, as the
flow's) in one async flow, awaited one after another and all at once (``asyncio.gather``); and,
one after another, the same trivial task given a list of 100 or 500 ``WorkItem`` objects like the
flow's batch task gets (plain, and wrapped in Prefect's ``quote()``, which tells Prefect not to
walk into it). Per task = the flow body's time (timed inside the flow, so the flow run's own
creation is left out) / N, median of the repeats; an empty flow run is timed on its own.

Part 2, through the real command (``distillery run``): the same job with batch_size 25, 100 and
500 (emulator latency 0, in its own process, no limits) → the flow's own time (run record),
time per batch, and each batch task's duration as the Prefect server recorded it.

Run by hand from the repository root::

    .venv/bin/python bench/prefect_tasks.py [--tasks 100] [--prompts 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import EmulatorProcess, append_section, exit_cleanly_on_sigterm, markdown_table
from _flow_runs import (
    CliRun,
    PrefectServer,
    flow_seconds,
    load_average,
    read_run_record,
    short_prompts,
    write_job,
)

from distillery.config import JobConfig

BATCH_SIZES = (25, 100, 500)
MAX_TOKENS = 100
MAX_BATCHES_IN_FLIGHT = 4


@dataclass
class Row:
    """One line of the table: per-task or per-batch times over the repeats."""

    name: str
    per_item_ms: list[float] = field(default_factory=list)  # per task, or flow time per batch
    extra: list[str] = field(default_factory=list)


def prefect_env(server: PrefectServer) -> None:
    """Point this process's Prefect at the server (before Prefect is first imported)."""
    os.environ.update(server.env)
    os.environ.update(
        PREFECT_API_URL=server.api_url,
        # As `distillery run` does: Prefect's log lines off the terminal, still sent to the API.
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="CRITICAL",
    )


def work_items(count: int) -> list[Any]:
    """``count`` WorkItems as generate_batch receives them (prompt + teacher config)."""
    from distillery.config import TeacherConfig
    from distillery.generators.batch import WorkItem
    from distillery.generators.prompts import Prompt

    teacher = TeacherConfig.model_validate(
        {
            "name": "t0",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "base_url": "http://127.0.0.1:9/v1",
            "params": {"max_tokens": MAX_TOKENS},
        }
    )
    return [
        WorkItem(Prompt(f"p{i}", [{"role": "user", "content": text}], {"topic": "x"}), teacher)
        for i, text in enumerate(short_prompts(count))
    ]


async def task_overheads(tasks: int, item_tasks: int, repeats: int) -> list[Row]:
    """Part 1: per-task milliseconds of trivial tasks, several ways."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.utilities.annotations import quote

    @task(cache_policy=NO_CACHE)
    async def trivial(index: int) -> int:
        return index

    @task(cache_policy=NO_CACHE)
    async def with_items(index: int, items: Any) -> int:
        return index

    # Each flow times its own body, so the flow run's creation and teardown (which varied
    # from 0.4 to 2.8 s between runs here) stay out of the per-task figures.
    @flow(persist_result=False)
    async def empty() -> float:
        return 0.0

    @flow(persist_result=False)
    async def sequential(count: int) -> float:
        clock = time.perf_counter()
        for index in range(count):
            await trivial(index)
        return time.perf_counter() - clock

    @flow(persist_result=False)
    async def concurrent(count: int) -> float:
        clock = time.perf_counter()
        await asyncio.gather(*(trivial(index) for index in range(count)))
        return time.perf_counter() - clock

    def items_flow(size: int, quoted: bool) -> Callable[[int], Awaitable[float]]:
        items = work_items(size)

        @flow(persist_result=False, name=f"items-{size}-{quoted}")
        async def sequential_items(count: int) -> float:
            clock = time.perf_counter()
            for index in range(count):
                await with_items(index, quote(items) if quoted else items)
            return time.perf_counter() - clock

        return sequential_items

    cases: list[tuple[str, int, Callable[[int], Awaitable[float]]]] = [
        (f"{tasks} trivial tasks, awaited one after another", tasks, sequential),
        (f"{tasks} trivial tasks, all at once (asyncio.gather)", tasks, concurrent),
        (
            f"{item_tasks} tasks given 100 WorkItems each, one after another",
            item_tasks,
            items_flow(100, False),
        ),
        (
            f"{item_tasks} tasks given 500 WorkItems each, one after another",
            item_tasks,
            items_flow(500, False),
        ),
        (
            f"{item_tasks} tasks given quote(500 WorkItems), one after another",
            item_tasks,
            items_flow(500, True),
        ),
    ]
    await empty()  # warm-up: first flow run, connections, imports
    rows = {name: Row(name) for name, _, _ in cases}
    for repeat in range(repeats):
        clock = time.perf_counter()
        await empty()
        rows[cases[0][0]].extra.append(f"{(time.perf_counter() - clock) * 1000:.0f}")
        for name, count, body in cases:
            per_task = await body(count) * 1000 / count
            rows[name].per_item_ms.append(per_task)
            print(f"  repeat {repeat + 1}: {name}: {per_task:.1f} ms per task", flush=True)
    return list(rows.values())


def task_durations(api_url: str, flow_run_id: str) -> list[float]:
    """Seconds each generate-batch task of a flow run took, as the Prefect server has them."""
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    for _ in range(20):  # task runs reach the server's database through events: may lag
        response = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=30)
        response.raise_for_status()
        runs = [r for r in response.json() if r["name"].startswith("batch-")]
        if runs and all(r["start_time"] and r["end_time"] for r in runs):
            return [float(r["total_run_time"]) for r in runs]
        time.sleep(0.5)
    return []


def batch_sizes(
    args: argparse.Namespace, server: PrefectServer, workdir: Path
) -> tuple[list[Row], dict[int, float]]:
    """Part 2: the flow with each batch size; rows and the median flow seconds per size."""
    rows = {size: Row(f"`distillery run`, batch_size {size}") for size in BATCH_SIZES}
    flow_s: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
    with EmulatorProcess(latency_ms=0) as emulator:
        for repeat in range(args.repeats):
            for size in BATCH_SIZES:
                label = f"b{size}-r{repeat}"
                config = write_job(
                    workdir / label,
                    emulator.url,
                    short_prompts(args.prompts),
                    name="bench-batches",
                    concurrency=args.concurrency,
                    batch_size=size,
                    max_batches_in_flight=MAX_BATCHES_IN_FLIGHT,
                    max_tokens=MAX_TOKENS,
                )
                emulator.reset()
                prefect_cpu = server.cpu_s()
                run = CliRun(config, label, server.env).launch().wait()
                prefect_cpu = server.cpu_s() - prefect_cpu
                record = read_run_record(run.output, label)
                if record["samples"] != args.prompts:
                    raise RuntimeError(f"{label}: {record['samples']} samples")
                seconds = flow_seconds(record)
                batches = -(-args.prompts // size)
                durations = task_durations(server.api_url, str(record["flow_run_id"]))
                row = rows[size]
                row.per_item_ms.append(seconds * 1000 / batches)
                flow_s[size].append(seconds)
                row.extra += [
                    f"{seconds:.2f}",
                    f"{statistics.mean(durations):.2f}" if durations else "?",
                    f"{prefect_cpu:.1f}",
                    f"{run.wall_s:.1f}",
                ]
                print(
                    f"  repeat {repeat + 1}: batch_size {size}: flow {seconds:.2f} s "
                    f"({args.prompts / seconds:.0f} req/s), {batches} batches, task mean "
                    f"{statistics.mean(durations) if durations else float('nan'):.2f} s, "
                    f"Prefect server {prefect_cpu:.1f} s CPU, wall {run.wall_s:.1f} s; "
                    f"load {load_average()}",
                    flush=True,
                )
    return list(rows.values()), {size: statistics.median(s) for size, s in flow_s.items()}


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], list[Row], dict[int, float]]:
    with PrefectServer(workdir / "home") as server:
        prefect_env(server)
        task_rows = asyncio.run(task_overheads(args.tasks, args.item_tasks, args.task_repeats))
        batch_rows, flow_s = batch_sizes(args, server, workdir)
    return task_rows, batch_rows, flow_s


def report(
    task_rows: list[Row], batch_rows: list[Row], flow_s: dict[int, float], args: argparse.Namespace
) -> tuple[str, str]:
    headers = ["what", "per task / per batch (ms, median)", "repeats (ms)", "detail"]
    rows: list[list[str]] = []
    for row in task_rows:
        detail = f"an empty flow run: {', '.join(row.extra)} ms" if row.extra else ""
        rows.append(
            [
                row.name,
                f"{statistics.median(row.per_item_ms):.1f} per task",
                ", ".join(f"{x:.1f}" for x in row.per_item_ms),
                detail,
            ]
        )
    for size, row in zip(BATCH_SIZES, batch_rows, strict=True):
        batches = -(-args.prompts // size)
        runs = [row.extra[i : i + 4] for i in range(0, len(row.extra), 4)]
        detail = (
            f"{batches} batches; flow s: {', '.join(r[0] for r in runs)}; mean batch task s: "
            f"{', '.join(r[1] for r in runs)}; Prefect server CPU s: "
            f"{', '.join(r[2] for r in runs)}; command s: {', '.join(r[3] for r in runs)}"
        )
        rows.append(
            [
                row.name,
                f"{statistics.median(row.per_item_ms):.0f} per batch "
                f"({args.prompts / flow_s[size]:.0f} req/s)",
                ", ".join(f"{x:.0f}" for x in row.per_item_ms),
                detail,
            ]
        )
    per_task = {row.name: statistics.median(row.per_item_ms) for row in task_rows}
    names = list(per_task)
    small, middle, large = BATCH_SIZES
    default = int(JobConfig.model_fields["batch_size"].default)  # the job file's default
    n_small, n_large = -(-args.prompts // small), -(-args.prompts // large)
    marginal = (flow_s[small] - flow_s[large]) * 1000 / (n_small - n_large)
    best = min(flow_s.values())
    # The smallest batch within 5% of the fastest: smaller batches report progress (and show in
    # the Prefect UI) sooner and hold fewer rows in memory, so take them when they cost nothing.
    recommended = min(size for size in BATCH_SIZES if flow_s[size] <= best * 1.05)
    conclusion = (
        f"A trivial task cost {per_task[names[0]]:.0f} ms awaited alone (an empty flow run "
        f"{statistics.median(float(x) for x in task_rows[0].extra):.0f} ms) and "
        f"{per_task[names[1]]:.0f} ms each when {args.tasks} ran at once; given a list of 100 "
        f"or 500 WorkItems as a parameter it cost {per_task[names[2]]:.0f} and "
        f"{per_task[names[3]]:.0f} ms, and {per_task[names[4]]:.0f} ms when they were wrapped "
        "in quote()"
        + (
            ", so Prefect's handling of the batch parameter, not the task itself, is the "
            "per-batch cost. "
            if per_task[names[2]] > 3 * per_task[names[4]]
            else ". "
        )
        + f"Through the flow ({args.prompts} prompts, latency 0) each extra batch cost about "
        f"{marginal:.0f} ms of flow time (batch_size {small}: {flow_s[small]:.1f} s, "
        f"{middle}: {flow_s[middle]:.1f} s, {large}: {flow_s[large]:.1f} s); recommended "
        f"batch_size {recommended}, the smallest within 5% of the fastest here"
        + (
            f" (the default {default} is not): it also keeps batch_size x "
            f"{MAX_BATCHES_IN_FLIGHT} batches in flight well above a teacher's concurrency "
            f"(bench/latency_hiding.py: at concurrency 256, {default} x {MAX_BATCHES_IN_FLIGHT} "
            f"answered fewer requests per second than {large} x {MAX_BATCHES_IN_FLIGHT}), costs "
            "nothing more on a crash (every answer is spooled as it arrives) and writes bigger "
            "shards (compacted at the end anyway), at the price of coarser progress in the "
            "Prefect UI"
            if recommended > default
            else f" (the default is {default})"
        )
        + "; handing the batch task its items in a container Prefect does not walk (quote(), "
        "or a plain object) cuts the per-batch cost whatever the size."
    )
    return markdown_table(headers, rows), conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100, help="trivial tasks per flow, part 1")
    parser.add_argument(
        "--item-tasks", type=int, default=20, help="tasks given WorkItems per flow, part 1"
    )
    parser.add_argument("--prompts", type=int, default=2000, help="prompts per run in part 2")
    parser.add_argument("--concurrency", type=int, default=64, help="the job's concurrency")
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size, part 2")
    parser.add_argument("--task-repeats", type=int, default=3, help="repeats of part 1")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-prefect-"))
    print(f"load average at start: {load_average()}", flush=True)
    try:
        task_rows, batch_rows, flow_s = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table, conclusion = report(task_rows, batch_rows, flow_s, args)
    print()
    print(table)
    print()
    print(conclusion)
    notes = [
        "One Prefect server (`distillery server start`, SQLite) for everything; part 1 in the "
        "benchmark process (PREFECT_API_URL set to it, console logging off as in `distillery "
        f"run`), {args.tasks} trivial or {args.item_tasks} WorkItem-carrying tasks per flow, "
        f"{args.task_repeats} repeats; per task = the flow body's time (timed inside the flow) "
        "/ tasks. The first revision of this script subtracted one empty flow run's time from "
        "each flow's instead; that varied from 0.4 to 2.8 s here, so its part-1 figures (in the "
        "first section of this name, some negative) are void; its part-2 figures stand.",
        f"Part 2: `distillery run` as a subprocess, {args.prompts} short distinct prompts, one "
        f"OpenAI-format teacher, concurrency {args.concurrency}, max_tokens {MAX_TOKENS}, "
        f"{MAX_BATCHES_IN_FLIGHT} batches in flight, emulator `--latency-ms 0` in its own "
        f"process; {args.repeats} runs per batch size, round-robin. Per batch = the flow's own "
        "time (run record) / batches; mean batch task = Prefect's total_run_time of the "
        "batch-* task runs.",
    ]
    if not args.no_write:
        append_section(
            "Prefect per-task overhead and batch_size (bench/prefect_tasks.py)",
            table,
            conclusion,
            notes,
        )


if __name__ == "__main__":
    main()
