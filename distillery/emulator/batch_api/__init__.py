"""The providers' batch APIs on the emulator: OpenAI Batch with its Files API, Anthropic
Message Batches, Gemini batch mode with its File API, all on the emulator's one port.

A batch's answers come from the same generator as the online routes (same seed, same request:
same text and usage), its time is compressed to ``batch_seconds`` on an injectable clock
(:mod:`.store`), its lines can fail one by one (``fault_rate``, drawn per line), a share of
batches can expire with half their lines done (``batch_expire_rate``), and each provider's size
caps are enforced with its own errors. :func:`add_batch_routes` is the one entry point.
"""

from __future__ import annotations

from aiohttp import web

from distillery.emulator.batch_api.anthropic import AnthropicBatches
from distillery.emulator.batch_api.common import Context, Handler
from distillery.emulator.batch_api.gemini import GeminiBatches
from distillery.emulator.batch_api.openai import OpenAIBatches
from distillery.emulator.batch_api.store import BatchStore, Clock
from distillery.emulator.options import EmulatorOptions
from distillery.emulator.stats import Stats

__all__ = ["BatchStore", "Clock", "add_batch_routes"]

BATCHES = web.AppKey("distillery_emulator_batches", BatchStore)


def add_batch_routes(
    app: web.Application, options: EmulatorOptions, stats: Stats, clock: Clock
) -> BatchStore:
    """Register every batch route on ``app`` (before any catch-all route) and return the store;
    its files are removed when the app shuts down."""
    store = BatchStore(options, clock)
    app[BATCHES] = store
    context = Context(store, stats, options.require_key)
    openai, gemini = OpenAIBatches(context), GeminiBatches(context)
    # OpenAI's first: its routes' patterns take only its own ids (see OpenAIBatches).
    for provider in (openai, AnthropicBatches(context), gemini):
        provider.add_routes(app)
    app.router.add_get("/v1/batches", _by_client(gemini.list_route, openai.list_route))

    async def close(_: web.Application) -> None:
        store.close()

    app.on_cleanup.append(close)
    return store


def _by_client(google: Handler, other: Handler) -> Handler:
    """``google`` for a Google client (its API key or client header), else ``other``: the one
    path both OpenAI and Gemini's ``/v1`` list batches on."""

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = request.headers
        is_google = "x-goog-api-key" in headers or "x-goog-api-client" in headers
        return await (google if is_google or "key" in request.query else other)(request)

    return handle
