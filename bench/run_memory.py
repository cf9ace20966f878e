"""Peak memory of ``distillery run --emulator`` as the prompt count grows.

Why: a run should stream its prompts — read them, plan what is still to send (what a resume
skips) and batch them in bounded chunks — so its peak RSS stays about flat from ten thousand
prompts to a million (goal: 1M <= 1.5x the 10k figure). Holding a list of every prompt, every
planned request or every done sample id costs a few KB per prompt, which a million prompts turn
into gigabytes.

For each prompt count the benchmark writes a one-teacher job (OpenAI format, short distinct
prompts, small ``max_tokens``, dedup off: dedup's memory is its own benchmark, ``dedup_1m.py``),
then runs it twice as a subprocess against a managed Prefect server:

* ``run``: the whole run, every request answered by the built-in emulator (``--emulator``, in
  the run's process, so its memory counts too);
* ``resume``: the same run id again, once finished: it reads the prompts and the done sample
  ids and finds nothing left to send (the planning side of a resume, alone).

Peak RSS is the child's ``ru_maxrss`` from ``os.wait4``: the high-water mark of the run
process itself, not of the Prefect server it talks to.

Run by hand from the repository root::

    .venv/bin/python bench/run_memory.py [--sizes 10000 100000 1000000] [--max-tokens 16]

It prints a markdown section for ``BENCHMARKS.md`` (``--append`` appends it there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    DISTILLERY,
    NOISE_NOTE,
    append_section,
    command_line,
    exit_cleanly_on_sigterm,
    machine_lines,
    markdown_table,
)
from _flow_runs import TOPICS, PrefectServer

#: Generous: a million requests through one process on 2 cores take most of an hour.
RUN_TIMEOUT_S = 4 * 3600.0
GOAL_RATIO = 1.5


@dataclass
class Measured:
    prompts: int
    run_peak_mb: float
    run_wall_s: float
    resume_peak_mb: float
    resume_wall_s: float


def write_job(directory: Path, prompts: int, max_tokens: int, batch_size: int) -> Path:
    """A one-teacher job over ``prompts`` short distinct prompts, written line by line."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "prompts.jsonl").open("w") as handle:
        for index in range(prompts):
            text = f"Explain {TOPICS[index % len(TOPICS)]}, case {index}."
            handle.write(json.dumps({"id": f"p{index}", "prompt": text}) + "\n")
    job = {
        "name": "run-memory",
        "prompts": {"path": "prompts.jsonl"},
        "teachers": [
            {
                "name": "t0",
                "provider": "openai",
                "model": "gpt-4o-mini",
                "base_url": "http://127.0.0.1:9/v1",  # replaced by --emulator
                "api_key_env": None,
                "params": {"max_tokens": max_tokens},
                "concurrency": 64,
            }
        ],
        "batch_size": batch_size,
        "curation": {"dedup": {"enabled": False}},
        "output": "out",
    }
    config = directory / "job.yaml"
    config.write_text(json.dumps(job, indent=1) + "\n")
    return config


def peak_rss_mb(config: Path, run_id: str, env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one ``distillery run --emulator``; raises on failure."""
    command = [str(DISTILLERY), "run", str(config), "--emulator", "--run-id", run_id]
    log = config.parent / f"{run_id}.log"
    clock = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{run_id}: no end after {RUN_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
    finally:
        if process.returncode is None and process.poll() is None:
            process.kill()
            process.wait()
    wall = time.perf_counter() - clock
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{run_id}: exit code {process.returncode}\n{tail}")
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is in KiB on Linux


def measure(prompts: int, args: argparse.Namespace, server: PrefectServer, work: Path) -> Measured:
    config = write_job(work / f"n{prompts}", prompts, args.max_tokens, args.batch_size)
    run_id = f"mem-{prompts}"
    run_peak, run_wall = peak_rss_mb(config, run_id, server.env)
    print(f"{prompts} prompts: run peak {run_peak:.0f} MB in {run_wall:.0f} s", flush=True)
    resume_peak, resume_wall = peak_rss_mb(config, run_id, server.env)
    print(f"{prompts} prompts: resume peak {resume_peak:.0f} MB in {resume_wall:.0f} s", flush=True)
    return Measured(prompts, run_peak, run_wall, resume_peak, resume_wall)


def report(results: list[Measured]) -> tuple[str, str]:
    rows = [
        [
            f"{m.prompts:,}",
            f"{m.run_peak_mb:.0f}",
            f"{m.run_wall_s:.0f}",
            f"{m.resume_peak_mb:.0f}",
            f"{m.resume_wall_s:.0f}",
        ]
        for m in results
    ]
    table = markdown_table(
        ["prompts", "run: peak RSS (MB)", "run: wall (s)", "resume: peak RSS (MB)", "resume (s)"],
        rows,
    )
    first, last = results[0], results[-1]
    ratio = last.run_peak_mb / first.run_peak_mb
    verdict = "met" if ratio <= GOAL_RATIO else "missed"
    conclusion = (
        f"{last.prompts:,} prompts peak at {ratio:.2f}x the {first.prompts:,}-prompt run "
        f"(goal: at most {GOAL_RATIO}x for 1M against 10k): goal {verdict} for this range."
    )
    return table, conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--append", action="store_true", help="Append to BENCHMARKS.md.")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="run-memory-") as tmp:
        work = Path(tmp)
        with PrefectServer(work / "home") as server:
            results = [measure(n, args, server, work) for n in args.sizes]
    table, conclusion = report(results)
    notes = [
        f"One teacher, max_tokens {args.max_tokens}, batch_size {args.batch_size}, "
        "dedup off, emulator in the run's process; peak RSS from os.wait4 (ru_maxrss).",
    ]
    if args.append:
        append_section("Memory of a run (bench/run_memory.py)", table, conclusion, notes)
    print(f"Command: `{command_line()}`")
    print("\n".join(machine_lines()))
    print(f"- {NOISE_NOTE}")
    print(table)
    print(conclusion)


if __name__ == "__main__":
    main()
