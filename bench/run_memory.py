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
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from _common import (
    DISTILLERY,
    exit_cleanly_on_sigterm,
    markdown_table,
    report_section,
)
from _flow_runs import TOPICS, PrefectServer

from distillery.storage.shards import committed_shards

#: Generous: a million requests through one process on 2 cores take most of an hour.
RUN_TIMEOUT_S = 4 * 3600.0
GOAL_RATIO = 1.5
#: ``distillery run``'s exit code after a graceful stop (RunInterruptedError).
STOPPED_EXIT = 130


@dataclass
class Ended:
    """One ``distillery run`` subprocess: its peak RSS, wall time, and RSS samples over time."""

    peak_mb: float
    wall_s: float
    stopped: bool
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    #: Unix time of the launch: ``rss_mb``'s seconds count from it.
    launched_at: float = 0.0

    def shown(self) -> str:
        return f"{self.peak_mb:.0f}" + (" (stopped)" if self.stopped else "")


@dataclass
class Measured:
    prompts: int
    run: Ended
    answered_after_run: int
    resume: Ended


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


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_once(
    config: Path,
    run_id: str,
    env: dict[str, str],
    stop_after_s: float | None,
    *,
    emulator: bool = True,
    sample_s: float = 5.0,
) -> Ended:
    """One ``distillery run`` (``--emulator`` by default): peak RSS (MB) and wall seconds;
    raises on failure.

    Without ``emulator`` the job's own ``base_url`` is used (an emulator in another process,
    so its memory is not the run's). RSS is sampled every ``sample_s`` seconds.

    With ``stop_after_s`` a run still going then gets SIGTERM (a graceful stop: what is in
    flight lands and is committed) so a size too large to finish on the machine at hand is
    still measured over its start — every prompt read and planned — and its first requests.
    """
    command = [str(DISTILLERY), "run", str(config), "--run-id", run_id]
    command += ["--emulator"] if emulator else []
    log = config.parent / f"{run_id}.log"
    clock = time.perf_counter()
    launched_at = time.time()
    with log.open("a") as output:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    ended = Ended(0.0, 0.0, False, launched_at=launched_at)
    next_sample = 0.0
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - clock
            if elapsed >= next_sample:
                rss = _rss_mb(process.pid)
                if rss is not None:
                    ended.rss_mb.append((elapsed, rss))
                next_sample = elapsed + sample_s
            if elapsed > RUN_TIMEOUT_S:
                raise RuntimeError(f"{run_id}: no end after {RUN_TIMEOUT_S:.0f} s")
            if stop_after_s is not None and elapsed > stop_after_s and not ended.stopped:
                ended.stopped = True
                process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
    finally:
        if process.returncode is None and process.poll() is None:
            process.kill()
            process.wait()
    ended.wall_s = time.perf_counter() - clock
    ended.peak_mb = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not (ended.stopped and code == STOPPED_EXIT):
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{run_id}: exit code {code}\n{tail}")
    return ended


def answered(config: Path) -> int:
    """Rows committed to samples and rejected under the job's output."""
    output = config.parent / "out"
    return sum(
        pq.ParquetFile(str(shard)).metadata.num_rows
        for table in ("samples", "rejected")
        for shard in committed_shards(output, table)
    )


def measure(prompts: int, args: argparse.Namespace, server: PrefectServer, work: Path) -> Measured:
    config = write_job(work / f"n{prompts}", prompts, args.max_tokens, args.batch_size)
    run_id = f"mem-{prompts}"
    stop = args.stop_after_s if prompts >= args.stop_from else None
    run = run_once(config, run_id, server.env, stop)
    done = answered(config)
    print(f"{prompts} prompts: run peak {run.shown()} MB in {run.wall_s:.0f} s", flush=True)
    resume = run_once(config, run_id, server.env, stop)
    print(f"{prompts} prompts: resume peak {resume.shown()} MB in {resume.wall_s:.0f} s")
    for label, ended in (("run", run), ("resume", resume)):
        samples = ", ".join(
            f"{t:.0f}s {mb:.0f}" for t, mb in ended.rss_mb[:: max(1, len(ended.rss_mb) // 12)]
        )
        print(f"  {label} RSS (MB) over time: {samples}", flush=True)
    return Measured(prompts, run, done, resume)


def report(results: list[Measured]) -> tuple[str, str]:
    rows = [
        [
            f"{m.prompts:,}",
            m.run.shown(),
            f"{m.run.wall_s:.0f}",
            f"{m.answered_after_run:,}",
            m.resume.shown(),
            f"{m.resume.wall_s:.0f}",
        ]
        for m in results
    ]
    table = markdown_table(
        [
            "prompts",
            "run: peak RSS (MB)",
            "run: wall (s)",
            "answered by then",
            "resume: peak RSS (MB)",
            "resume: wall (s)",
        ],
        rows,
    )
    first, last = results[0], results[-1]
    ratio = last.run.peak_mb / first.run.peak_mb
    verdict = "met" if ratio <= GOAL_RATIO else "missed"
    conclusion = (
        f"{last.prompts:,} prompts peak at {ratio:.2f}x the {first.prompts:,}-prompt run "
        f"(goal: at most {GOAL_RATIO}x for 1M against 10k): goal {verdict} for this range."
    )
    if last.run.stopped:
        conclusion += " The largest run was stopped before its end (see the table)."
    return table, conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--stop-after-s",
        type=float,
        default=None,
        help="SIGTERM runs (and resumes) of --stop-from prompts or more still going after this.",
    )
    parser.add_argument("--stop-from", type=int, default=1_000_000)
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
    report_section(
        "Memory of a run (bench/run_memory.py)", table, conclusion, notes, append=args.append
    )


if __name__ == "__main__":
    main()
