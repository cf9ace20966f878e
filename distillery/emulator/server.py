"""The aiohttp application: routes, and what every API request goes through.

Per request the server checks the key, reads the body, waits the configured latency, answers
and counts. Everything else is the wire format's business (:mod:`.formats`). No middleware and
no access log: at thousands of requests a second each is a measurable share of the CPU.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from distillery.emulator.completion import complete
from distillery.emulator.formats.base import ApiError, Problem, Served, WireFormat
from distillery.emulator.formats.openai import OpenAIFormat
from distillery.emulator.options import EmulatorOptions
from distillery.emulator.stats import Stats
from distillery.emulator.window import UsageWindow

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Real prompts can be large (long context); aiohttp's 1 MiB default would 413 them.
MAX_BODY_BYTES = 32 * 1024 * 1024
CONTROL_PREFIX = "/_emulator/"


class EmulatorState:
    """Mutable state of one app, reachable from handlers and from :class:`RunningEmulator`."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.stats = Stats()
        self.window = UsageWindow()
        # Jitter only; seeded so a single-client run has reproducible timings too.
        self._jitter = random.Random(options.seed)

    async def delay(self) -> None:
        """Sleep around ``latency_ms`` (uniform 0.5x..1.5x), without blocking the loop."""
        mean = self.options.latency_ms
        if mean > 0:
            await asyncio.sleep(mean * (0.5 + self._jitter.random()) / 1000)

    def reset(self) -> None:
        """Zero the stats and the usage window."""
        self.stats.reset()
        self.window.clear()


STATE = web.AppKey("distillery_emulator_state", EmulatorState)
FORMATS: tuple[WireFormat, ...] = (OpenAIFormat(),)
# Unknown paths are answered in this format's error shape.
FALLBACK_FORMAT: WireFormat = FORMATS[0]


def _api_handler(state: EmulatorState, fmt: WireFormat) -> Handler:
    stats, window, options = state.stats, state.window, state.options
    required = options.require_key

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        stats.received(time.time())
        try:
            if required is not None:
                key = fmt.api_key(request)
                if key != required:
                    problem = Problem.MISSING_KEY if not key else Problem.BAD_KEY
                    raise ApiError(401, problem)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(
                    413, Problem.BODY_TOO_LARGE, f"Request body over {MAX_BODY_BYTES} bytes."
                ) from None
            chat = fmt.parse(request, body)
            await state.delay()
            answer = complete(chat, options.seed)
            now = time.monotonic()
            window.add(now, answer.prompt_tokens + answer.completion_tokens)
            served = Served(window.quota(now), int((now - started) * 1000))
            response = fmt.render(chat, answer, served)
            stats.served(answer.prompt_tokens, answer.completion_tokens)
        except ApiError as err:
            response = fmt.error(err, request)
        stats.answered(response.status)
        return response

    return handle


def _not_found_handler(state: EmulatorState) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = FALLBACK_FORMAT.error(ApiError(404, Problem.UNKNOWN_PATH), request)
        if not request.path.startswith(CONTROL_PREFIX):
            state.stats.received(time.time())
            state.stats.answered(response.status)
        return response

    return handle


def _stats_handler(state: EmulatorState) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.stats.snapshot())

    return handle


def _reset_handler(state: EmulatorState) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state.reset()
        return web.json_response(state.stats.snapshot())

    return handle


def build_app(options: EmulatorOptions) -> web.Application:
    """A fresh app with its own stats; serve it with aiohttp or :func:`.runner.serve`."""
    state = EmulatorState(options)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = state
    for fmt in FORMATS:
        handler = _api_handler(state, fmt)
        for path in fmt.paths:
            app.router.add_post(path, handler)
    app.router.add_get(CONTROL_PREFIX + "stats", _stats_handler(state))
    app.router.add_post(CONTROL_PREFIX + "reset", _reset_handler(state))
    # Registered last: the router only falls back to it when nothing above matched.
    app.router.add_route("*", "/{tail:.*}", _not_found_handler(state))
    return app
