"""Running the app: in the foreground (:func:`serve`) or in a background thread for tests.

Both bind through :func:`_start` so the printed or returned URL always carries the port really
bound, which is what makes ``port=0`` (any free port) usable by parallel test runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from aiohttp import web

from distillery.emulator.batch_api import Clock
from distillery.emulator.completion import warm_up
from distillery.emulator.options import EmulatorOptions
from distillery.emulator.server import STATE, build_app
from distillery.errors import FatalRunError

_STOP_TIMEOUT_S = 10.0
# Binding takes milliseconds, but a thread on a machine loaded several times over (or traced)
# can wait many seconds for its first turn: generous, and a one-line error past it.
_START_TIMEOUT_S = 60.0
# In-flight requests get this long to finish on shutdown (aiohttp's default is 60 s): a slow
# or hanging answer must not hold a test run for a minute.
_DRAIN_TIMEOUT_S = 2.0
_T = TypeVar("_T")


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    warm_up()
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=_DRAIN_TIMEOUT_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"


def serve(options: EmulatorOptions, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until SIGINT or SIGTERM, then close connections and return."""
    # Plain asyncio: uvloop measured no faster here (aiohttp's C parser does the heavy part).
    asyncio.run(_serve(options, host, port))


async def _serve(options: EmulatorOptions, host: str, port: int) -> None:
    runner, url = await _start(build_app(options), host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    print(f"emulator listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


class RunningEmulator:
    """An emulator on a loopback port in a background thread, for tests and benchmarks.

    Its own thread and event loop keep it independent of the caller's (sync tests, another
    loop, Prefect's workers). Use as a context manager; ``url`` is valid inside the block.
    ``clock`` drives the batch APIs' time (:mod:`.batch_api`): a test may move it by hand.
    """

    def __init__(
        self,
        options: EmulatorOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = time.time,
    ) -> None:
        self.options = options or EmulatorOptions()
        self._host = host
        self._port = port
        self._app = build_app(self.options, clock)
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._used = False

    @property
    def url(self) -> str:
        """Base URL without ``/v1`` or a trailing slash, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("the emulator is not running; use it as a context manager")
        return self._url

    def start(self) -> None:
        """Bind and serve; returns once the port accepts connections. Single use."""
        if self._used:
            raise RuntimeError("an emulator runs once; make a new RunningEmulator")
        self._used = True
        started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="distillery-emulator", daemon=True
        )
        self._thread.start()
        try:
            self._url = started.result(timeout=_START_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(_STOP_TIMEOUT_S)
            self._thread = None
            raise FatalRunError(
                f"the built-in emulator did not start within {_START_TIMEOUT_S:g} s "
                "(is the machine overloaded?)"
            ) from None
        except BaseException:
            self._thread.join(_STOP_TIMEOUT_S)
            self._thread = None
            raise

    def stop(self) -> None:
        """Close connections, stop the loop and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(_STOP_TIMEOUT_S)
        self._thread = self._loop = self._stop = None
        self._url = None

    def stats(self) -> dict[str, object]:
        """The same counters as ``GET /_emulator/stats``, read on the server's own loop."""
        return self._call(lambda: self._app[STATE].stats.snapshot())

    def reset(self) -> None:
        """Zero the stats and the usage window, like ``POST /_emulator/reset``."""
        self._call(self._app[STATE].reset)

    def _call(self, fn: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not running")

        async def on_loop() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(on_loop(), loop).result(_STOP_TIMEOUT_S)

    def _run(self, started: concurrent.futures.Future[str]) -> None:
        try:
            asyncio.run(self._main(started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)  # start() re-raises it in the caller's thread
            else:
                raise

    async def _main(self, started: concurrent.futures.Future[str]) -> None:
        try:
            app_runner, url = await _start(self._app, self._host, self._port)
        except BaseException as exc:
            started.set_exception(exc)
            return
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        started.set_result(url)
        try:
            await self._stop.wait()
        finally:
            await app_runner.cleanup()

    def __enter__(self) -> RunningEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
