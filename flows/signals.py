"""SIGTERM and Ctrl-C stop a run the same way, under the CLI and under a Prefect worker.

``kill``, systemd, Kubernetes and Prefect workers stop a process with SIGTERM. Prefect's flow
engine installs its own SIGTERM handler for the length of a flow run (it raises
``TerminationSignal``: the run crashes, the answers in flight are dropped), so the flow body
installs :func:`on_stop_signal` again for its own length (:func:`graceful_stop`).

The first signal flips :data:`~distillery.flows.progress.STOP`: no new request is sent, the
answers in flight land, are spooled and committed, and the run ends as ``stopped``. If that
takes longer than the grace period (``DISTILLERY_STOP_GRACE_S``, default
:data:`DEFAULT_GRACE_S`: inside Kubernetes' default 30 s before it sends SIGKILL), or on a
second signal, the run aborts at once: what had arrived is in the spool and the next
invocation of the run replays it; the answers still in flight are paid for and lost, as with
``kill -9`` (docs/failure-modes.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from distillery.flows.progress import STOP

DEFAULT_GRACE_S = 25.0
_timer: threading.Timer | None = None


def grace_s() -> float:
    raw = os.environ.get("DISTILLERY_STOP_GRACE_S", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_GRACE_S
    except ValueError:
        return DEFAULT_GRACE_S


def _abort() -> None:
    # A signal, not an exception from this thread: the main thread's SIGINT handler (this
    # module's, or Python's default) raises KeyboardInterrupt where the run is.
    os.kill(os.getpid(), signal.SIGINT)


def on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """First SIGINT/SIGTERM: stop gracefully, within the grace period; second: abort."""
    global _timer
    if STOP.requested:
        raise KeyboardInterrupt
    STOP.request()
    _timer = threading.Timer(grace_s(), _abort)
    _timer.daemon = True
    _timer.start()


def cancel_deadline() -> None:
    if _timer is not None:
        _timer.cancel()


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Handle SIGTERM with :func:`on_stop_signal` inside a flow (main thread only: elsewhere,
    e.g. a flow run in a worker thread, signals are not ours to take)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_stop_signal)
    try:
        yield
    finally:
        # The deadline stays armed past the flow body: Prefect's engine still reports the
        # run's end to its API, and a slow or unreachable API must not hold the exit longer
        # than the grace period. The CLI disarms it once the run has returned.
        signal.signal(signal.SIGTERM, previous)
