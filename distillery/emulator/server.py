"""The aiohttp application: routes, and what every API request goes through.

Per request the server checks the key, reads the body, waits the configured latency, answers
and counts. Everything else is the wire format's business (:mod:`.formats`). No middleware and
no access log: at thousands of requests a second each is a measurable share of the CPU.

The order is: key → body → limits → faults → answer. Invalid requests (bad key, bad body) are
refused first, as a real API does before its rate limiter or model. With ``rpm``, ``tpm`` or
``max_concurrency`` set, a valid request then goes through the limits (:mod:`.limits`): a
refused one gets its format's 429 at once (no latency) and is counted in ``rate_limited``; an
admitted one counts against the window and in flight, whatever follows. With ``fault_rate`` > 0,
an admitted request may instead get a fault (:mod:`.faults`): the format renders HTTP errors and
flagged answers, :mod:`.transport` the rest. Without limits no limit code runs, and with
``fault_rate`` 0 no fault code runs at all. With ``dup_rate`` or ``near_dup_rate`` > 0, a clean
answer may be replaced by a copy of an earlier one (:mod:`.duplicates`); with both 0 no copy
code runs.

The providers' batch APIs (files, batches, results) are added by one call,
:func:`.batch_api.add_batch_routes`; they share the key check and the stats, not this path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from distillery.emulator import transport
from distillery.emulator.batch_api import Clock, add_batch_routes
from distillery.emulator.caching import PromptCache
from distillery.emulator.completion import Answer, ChatRequest, complete
from distillery.emulator.duplicates import Copier, Copy
from distillery.emulator.faults import FLAGGED, HTTP_ERRORS, RATE_LIMITS, Fault, FaultPicker, flag
from distillery.emulator.formats import format_of, wire_formats
from distillery.emulator.formats.base import ApiError, Problem, Served, WireFormat
from distillery.emulator.limits import Limiter
from distillery.emulator.options import EmulatorOptions
from distillery.emulator.reasoning import configure
from distillery.emulator.stats import Stats
from distillery.emulator.window import UsageWindow
from distillery.generators.tokens import count_message_tokens

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Real prompts can be large (long context); aiohttp's 1 MiB default would 413 them.
MAX_BODY_BYTES = 32 * 1024 * 1024
CONTROL_PREFIX = "/_emulator/"


class EmulatorState:
    """Mutable state of one app, reachable from handlers and from :class:`RunningEmulator`."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.stats = Stats(track_in_flight=options.limited)
        self.window = UsageWindow()
        # None without limits: the request path then does no limit work at all.
        self.limiter = (
            Limiter(
                rpm=options.rpm,
                tpm=options.tpm,
                max_concurrency=options.max_concurrency,
                window_s=options.window_s,
                latency_ms=options.latency_ms,
                quantum_s=options.quantum_s,
            )
            if options.limited
            else None
        )
        self.prompt_cache = PromptCache()
        # Jitter only; seeded so a single-client run has reproducible timings too.
        self._jitter = random.Random(options.seed)
        # One stream of fault draws for all formats; None keeps the fault-free path free of it.
        self.picker = (
            FaultPicker(options.fault_rate, options.faults, options.seed)
            if options.fault_rate > 0
            else None
        )
        # Copies of earlier answers; None keeps the path without them free of their work.
        self.copier = (
            Copier(options.dup_rate, options.near_dup_rate, options.seed)
            if options.copies
            else None
        )

    async def delay(self) -> None:
        """Sleep around ``latency_ms`` (uniform 0.5x..1.5x), without blocking the loop."""
        mean = self.options.latency_ms
        if mean > 0:
            await asyncio.sleep(mean * (0.5 + self._jitter.random()) / 1000)

    def reset(self) -> None:
        """Zero the stats and the usage window, empty the limits' window, forget cached prompts.

        Requests still in flight stay counted in flight (they still hold their slots).
        """
        self.stats.reset()
        self.window.clear()
        self.prompt_cache.clear()
        limiter = self.limiter
        if limiter is not None:
            limiter.clear()
            self.stats.max_in_flight = limiter.in_flight


@dataclass(frozen=True, slots=True)
class Charge:
    """What the limits charged an admitted request, and the work done to know it.

    ``tokens`` is the charge (0 without a token limit); ``prompt_tokens`` or the whole ``answer``
    were computed for it and are reused to answer.
    """

    tokens: int = 0
    prompt_tokens: int | None = None
    answer: Answer | None = None


NO_CHARGE = Charge()


def charge(chat: ChatRequest, seed: int) -> Charge:
    """The tokens a request counts against a token limit: prompt plus ``max_tokens``, or, with
    no ``max_tokens``, prompt plus the completion it will get (see :mod:`.limits`)."""
    if chat.max_tokens is not None:
        prompt_tokens = count_message_tokens(chat.messages, chat.model)
        return Charge(prompt_tokens + chat.max_tokens, prompt_tokens)
    answer = complete(chat, seed)
    return Charge(answer.prompt_tokens + answer.output_tokens, answer=answer)


STATE = web.AppKey("distillery_emulator_state", EmulatorState)


def _api_handler(state: EmulatorState, fmt: WireFormat) -> Handler:
    stats, window, options = state.stats, state.window, state.options
    required = options.require_key
    picker = state.picker
    limiter = state.limiter
    copier = state.copier

    async def produce(
        chat: ChatRequest, started: float, fault: Fault | None = None, paid: Charge = NO_CHARGE
    ) -> tuple[web.Response, Answer, Copy | None]:
        """Generate, count in the usage window and render an answer: flagged by ``fault``, sent
        as it is for a transport fault to mangle, or, without one, maybe a copy of an earlier
        answer (what the third element says)."""
        await state.delay()
        answer = paid.answer or complete(chat, options.seed, paid.prompt_tokens)
        copy = None
        if fault in FLAGGED:
            answer = flag(answer, fault, chat)
        elif fault is None and copier is not None:
            answer, copy = copier.answer(answer, chat)
        answer = state.prompt_cache.apply(fmt.cache, chat, answer)
        now = time.monotonic()
        window.add(now, answer.prompt_tokens + answer.output_tokens)
        quota = window.quota(now) if limiter is None else limiter.quota(now, paid.tokens, window)
        served = Served(quota, int((now - started) * 1000))
        return fmt.render(chat, answer, served), answer, copy

    async def inject(
        fault: Fault,
        request: web.Request,
        chat: ChatRequest,
        started: float,
        paid: Charge = NO_CHARGE,
    ) -> web.StreamResponse:
        """Answer with ``fault`` and count it; see :mod:`.stats` for what lands where."""
        stats.injected(fault.value)
        if fault in HTTP_ERRORS:
            if fault not in RATE_LIMITS:  # a rate limiter refuses before any work is done
                await state.delay()
            response = fmt.fault(fault, chat)
        elif fault in FLAGGED:
            response, answer, _ = await produce(chat, started, fault, paid)
            stats.flagged(answer.prompt_tokens, answer.output_tokens)
        elif fault is Fault.TIMEOUT:
            stats.answered(fault.value)
            return await transport.hang(request, options.hang_s)
        elif fault is Fault.RESET:
            await state.delay()
            stats.answered(fault.value)
            return transport.reset(request)
        else:
            response, _, _ = await produce(chat, started, fault, paid)
            if fault is Fault.TRUNCATE:
                stats.answered(fault.value)
                return await transport.truncate(request, response)
            response = transport.malformed(response)
        stats.answered(response.status)
        return response

    async def limited(
        request: web.Request, chat: ChatRequest, started: float, limiter: Limiter
    ) -> web.StreamResponse:
        """Admit ``chat`` through the limits, then fault or answer it; or send the 429."""
        now = time.monotonic()
        paid = NO_CHARGE
        refusal = limiter.crowded(now, window)
        if refusal is None:
            paid = charge(chat, options.seed) if limiter.counts_tokens else NO_CHARGE
            refusal = limiter.admit(now, paid.tokens, window)
        if refusal is not None:
            stats.refused()
            response = fmt.limited(refusal, chat)
            stats.answered(response.status)
            return response
        if stats.max_in_flight is not None and limiter.in_flight > stats.max_in_flight:
            stats.max_in_flight = limiter.in_flight
        try:
            # Processing time from the admission, as a provider's rate limiter sits in front of
            # its model: (answer - openai-processing-ms) is then never before the admission.
            if picker is not None and (fault := picker.pick()) is not None:
                return await inject(fault, request, chat, now, paid)
            response, answer, copy = await produce(chat, now, paid=paid)
            stats.served(answer.prompt_tokens, answer.output_tokens, copy)
            stats.answered(response.status)
            return response
        finally:
            limiter.release()

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
            if chat.thinking is not None:
                chat = configure(
                    chat, options.seed, options.reasoning_redact_rate, options.openai_reasoning
                )
            if limiter is not None:
                return await limited(request, chat, started, limiter)
            if picker is not None and (fault := picker.pick()) is not None:
                return await inject(fault, request, chat, started)
            response, answer, copy = await produce(chat, started)
            stats.served(answer.prompt_tokens, answer.output_tokens, copy)
        except ApiError as err:
            response = fmt.error(err, request)
        stats.answered(response.status)
        return response

    return handle


def _not_found_handler(state: EmulatorState) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        error = ApiError(404, Problem.UNKNOWN_PATH)
        response = format_of(request.path).error(error, request)
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


def build_app(options: EmulatorOptions, clock: Clock = time.time) -> web.Application:
    """A fresh app with its own stats; serve it with aiohttp or :func:`.runner.serve`.

    ``clock`` (unix seconds) drives the batch APIs' compressed time; tests inject their own.
    """
    state = EmulatorState(options)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = state
    for fmt in wire_formats().values():
        handler = _api_handler(state, fmt)
        for path in fmt.paths:
            app.router.add_post(path, handler)
    add_batch_routes(app, options, state.stats, clock)
    app.router.add_get(CONTROL_PREFIX + "stats", _stats_handler(state))
    app.router.add_post(CONTROL_PREFIX + "reset", _reset_handler(state))
    # Registered last: the router only falls back to it when nothing above matched.
    app.router.add_route("*", "/{tail:.*}", _not_found_handler(state))
    return app
