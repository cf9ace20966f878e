"""One local Prefect server that distillery starts once and reuses.

Without ``PREFECT_API_URL``, Prefect's ephemeral mode starts a new server subprocess in every
Python process: tens of seconds on 2 cores (a new server's start: BENCHMARKS.md, "Start-up"),
paid by every ``distillery run``. Instead the first run starts ``prefect server start`` in the
background (SQLite under ``$DISTILLERY_HOME/prefect``) and records it in
``$DISTILLERY_HOME/prefect-server.json``; later runs find it healthy and connect in
milliseconds. ``distillery server status|stop`` manage it.
A user who sets ``PREFECT_API_URL`` keeps their own server and this module is not used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from distillery.child_env import child_env
from distillery.errors import FatalRunError, RunInterruptedError
from distillery.home import distillery_home

STARTUP_TIMEOUT_S = float(os.environ.get("DISTILLERY_SERVER_STARTUP_TIMEOUT", "240"))


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    url: str
    log: str
    started_at: float

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def _state_file() -> Path:
    return distillery_home() / "prefect-server.json"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise start/stop between concurrent distillery processes."""
    with (distillery_home() / "prefect-server.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state() -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(info: ServerInfo) -> bool:
    """Whether ``info.pid`` is still the server we started, not a process that reused the pid.

    A state file can outlive its server (a crash, a reboot); acting on a recycled pid would
    wait on, or kill, an unrelated process. On Linux the command line must be ours; elsewhere
    the server must answer on its port.
    """
    if not _alive(info.pid):
        return False
    cmdline = Path(f"/proc/{info.pid}/cmdline")
    if cmdline.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"prefect" in args and b"server" in args and str(info.port).encode() in args
    return healthy(info)


def healthy(info: ServerInfo, timeout_s: float = 2.0) -> bool:
    try:
        response = httpx.get(f"{info.api_url}/health", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def status() -> ServerInfo | None:
    """The managed server if it is running and answers, else None."""
    info = _read_state()
    if info is None or not _is_ours(info) or not healthy(info):
        return None
    return info


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What the server process inherits from the environment of the ``distillery run`` that starts
# it, and nothing else: it outlives that run, and anything passed stays readable in its
# /proc/<pid>/environ for as long as it lives — teachers' API keys, cloud credentials and
# tokens must not. Its own settings are PREFECT_* (a PostgreSQL URL, say) minus a client's.
# The server's own settings pass, besides what every child gets (distillery/child_env.py).
_SERVER_PREFIXES = ("LC_", "PREFECT_")
# A client's API address, key and credentials are not the server's business (and its own
# address would confuse it).
_CLIENT_ONLY = frozenset({"PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"})


def _server_env(home: Path, port: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The managed server's whole environment: what every child gets, ``LC_*`` and the
    server's ``PREFECT_*`` settings from ``environ`` (default: ours), plus its own."""
    env = child_env(_SERVER_PREFIXES, _CLIENT_ONLY, environ)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        # The UI learns its API address from the server's settings, which default to port 4200
        # whatever --port says: without these the UI we link to cannot load any run.
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL="/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def running() -> ServerInfo | None:
    """The managed server if it is up and answering (no start, no wait)."""
    info = _read_state()
    return info if info is not None and _is_ours(info) and healthy(info) else None


def _wait_a_little(stop: Callable[[], bool]) -> None:
    """Half a second between health checks, unless a stop was asked for (a SIGTERM while the
    server starts ends the command now; the server goes on starting for the next one)."""
    if stop():
        raise RunInterruptedError(
            "stopped while the local Prefect server started; nothing was sent"
        )
    time.sleep(0.5)


def ensure_server(stop: Callable[[], bool] = lambda: False) -> tuple[ServerInfo, bool]:
    """A healthy managed server, started if need be; returns (info, started_now). ``stop`` is
    asked between health checks: a server can take tens of seconds to start on a loaded
    machine, longer than a supervisor waits after its SIGTERM."""
    with _locked():
        info = _read_state()
        if info is not None and _is_ours(info):
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline and _alive(info.pid):
                if healthy(info):
                    return info, False
                _wait_a_little(stop)
            _terminate(info.pid)
        home = distillery_home()
        port = _free_port()
        log = home / "prefect-server.log"
        with log.open("ab") as handle:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=_server_env(home, port),
                start_new_session=True,
            )
        info = ServerInfo(process.pid, port, f"http://127.0.0.1:{port}", str(log), time.time())
        _state_file().write_text(json.dumps(asdict(info)))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _state_file().unlink(missing_ok=True)
                raise FatalRunError(
                    f"the local Prefect server exited with code {process.returncode}; see {log}"
                )
            if healthy(info):
                return info, True
            _wait_a_little(stop)
        _terminate(process.pid)
        _state_file().unlink(missing_ok=True)
        raise FatalRunError(
            f"the local Prefect server did not answer within {STARTUP_TIMEOUT_S:.0f}s; see {log}"
        )


def _terminate(pid: int, grace_s: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop() -> ServerInfo | None:
    """Stop the managed server; returns what was stopped (None if nothing ran)."""
    with _locked():
        info = _read_state()
        _state_file().unlink(missing_ok=True)
        if info is None or not _is_ours(info):
            return None
        _terminate(info.pid)
        return info
