"""How long ``distillery run`` takes to send its first request, cold and warm.

Why: without ``PREFECT_API_URL`` a run starts (once) or reuses a managed Prefect server
(``flows/server.py``), and the whole point of managing it is that only the very first run pays
for the start. This measures both sides of that trade on the machine at hand:

* cold: a fresh, empty ``DISTILLERY_HOME`` per trial, so the run starts ``prefect server
  start`` on a new SQLite database (and unpacks the tokenizer files) before anything is sent;
  the server is stopped with ``distillery server stop`` after each trial;
* warm: one home whose server was started beforehand (``distillery server start``), so a run
  only pays for Python and Prefect imports, connecting, and creating the flow run.

"First request" is the emulator's ``first_request_at`` minus the wall clock read just before
the command is launched; "total" is the command's wall time for a 20-prompt job. The emulator
is a separate process, shared by all trials and reset before each.

Run by hand from the repository root::

    .venv/bin/python bench/startup.py [--cold-trials 2] [--warm-trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    DISTILLERY,
    EmulatorProcess,
    append_section,
    exit_cleanly_on_sigterm,
    markdown_table,
)

PROMPTS = 20
RUN_TIMEOUT_S = 600.0


def write_job(directory: Path, emulator_url: str) -> Path:
    """A small job in the shape of ``tests/conftest.py``'s ``write_job``: one teacher."""
    topics = ["rivers", "compilers", "bread", "tides", "chess", "volcanoes", "jazz", "bees"]
    with (directory / "prompts.jsonl").open("w") as handle:
        for index in range(PROMPTS):
            topic = topics[index % len(topics)]
            record = {
                "id": f"p{index}",
                "prompt": f"Explain {topic}, case {index}.",
                "topic": topic,
            }
            handle.write(json.dumps(record) + "\n")
    config = directory / "job.yaml"
    config.write_text(
        f"""name: bench-startup
prompts:
  path: prompts.jsonl
teachers:
  - name: t0
    provider: openai
    model: gpt-4o-mini
    base_url: {emulator_url}/v1
    api_key_env: EMULATOR_API_KEY
    params: {{temperature: 0.1, max_tokens: 300}}
    concurrency: 8
    max_attempts: 2
batch_size: 5
output: out
"""
    )
    return config


def child_env(home: Path) -> dict[str, str]:
    """The run's environment: no ``PREFECT_API_URL`` (so the managed server is used), no
    telemetry, and Prefect's client state under ``home`` instead of the user's ``~/.prefect``.
    """
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_HOME"}}
    env.update(
        DISTILLERY_HOME=str(home),
        PREFECT_HOME=str(home / "prefect-client"),
        DO_NOT_TRACK="1",
        EMULATOR_API_KEY="bench-key",
    )
    return env


def _server_pid(home: Path) -> int | None:
    try:
        return int(json.loads((home / "prefect-server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_server(home: Path) -> None:
    """``distillery server stop`` under ``home``; SIGKILL the group if the server outlives it."""
    pid = _server_pid(home)
    subprocess.run(
        [str(DISTILLERY), "server", "stop"],
        env=child_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if pid is not None and _alive(pid):
        print(f"  warning: server pid {pid} survived `distillery server stop`; killing it")
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Trials:
    """Per-trial seconds of one case."""

    first_request: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)


def timed_run(
    config: Path, home: Path, emulator: EmulatorProcess, label: str
) -> tuple[float, float]:
    """Run the job once; (seconds to the first request, seconds for the whole command)."""
    emulator.reset()
    output = config.parent / f"out-{label}"
    run_id = f"{label}-{secrets.token_hex(3)}"
    command = [str(DISTILLERY), "run", str(config), "--run-id", run_id, "-o", str(output)]
    launched_at = time.time()
    clock = time.perf_counter()
    done = subprocess.run(
        command,
        env=child_env(home),
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    total = time.perf_counter() - clock
    stats = emulator.stats()
    if done.returncode != 0 or stats["served_ok"] != PROMPTS or stats["requests"] != PROMPTS:
        raise RuntimeError(
            f"{label}: exit code {done.returncode}, emulator stats {stats}\n{done.stderr[-3000:]}"
        )
    first = float(stats["first_request_at"]) - launched_at
    print(f"  {label}: first request after {first:.2f}s, total {total:.2f}s", flush=True)
    return first, total


def run(args: argparse.Namespace, workdir: Path) -> tuple[Trials, Trials, float]:
    """Every trial; returns (cold, warm, seconds `distillery server start` took)."""
    homes: list[Path] = []
    cold, warm = Trials(), Trials()
    with EmulatorProcess(latency_ms=0) as emulator:
        config = write_job(workdir, emulator.url)
        try:
            for trial in range(args.cold_trials):
                home = workdir / f"home-cold-{trial}"
                homes.append(home)
                try:
                    first, total = timed_run(config, home, emulator, f"cold-{trial}")
                finally:
                    stop_server(home)
                cold.first_request.append(first)
                cold.total.append(total)
            home = workdir / "home-warm"
            homes.append(home)
            clock = time.perf_counter()
            subprocess.run(
                [str(DISTILLERY), "server", "start"],
                env=child_env(home),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=RUN_TIMEOUT_S,
                check=True,
            )
            server_start = time.perf_counter() - clock
            print(f"  warm home: `distillery server start` took {server_start:.2f}s", flush=True)
            for trial in range(args.warm_trials):
                first, total = timed_run(config, home, emulator, f"warm-{trial}")
                warm.first_request.append(first)
                warm.total.append(total)
        finally:
            for home in homes:
                stop_server(home)
    return cold, warm, server_start


def report(cold: Trials, warm: Trials, server_start: float) -> tuple[str, str]:
    """The markdown table and a conclusion drawn from the numbers."""
    cases: list[tuple[str, list[float]]] = [
        ("cold: first request", cold.first_request),
        ("cold: total (20 prompts)", cold.total),
        ("warm: first request", warm.first_request),
        ("warm: total (20 prompts)", warm.total),
    ]
    rows = [
        [name, ", ".join(f"{t:.2f}" for t in times), f"{statistics.median(times):.2f}"]
        for name, times in cases
    ]
    rows.append(
        ["warm home, before its trials: `distillery server start`", f"{server_start:.2f}", "—"]
    )
    table = markdown_table(["case", "trial times (s)", "median (s)"], rows)
    cold_first, warm_first = (statistics.median(t.first_request) for t in (cold, warm))
    conclusion = (
        f"A first run on an empty home waited {cold_first:.1f} s (median) for its first request, "
        f"{cold_first - warm_first:.1f} s of it starting the managed Prefect server on a new "
        f"database; with the server already running, a run reached the teacher after "
        f"{warm_first:.1f} s and a 20-prompt job took {statistics.median(warm.total):.1f} s "
        "in all, i.e. the fixed per-run cost is imports and Prefect bookkeeping, not the server."
    )
    return table, conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-trials", type=int, default=2, help="fresh-home runs (>= 1)")
    parser.add_argument("--warm-trials", type=int, default=3, help="runs on a running server")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-startup-"))
    try:
        cold, warm, server_start = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table, conclusion = report(cold, warm, server_start)
    print()
    print(table)
    print()
    print(conclusion)
    notes = [
        f"Job: {PROMPTS} prompts, one OpenAI-format teacher (concurrency 8, max_tokens 300, "
        "batch_size 5) pointed at `distillery emulator --latency-ms 0` in its own process.",
        "Child environment: PREFECT_API_URL unset, DO_NOT_TRACK=1, DISTILLERY_HOME and "
        "PREFECT_HOME (client side) in a temporary directory; a fresh one per cold trial.",
        "First request = emulator's first_request_at minus wall clock just before launch; "
        "total = wall time of the `distillery run` command.",
    ]
    if not args.no_write:
        append_section("`distillery run` startup (bench/startup.py)", table, conclusion, notes)


if __name__ == "__main__":
    main()
