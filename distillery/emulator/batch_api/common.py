"""What every provider's batch routes share: the key check, counting, bodies, answers.

A batch route is an API request like any other: it needs the provider's key, is counted in the
stats (``requests`` and ``by_status``, so a client's polls can be checked), and refuses with
the provider's own error shape (its wire format renders it). Answers inside a batch are not
counted as served: they are not HTTP requests, and a batch reports its own counts and usage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from distillery.emulator.batch_api.store import BatchStore, Job, Line, Rendered, Spool, Spooled
from distillery.emulator.completion import Answer, ChatRequest
from distillery.emulator.faults import Fault
from distillery.emulator.formats.base import ApiError, Problem, Served, WireFormat
from distillery.emulator.reasoning import configure
from distillery.emulator.stats import Stats
from distillery.emulator.window import UsageWindow

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: One request's id and where its body was spooled, or why it is invalid.
Parsed = tuple[str, Spooled | ApiError]
T = TypeVar("T")
#: A batch's results are not served under any limit: the headers' nominal quota will do.
SERVED = Served(UsageWindow().quota(0.0), 0)
_CHUNK = 1 << 20


class Context:
    """What a provider's batch routes need from the emulator."""

    def __init__(self, store: BatchStore, stats: Stats, required_key: str | None) -> None:
        self.store = store
        self.stats = stats
        self.required_key = required_key
        self.options = store.options

    def guard(self, fmt: WireFormat, handler: Handler) -> Handler:
        """``handler`` behind the key check, counted, its :class:`ApiError` rendered by ``fmt``."""
        stats, required = self.stats, self.required_key

        async def handle(request: web.Request) -> web.StreamResponse:
            stats.received(time.time())
            try:
                if required is not None:
                    key = fmt.api_key(request)
                    if key != required:
                        raise ApiError(401, Problem.MISSING_KEY if not key else Problem.BAD_KEY)
                response = await handler(request)
            except ApiError as err:
                response = fmt.error(err, request)
            stats.answered(response.status)
            return response

        return handle

    def parse(
        self, fmt: WireFormat, request: web.Request, body: Any, spool: Spool
    ) -> Spooled | ApiError:
        """Check that ``body`` (one line's request) parses as the online route parses it, and
        spool it; or why the online route would refuse it. Thread-safe: batches are parsed off
        the event loop."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        parsed = self._parse(fmt, request, raw)
        return parsed if isinstance(parsed, ApiError) else spool.add(raw)

    def reader(self, fmt: WireFormat, request: web.Request) -> Callable[[bytes], ChatRequest]:
        """How a job parses its spooled bodies again to answer them (see :class:`.store.Line`):
        as the online route does, reasoning set up the same way, so the same request gets the
        same answer in a batch and online."""

        def read(raw: bytes) -> ChatRequest:
            parsed = self._parse(fmt, request, raw)
            assert not isinstance(parsed, ApiError), "it parsed when its batch was created"
            return parsed

        return read

    def _parse(self, fmt: WireFormat, request: web.Request, raw: bytes) -> ChatRequest | ApiError:
        try:
            chat = fmt.parse(request, raw)
        except ApiError as err:
            return err
        if chat.thinking is not None:
            options = self.options
            chat = configure(
                chat, options.seed, options.reasoning_redact_rate, options.openai_reasoning
            )
        return chat

    async def spooled(self, parse: Callable[[Spool], T]) -> tuple[T, Spool]:
        """Run ``parse`` (which spools the bodies it accepts) off the event loop: 100,000
        requests take seconds to parse."""
        spool = Spool(self.store.new_path())
        try:
            return await asyncio.to_thread(parse, spool), spool
        finally:
            spool.close()

    def line(
        self, fmt: WireFormat, custom_id: str, parsed: Spooled | ApiError, request: web.Request
    ) -> Line:
        """A job's line from a :meth:`parse` result, its fault drawn (on the event loop, in
        line order: a run is reproducible)."""
        if isinstance(parsed, ApiError):
            return Line(custom_id, None, unpack(fmt.error(parsed, request)))
        return Line(custom_id, parsed, fault=self.store.fault())

    async def job(self, job_id: str, write: Callable[[Job, float], None]) -> Job | None:
        """The job ``job_id`` with its results written if it has ended, or None."""
        job = self.store.jobs.get(job_id)
        if job is not None:
            self.store.settle(job, write)
        return job


async def read_capped(request: web.Request, cap: int) -> bytes | None:
    """The request body, or None if it is (or says it is) over ``cap`` bytes.

    Read from the stream, not with ``request.read()``: the app's body limit (far below the
    providers' batch caps) must not refuse a batch the provider accepts.
    """
    if request.content_length is not None and request.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object, or the format's bad-JSON error."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    raise ApiError(400, Problem.BAD_JSON)


def page(jobs: list[Job], after: str | None, size: int) -> tuple[list[Job], bool]:
    """Up to ``size`` of ``jobs`` (newest first) after the one with id ``after``, and whether
    more follow: the cursor pagination every provider's list uses."""
    if after is not None:
        ids = [job.id for job in jobs]
        jobs = jobs[ids.index(after) + 1 :] if after in ids else []
    return jobs[:size], len(jobs) > size


def page_size(raw: str | None, default: int, most: int) -> int | None:
    """A list's page size from its query parameter; None if it is not in ``1..most``."""
    try:
        size = default if raw is None else int(raw)
    except ValueError:
        return None
    return size if 1 <= size <= most else None


def unpack(response: web.Response, request_id_header: str | None = None) -> Rendered:
    """A rendered response as a batch result holds it."""
    body = response.body
    assert isinstance(body, bytes), "formats render bytes bodies"
    request_id = response.headers.get(request_id_header, "") if request_id_header else ""
    return Rendered(response.status, json.loads(body), request_id)


def answer_body(fmt: WireFormat, chat: ChatRequest, answer: Answer, header: str | None) -> Rendered:
    """The online route's success response to ``chat``, as a batch result."""
    return unpack(fmt.render(chat, answer, SERVED), header)


def fault_body(fmt: WireFormat, fault: Fault, chat: ChatRequest, header: str | None) -> Rendered:
    """The online route's error response for ``fault``, as a batch result."""
    return unpack(fmt.fault(fault, chat), header)


def jsonl_line(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def json_ok(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, dumps=_compact)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
