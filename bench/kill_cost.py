"""What a stop costs: answers paid for and lost per ``kill -9``, and per SIGTERM.

A run killed with SIGKILL loses the answers in flight at that instant — the server produced
(and billed) them, the process died before they reached the spool — and the resume buys them
again. A SIGTERM lets them land. This runs one job through K stops of each kind at random
moments, resumes it to the end each time, and counts what the emulator served beyond one answer
per prompt (``served_ok - prompts``: bought twice), per stop, against the job's concurrency
(the most that can be in flight).

Run by hand (it starts its own Prefect server under a temporary home)::

    .venv/bin/python bench/kill_cost.py [--prompts 600] [--concurrency 16] [--kills 6]
        [--latency-ms 300] [--write]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _common import DISTILLERY, append_section, markdown_table
from _flow_runs import PrefectServer, load_average, short_prompts, write_job

from distillery.emulator import EmulatorOptions, RunningEmulator


def served(emulator: RunningEmulator) -> int:
    value = emulator.stats()["served_ok"]
    assert isinstance(value, int)
    return value


def chain(
    server: PrefectServer, directory: Path, args: argparse.Namespace, sig: signal.Signals
) -> tuple[int, int, float]:
    """(stops made, answers bought twice, seconds from signal to exit, mean)."""
    rng = random.Random(args.seed)
    exits: list[float] = []
    with RunningEmulator(EmulatorOptions(seed=args.seed, latency_ms=args.latency_ms)) as emulator:
        config = write_job(
            directory,
            emulator.url,
            short_prompts(args.prompts),
            concurrency=args.concurrency,
            batch_size=100,
        )
        env = {**server.env, "PREFECT_API_URL": server.api_url}
        command = [str(DISTILLERY), "run", str(config), "--run-id", "stops"]
        while len(exits) < args.kills:
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            target = served(emulator) + rng.randint(args.concurrency, 4 * args.concurrency)
            while served(emulator) < target and process.poll() is None:
                time.sleep(0.01)
            if process.poll() is not None:
                break  # finished before the stop: no more to stop
            stopped = time.perf_counter()
            process.send_signal(sig)
            process.wait(timeout=300)
            exits.append(time.perf_counter() - stopped)
        final = subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        assert final.returncode == 0, final.stderr
        twice = served(emulator) - args.prompts
    return len(exits), twice, sum(exits) / len(exits) if exits else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--write", action="store_true", help="append a section to BENCHMARKS.md")
    args = parser.parse_args()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="kill-cost-") as tmp:
        os.environ["DISTILLERY_HOME"] = str(Path(tmp) / "home")
        with PrefectServer(Path(tmp) / "home") as server:
            for sig in (signal.SIGKILL, signal.SIGTERM):
                stops, twice, exit_s = chain(server, Path(tmp) / sig.name, args, sig)
                rows.append(
                    [
                        sig.name,
                        str(stops),
                        str(twice),
                        f"{twice / stops:.1f}" if stops else "-",
                        str(args.concurrency),
                        f"{exit_s:.2f}",
                    ]
                )
                print(rows[-1], flush=True)
    table = markdown_table(
        [
            "signal",
            "stops",
            "answers bought twice",
            "per stop",
            "concurrency (max in flight)",
            "signal to exit (s, mean)",
        ],
        rows,
    )
    print(table)
    if args.write:
        append_section(
            "What a stop costs (kill -9 against SIGTERM)",
            table,
            "kill -9 loses the answers in flight, at most the concurrency per kill, and the "
            "resume buys them again; SIGTERM lets them land and loses none.",
            [
                f"{args.prompts} prompts, emulator latency {args.latency_ms:.0f} ms, each stop "
                "at a random moment once the run has sent more requests; "
                f"load average {load_average()}",
            ],
        )


if __name__ == "__main__":
    main()
