"""One writer per run: the lock a run (and any rewrite of its shards) holds while it writes.

Two processes on one run id — a scheduled run overlapping a manual one, two workers handed the
same parameters — would both send every request and rewrite each other's shards. So whatever
writes a run's partitions (``generate``, ``distillery compact``, ``distillery dedup``) holds the
run's lock first; a second process gets :class:`RunBusyError`, a one-line error naming the run
and the holder (host, pid, since), and sends nothing.

What guarantees what:

- **Local output** (a directory, also on a shared filesystem): an ``fcntl.flock`` on
  ``DIR/_spool/run_id=<id>.lock``, held for the whole run. The kernel releases it when the
  holder dies however it dies (``kill -9`` included), so a crashed run's lock is taken over by
  the next invocation at once, with no stale-lock guessing. On NFS, Linux maps ``flock`` to
  NFS byte-range locks, which the server releases when the client's lease lapses.
- **Object storage** (``s3://``): S3 has no lock, so the run's lock is the local ``flock`` in
  ``$DISTILLERY_HOME`` (beside the run's spool: one machine, or machines sharing that
  directory), plus a *lease object* ``<prefix>/_writers/run_id=<id>.json`` that the holder
  rewrites every :data:`LEASE_RENEW_S` seconds. A process on another machine that finds a lease
  renewed within :data:`LEASE_TTL_S` refuses; one that finds it expired (its holder died) takes
  it over. Taking a lease is write-then-read-back, which narrows but cannot close the window in
  which two machines starting within the same second both win: for runs spread over machines
  writing object storage, give each its own run id (docs/production.md).
- **Dask workers** write only the batches the flow hands them, under the flow's lock: the lock
  belongs to the process that runs the flow, and one flow run is one writer.

The lock is re-entrant within a process (the flow holds it and calls dedup and compaction,
which take it too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from distillery.errors import FatalRunError
from distillery.storage.location import Location, as_location
from distillery.storage.spool import spool_root

# A lease object not renewed for this long belongs to a dead process and may be taken over.
LEASE_TTL_S = 60.0
LEASE_RENEW_S = 15.0
# How long a new lease holder waits before reading its lease back (to see a racing writer's).
_LEASE_SETTLE_S = 0.5


class RunBusyError(FatalRunError):
    """Another process holds the run: nothing was sent or written."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} since {self.since}"


def _me() -> Holder:
    return Holder(
        socket.gethostname(), os.getpid(), datetime.now(UTC).isoformat(timespec="seconds")
    )


def lock_path(output: Path | Location, run_id: str) -> Path:
    """The run's local lock file, beside its spool directory."""
    return spool_root(output) / f"run_id={run_id}.lock"


_held: dict[str, int] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def run_writer(output: Path | str | Location, run_id: str, what: str = "run") -> Iterator[None]:
    """Hold ``run_id``'s lock on ``output`` for the duration; :class:`RunBusyError` if another
    process holds it. ``what`` names the caller in the error (``run``, ``compact``, ...)."""
    location = as_location(output)
    key = f"{location.uri}\0{run_id}"
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    with _local_lock(lock_path(location, run_id), run_id, what), _lease(location, run_id, what):
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)


def _busy(run_id: str, what: str, holder: Holder | None) -> RunBusyError:
    who = holder.describe() if holder else "another process"
    advice = "wait for it to end, or use another --run-id" if what == "run" else "try again later"
    return RunBusyError(
        f"run {run_id} is being written by {who}; {what} refused (one writer per run: {advice})"
    )


@contextlib.contextmanager
def _local_lock(path: Path, run_id: str, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+" neither truncates nor replaces: the file is never unlinked either, so every process
    # locks the same inode (unlinking a lock file lets two processes hold two inodes' locks).
    handle: IO[str] = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise _busy(run_id, what, _parse(handle.read())) from None
        me = _me()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me.__dict__))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _parse(text: str) -> Holder | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return _holder(data) if isinstance(data, dict) else None


def _holder(data: dict[str, object]) -> Holder | None:
    try:
        return Holder(str(data["host"]), int(str(data["pid"])), str(data["since"]))
    except (KeyError, ValueError):
        return None


@contextlib.contextmanager
def _lease(location: Location, run_id: str, what: str) -> Iterator[None]:
    """The lease object of a run in object storage (nothing to do for a local output)."""
    if location.local_path is not None:
        yield
        return
    lease = RunLease(location.child("_writers", f"run_id={run_id}.json"), run_id, what)
    lease.acquire()
    try:
        yield
    finally:
        lease.release()


class RunLease:
    """A lease object renewed by a background thread; see the module docstring for its limits.

    ``clock`` and ``sleep`` are injectable so tests decide when a lease has expired.
    """

    def __init__(
        self,
        location: Location,
        run_id: str,
        what: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.location = location
        self.run_id = run_id
        self.what = what
        self.token = uuid.uuid4().hex
        self.holder = _me()
        self._clock = clock
        self._sleep = sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, object] | None:
        content = self.location.read_bytes()
        if content is None:
            return None
        try:
            data = json.loads(content)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _write(self) -> None:
        body = {**self.holder.__dict__, "token": self.token, "renewed": self._clock()}
        self.location.replace(json.dumps(body).encode())

    def acquire(self) -> None:
        current = self._read()
        if current is not None and current.get("token") != self.token:
            renewed = current.get("renewed")
            age = self._clock() - float(renewed) if isinstance(renewed, int | float) else 1e9
            if age < LEASE_TTL_S:
                raise _busy(self.run_id, self.what, _holder(current))
        self._write()
        self._sleep(_LEASE_SETTLE_S)
        after = self._read()
        if after is None or after.get("token") != self.token:
            raise _busy(self.run_id, self.what, _holder(after) if after else None)
        self._thread = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            with contextlib.suppress(OSError):
                self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._read()
        if current is not None and current.get("token") == self.token:
            self.location.delete()
