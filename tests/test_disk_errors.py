"""The disk refusing writes: up front (a read-only output) and mid-run (full, read-only, a
file-size limit). One line each, never a traceback; what was committed or spooled stays and
the same command resumes the run.

The tests run as root here and in CI, where permission bits stop nothing. So the faults are
real ones root cannot bypass: the immutable attribute (``chattr +i``), a path under sysfs, a
small tmpfs filled to the last byte (needs mount rights), and ``RLIMIT_FSIZE`` with SIGXFSZ
ignored (every write past the limit fails with EFBIG: portable, no privileges).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.storage.catalog import open_catalog
from distillery.storage.shards import committed_shards

from .conftest import write_job
from .test_cli import cli, one_error_line

PROMPTS = 120


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` (and everything in it) refuses writes, even root's; skips where unsupported."""
    if not _chattr("+i", path):
        pytest.skip("chattr +i is not supported here")
    try:
        yield
    finally:
        _chattr("-i", path)


@pytest.mark.parametrize("how", ["immutable", "sysfs"])
def test_an_output_that_exists_but_cannot_be_written_is_refused_up_front(
    tmp_path: Path, how: str
) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9")
    env = {"EMULATOR_API_KEY": "k"}
    if how == "sysfs":
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no sysfs")
        result = cli("run", str(config), "-o", "/sys/kernel", env=env)
        output = "/sys/kernel"
    else:
        (tmp_path / "out").mkdir()
        with immutable(tmp_path / "out"):
            result = cli("run", str(config), env=env)
        output = str(tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert f"output {output}: cannot write (" in one_error_line(result)


def _first_shard_committed(output: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (output / "samples").is_dir() and committed_shards(output, "samples"):
            return
        time.sleep(0.05)
    raise AssertionError("the run committed no shard while it ran")


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[None]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        size = 1 << 20
        while size >= 512:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)
    return filler


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["file-size-limit", "disk-full", "made-read-only"])
def test_a_disk_error_mid_run_is_one_line_and_the_run_resumes(
    prefect_api: str, tmp_path: Path, fault: str
) -> None:
    from distillery.generators.tokens import prepare_offline_cache

    prepare_offline_cache()  # the tokenizer files exist before any write is limited
    output = tmp_path / "out"
    stack = contextlib.ExitStack()
    if fault == "disk-full":
        stack.enter_context(small_tmpfs(output))
    with stack, RunningEmulator(EmulatorOptions(seed=3, latency_ms=150)) as emulator:
        config = write_job(tmp_path, emulator.url, prompts=PROMPTS)
        config.write_text(config.read_text().replace("concurrency: 8", "concurrency: 2"))
        env = {
            **os.environ,
            "EMULATOR_API_KEY": "k",
            "PREFECT_API_URL": prefect_api,
            "COLUMNS": "200",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        command = [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "disk"]
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Spool files and shards pass 8 KB within the first batches: EFBIG from then on.
            preexec_fn=_limit_file_size(8192) if fault == "file-size-limit" else None,
        )
        lift: Callable[[], object] = lambda: None  # noqa: E731
        if fault == "disk-full":
            _first_shard_committed(output, process)
            lift = _fill(output).unlink
        elif fault == "made-read-only":
            _first_shard_committed(output, process)
            if not _chattr("+i", output):
                process.kill()
                pytest.skip("chattr +i is not supported here")
            lift = lambda: _chattr("-i", output)  # noqa: E731
        try:
            _, stderr = process.communicate(timeout=180)
        finally:
            lift()
        assert process.returncode == 1, stderr
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, stderr
        assert "cannot write" in errors[0] and "--run-id disk to resume" in errors[0]
        served_first = emulator.stats()["requests"]
        assert isinstance(served_first, int) and served_first < PROMPTS  # it stopped sending

        resumed = cli("run", str(config), "--run-id", "disk", env=env)
        assert resumed.returncode == 0, resumed.stderr
        kept = re.search(r"(\d+) already answered", resumed.stdout)
        assert kept is not None, resumed.stdout
        # What the first invocation committed or spooled was kept, not bought again.
        assert int(kept.group(1)) > 0
        assert emulator.stats()["requests"] == served_first + PROMPTS - int(kept.group(1))
        con = open_catalog(output)
        rows = con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchall()
        assert rows == [(PROMPTS, PROMPTS)]
        assert con.execute("SELECT status FROM runs").fetchall() == [("completed",)]
