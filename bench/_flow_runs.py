"""Helpers for the benchmarks that go through the real ``distillery run`` command.

What they add to :mod:`_common`: an emulator process that enforces limits (``--rpm``,
``--tpm``, ``--max-concurrency``, ``--window-s``), one managed Prefect server started with
``distillery server start`` under a temporary ``DISTILLERY_HOME`` and stopped at the end (its
environment and stop come from :mod:`startup`), job files written from Python, the command run
as a subprocess (with its CPU time sampled from ``/proc`` while it runs), and the committed
shards and run record read back for per-request timestamps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow.parquet as pq
from _common import DISTILLERY, EmulatorProcess, process_cpu_s
from startup import child_env, stop_server

from distillery.storage.shards import committed_shards

RUN_TIMEOUT_S = 600.0
TOPICS = ("rivers", "compilers", "bread", "tides", "chess", "volcanoes", "jazz", "bees")


class LimitedEmulator(EmulatorProcess):
    """``distillery emulator`` with server-side limits, in its own process."""

    def __init__(
        self,
        latency_ms: float = 0.0,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        window_s: float | None = None,
        quantum_s: float | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(latency_ms, startup_timeout_s)
        for flag, value in (
            ("--rpm", rpm),
            ("--tpm", tpm),
            ("--max-concurrency", max_concurrency),
            ("--window-s", window_s),
            ("--quantum-s", quantum_s),
        ):
            if value is not None:
                self.extra += [flag, str(value)]

    def __enter__(self) -> LimitedEmulator:
        super().__enter__()
        return self


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (the Prefect server's)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: process group
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class PrefectServer:
    """``distillery server start`` under ``home`` on entry, ``distillery server stop`` on exit."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.start_s = 0.0
        self.pid = 0
        self.url = ""

    @property
    def env(self) -> dict[str, str]:
        """The environment a ``distillery run`` against this server gets (startup.child_env)."""
        return child_env(self.home)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def cpu_s(self) -> float:
        return group_cpu_s(self.pid)

    def __enter__(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        clock = time.perf_counter()
        try:
            subprocess.run(
                [str(DISTILLERY), "server", "start"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=RUN_TIMEOUT_S,
                check=True,
            )
            self.start_s = time.perf_counter() - clock
            state = json.loads((self.home / "prefect-server.json").read_text())
        except BaseException:
            stop_server(self.home)
            raise
        self.pid, self.url = int(state["pid"]), str(state["url"])
        print(f"Prefect server pid {self.pid} at {self.url} ({self.start_s:.1f} s)", flush=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop_server(self.home)


def write_job(
    directory: Path,
    url: str,
    prompts: Sequence[str],
    *,
    name: str = "bench",
    id_prefix: str = "p",
    concurrency: int = 16,
    batch_size: int = 100,
    max_batches_in_flight: int = 4,
    limits: dict[str, Any] | None = None,
    max_tokens: int | None = None,
    http_transport: str = "aiohttp",
    max_attempts: int = 5,
) -> Path:
    """A one-teacher job (OpenAI format) in ``directory``; returns the job file.

    Written as JSON, which YAML reads as it is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "prompts.jsonl").open("w") as handle:
        for index, text in enumerate(prompts):
            handle.write(json.dumps({"id": f"{id_prefix}{index}", "prompt": text}) + "\n")
    teacher: dict[str, Any] = {
        "name": "t0",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": f"{url}/v1",
        "api_key_env": "EMULATOR_API_KEY",
        "params": {} if max_tokens is None else {"max_tokens": max_tokens},
        "concurrency": concurrency,
        "max_attempts": max_attempts,
    }
    if limits is not None:
        teacher["limits"] = limits
    job = {
        "name": name,
        "prompts": {"path": "prompts.jsonl"},
        "teachers": [teacher],
        "batch_size": batch_size,
        "max_batches_in_flight": max_batches_in_flight,
        "http_transport": http_transport,
        "output": "out",
    }
    config = directory / "job.yaml"
    config.write_text(json.dumps(job, indent=1) + "\n")
    return config


def short_prompts(count: int) -> list[str]:
    """Short distinct prompts (~8 words), as in the test suite's jobs."""
    return [f"Explain {TOPICS[i % len(TOPICS)]}, case {i}." for i in range(count)]


@dataclass
class CliRun:
    """One ``distillery run`` subprocess, started by :meth:`launch`, waited for by :meth:`wait`.

    ``cpu`` samples (wall clock, CPU seconds) of the process every 50 ms while it runs, so the
    CPU of any part of the run (e.g. between the emulator's first and last request) can be read
    off afterwards. The command's output goes to files next to the job file.
    """

    config: Path
    run_id: str
    env: dict[str, str]
    output: Path = field(init=False)
    launched_at: float = 0.0
    wall_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    cpu: list[tuple[float, float]] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None
    _clock: float = 0.0

    def __post_init__(self) -> None:
        self.output = self.config.parent / f"out-{self.run_id}"

    def launch(self) -> CliRun:
        command = [str(DISTILLERY), "run", str(self.config), "--run-id", self.run_id]
        command += ["-o", str(self.output)]
        self.launched_at = time.time()
        self._clock = time.perf_counter()
        # Files, not pipes: a pipe nobody reads until the end could fill and stall the run.
        with (
            self._log("stdout").open("w") as stdout,
            self._log("stderr").open("w") as stderr,
        ):
            self._process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.config.parent,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        return self

    def _log(self, stream: str) -> Path:
        return self.config.parent / f"{self.run_id}.{stream}"

    def poll(self) -> bool:
        """Sample the CPU; True once the process has exited."""
        process = self._process
        assert process is not None
        if process.poll() is not None:
            if not self.wall_s:
                self.wall_s = time.perf_counter() - self._clock
            return True
        with contextlib.suppress(OSError, IndexError):  # it exited in between
            self.cpu.append((time.time(), process_cpu_s(process.pid)))
        return False

    def close(self) -> None:
        """Stop the process if it still runs (the benchmark was interrupted)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait(self) -> CliRun:
        """Wait for the end; raises if the run failed."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while not self.poll():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.run_id}: no end after {RUN_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
        finally:
            self.close()
        self.stdout = self._log("stdout").read_text(errors="replace")
        self.stderr = self._log("stderr").read_text(errors="replace")
        if not self.wall_s:
            self.wall_s = time.perf_counter() - self._clock
        if process.returncode != 0:
            raise RuntimeError(
                f"distillery run {self.run_id}: exit code {process.returncode}\n"
                f"{self.stderr[-3000:]}"
            )
        return self

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the process used between two wall-clock instants (interpolated)."""
        return _interpolate(self.cpu, end) - _interpolate(self.cpu, start)


def run_all(runs: Sequence[CliRun]) -> None:
    """Launch every run at once and wait for all of them (CPU sampled for each)."""
    try:
        for run in runs:
            run.launch()
        while not all([run.poll() for run in runs]):
            time.sleep(0.05)
        for run in runs:
            run.wait()
    finally:
        for run in runs:
            run.close()


def _interpolate(samples: list[tuple[float, float]], at: float) -> float:
    if not samples:
        return 0.0
    if at <= samples[0][0]:
        return samples[0][1]
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= at <= t1:
            return c0 + (c1 - c0) * (at - t0) / (t1 - t0) if t1 > t0 else c1
    return samples[-1][1]


@dataclass(frozen=True)
class Request:
    """One committed sample: when it was sent and answered (client wall clock), its tokens."""

    sent: float
    done: float
    prompt_tokens: int
    completion_tokens: int
    attempts: int


def read_samples(output: Path, run_id: str) -> list[Request]:
    """Every committed sample of a run, from its shards.

    ``created_at`` is taken when the request is handed to the teacher client (after the
    teacher's concurrency slot, before its limiter); ``queue_ms`` + ``retry_ms`` +
    ``latency_ms`` run from then until the answer is parsed, so ``done`` is when the
    successful attempt was answered (``latency_ms`` alone is that attempt's time on the wire).
    """
    columns = ["created_at", "latency_ms", "queue_ms", "retry_ms"]
    columns += ["prompt_tokens", "completion_tokens", "attempts"]
    requests: list[Request] = []
    for path in committed_shards(output, "samples", run_id):
        table = pq.read_table(path, columns=columns).to_pydict()
        for created, latency, queue, retry, prompt, completion, attempts in zip(
            *(table[c] for c in columns), strict=True
        ):
            sent = created.timestamp()
            took_ms = latency + (queue or 0.0) + (retry or 0.0)
            requests.append(
                Request(sent, sent + took_ms / 1000, prompt or 0, completion or 0, attempts)
            )
    requests.sort(key=lambda r: r.done)
    return requests


def read_run_record(output: Path, run_id: str) -> dict[str, Any]:
    """The run's record (``runs`` table): status, counts, started_at / ended_at."""
    rows: list[dict[str, Any]] = []
    for path in committed_shards(output, "runs", run_id):
        rows.extend(pq.read_table(path).to_pylist())
    if not rows:
        raise RuntimeError(f"no run record for {run_id} in {output}")
    return rows[-1]


def flow_seconds(record: dict[str, Any]) -> float:
    """The flow's own time: from its start to its run record (before compaction, artifacts)."""
    started: datetime = record["started_at"]
    ended: datetime = record["ended_at"]
    return (ended - started).total_seconds()


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())
