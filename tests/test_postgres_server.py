"""The production layout's core: a Prefect server on PostgreSQL, one job split across two
worker processes whose teacher limit is shared through the server (limits.shared), their
combined rate under the limit.

Prefect's docs require PostgreSQL for a server with several workers (SQLite locks). This test
starts Debian's PostgreSQL itself (in a temporary cluster, as the postgres user), points a
Prefect server at it, and runs the split job against a limiting emulator.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillery.flows import server

from .workers import run_split_job

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    assert found, f"PostgreSQL's {name} is not installed (.ci/run installs Debian's postgresql)"
    return found


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URL."""
    root = Path(tempfile.mkdtemp(prefix="distillery-pg-"))
    root.chmod(0o777)
    data, port = root / "data", _free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*as_postgres, _pg_bin("initdb"), "-D", str(data), "-U", "prefect", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -h 127.0.0.1"
    subprocess.run(
        [
            *as_postgres,
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "start",
            "-l",
            str(root / "log"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_prefect_on_postgres_two_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with postgres() as database:
        monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", database)
        info, started = server.ensure_server()
        try:
            assert started
            # 100 requests against 60 per 6 s: the limit binds, so the workers must share it.
            # (A 6 s window gives the client a 0.12 s margin for requests that reach the
            # emulator later than they left the limiter; with 3 s, 0.06 s, a loaded machine
            # once delayed one request by more than that.)
            stats = run_split_job(tmp_path / "job", info.api_url, prompts=50, rpm=600, window=6.0)
        finally:
            server.stop()
    # The emulator enforces the limit as a provider does: had the two workers together gone
    # over it at any moment, it would have refused requests.
    assert stats["rate_limited"] == 0 and stats["served_ok"] == 100
