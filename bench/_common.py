"""Helpers shared by the hand-run benchmarks in this directory.

Why a separate emulator *process*: a client and a server on one event loop (or one GIL) slow
each other down, so the client's numbers would partly measure the server. Why the machine
block: numbers from a 2-core VM and a 32-core workstation are not comparable, and
``BENCHMARKS.md`` must say which one produced them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# The console script of the interpreter running the benchmark, so one venv serves both sides.
DISTILLERY = Path(sys.executable).parent / "distillery"
PACKAGES = ("httpx", "aiohttp", "httpx-aiohttp", "prefect")
NOISE_NOTE = (
    "Other processes (another developer's tests and tools) may have been running on this "
    "machine at the same time, so the numbers are indicative, not exact."
)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks still stop child processes."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


class EmulatorProcess:
    """``distillery emulator`` in a subprocess on a free loopback port; a context manager.

    ``--port 0`` lets the kernel pick the port and the emulator prints the one it bound, so
    there is no window in which another process can take it.
    """

    def __init__(self, latency_ms: float = 0.0, startup_timeout_s: float = 60.0) -> None:
        self.latency_ms = latency_ms
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self.url = ""
        #: More ``distillery emulator`` flags (limits, faults), for subclasses.
        self.extra: list[str] = []

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the emulator is not running")
        return self._process.pid

    def start(self) -> None:
        command = [str(DISTILLERY), "emulator", "--host", "127.0.0.1", "--port", "0"]
        command += ["--latency-ms", str(self.latency_ms), *self.extra]
        self._process = process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                line = process.stdout.readline()
                if line.startswith("emulator listening on "):
                    self.url = line.split()[-1]
                    return
                if not line:
                    break  # stdout closed: the emulator exited
        raise RuntimeError(f"the emulator did not start (exit code {process.poll()})")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_emulator/stats", trust_env=False, timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def reset(self) -> None:
        httpx.post(f"{self.url}/_emulator/reset", trust_env=False, timeout=10).raise_for_status()

    def __enter__(self) -> EmulatorProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return "unknown"


def machine_lines() -> list[str]:
    """Markdown bullet lines describing this machine and the package versions in use."""
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in PACKAGES)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout
    return [
        f"- Date: {date.strip()}",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {_cpu_model()}, {_ram_gib()} RAM, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {versions}",
    ]


def command_line() -> str:
    """How this benchmark was invoked, runnable from the repository root."""
    try:
        python = str(Path(sys.executable).relative_to(REPO))
    except ValueError:
        python = sys.executable
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return shlex.join([python, str(script), *sys.argv[1:]])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table; the first column left-aligned, the rest right."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def append_section(title: str, table: str, conclusion: str, notes: list[str]) -> None:
    """Append one dated section (command, machine, table, conclusion) to ``BENCHMARKS.md``."""
    parts = [
        f"## {title}",
        "",
        f"Command (from the repository root): `{command_line()}`",
        "",
        *machine_lines(),
        f"- {NOISE_NOTE}",
        *(f"- {note}" for note in notes),
        "",
        table,
        "",
        conclusion,
        "",
    ]
    text = "\n".join(parts) + "\n"
    if not BENCHMARKS_MD.exists():
        header = "# Benchmarks\n\nHand-run measurements; each section says how it was made.\n\n"
        text = header + text
    elif not BENCHMARKS_MD.read_text().endswith("\n\n"):
        text = "\n" + text
    with BENCHMARKS_MD.open("a") as handle:
        handle.write(text)


def report_section(
    title: str, table: str, conclusion: str, notes: list[str], *, append: bool
) -> None:
    """Print a benchmark's result (command, machine, notes, table, conclusion); with
    ``append`` also append it to ``BENCHMARKS.md`` as a dated section."""
    if append:
        append_section(title, table, conclusion, notes)
    print(f"Command: `{command_line()}`")
    print("\n".join(machine_lines()))
    print(f"- {NOISE_NOTE}")
    print("\n".join(f"- {note}" for note in notes))
    print(table)
    print(conclusion)
