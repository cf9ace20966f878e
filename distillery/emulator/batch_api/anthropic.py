"""Anthropic Message Batches: ``/v1/messages/batches``, as the official ``anthropic`` SDK calls it.

A client posts ``requests[{custom_id, params}]`` (at most 100,000, or 256 MB), polls
``processing_status`` (``in_progress``, ``canceling``, ``ended``) and, once ended, streams the
JSONL at ``results_url``: one ``{custom_id, result}`` per request, ``result.type`` one of
``succeeded`` (with the ``message``), ``errored`` (with the error response), ``canceled`` or
``expired``. As in the real API, ``request_counts`` shows every request as ``processing`` until
the batch ends, and ``params`` are validated per request: an invalid one is ``errored`` with
the Messages API's 400, not a refused batch. Results come in completion order.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from aiohttp import web

from distillery.emulator.batch_api import common
from distillery.emulator.batch_api.common import Context, Parsed
from distillery.emulator.batch_api.store import TERMINAL, Job, Outcome, Phase, Spool, new_id
from distillery.emulator.formats.anthropic import AnthropicFormat, rfc3339
from distillery.emulator.formats.base import ApiError, Problem

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PREFIX = "msgbatch_"
_FORMAT = AnthropicFormat()


def _invalid(message: str) -> ApiError:
    return ApiError(400, Problem.INVALID_REQUEST, message)


class AnthropicBatches:
    """The routes, over one :class:`Context`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def add_routes(self, app: web.Application) -> None:
        guard = self.ctx.guard
        router = app.router
        router.add_post("/v1/messages/batches", guard(_FORMAT, self.create))
        router.add_get("/v1/messages/batches", guard(_FORMAT, self.list))
        router.add_get("/v1/messages/batches/{id}", guard(_FORMAT, self.get))
        router.add_delete("/v1/messages/batches/{id}", guard(_FORMAT, self.delete))
        router.add_post("/v1/messages/batches/{id}/cancel", guard(_FORMAT, self.cancel))
        router.add_get("/v1/messages/batches/{id}/results", guard(_FORMAT, self.results))

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await common.read_capped(request, MAX_BYTES)
        if body is None:
            raise ApiError(
                413,
                Problem.BODY_TOO_LARGE,
                f"Request exceeds the maximum allowed number of bytes ({MAX_BYTES}) for a "
                "message batch.",
            )
        requests = common.json_object(body).get("requests")
        if not isinstance(requests, list):
            raise _invalid("requests: Field required")
        if not requests:
            raise _invalid("requests: List should have at least 1 item after validation, not 0")
        if len(requests) > MAX_REQUESTS:
            raise _invalid(
                f"requests: List should have at most {MAX_REQUESTS} items after validation, "
                f"not {len(requests)}"
            )
        parsed, spool = await self.ctx.spooled(partial(self._parse, requests, request))
        lines = [self.ctx.line(_FORMAT, custom_id, item, request) for custom_id, item in parsed]
        origin = f"{request.scheme}://{request.host}"
        read = self.ctx.reader(_FORMAT, request)
        job_id = new_id(_PREFIX + "01", 22)
        job = self.store.add_job(job_id, lines, {"origin": origin}, None, spool.path, read)
        return common.json_ok(self._batch(job))

    def _parse(self, requests: list[Any], request: web.Request, spool: Spool) -> list[Parsed]:
        """Each request's custom_id and parsed params; a malformed item or a repeated
        custom_id refuses the whole batch, invalid params only fail their request."""
        seen: set[str] = set()
        parsed: list[Parsed] = []
        for index, item in enumerate(requests):
            where = f"requests.{index}"
            if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
                raise _invalid(f"{where}.params: Field required")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                raise _invalid(
                    f"{where}.custom_id: String should match pattern '{_CUSTOM_ID.pattern}'"
                )
            if custom_id in seen:
                raise _invalid(f"Duplicate custom_id {custom_id!r}: each must be unique.")
            seen.add(custom_id)
            parsed.append((custom_id, self.ctx.parse(_FORMAT, request, item["params"], spool)))
        return parsed

    def _batch(self, job: Job) -> dict[str, Any]:
        now = self.store.clock()
        phase = job.phase(now)
        ended = phase in TERMINAL
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if ended:
            counts["succeeded"], counts["errored"] = job.counts(now)
            undone = len(job.lines) - counts["succeeded"] - counts["errored"]
            counts["expired" if phase is Phase.EXPIRED else "canceled"] = undone
        else:
            counts["processing"] = len(job.lines)
        status = "ended" if ended else "canceling" if phase is Phase.CANCELLING else "in_progress"
        results_url = f"{job.info['origin']}/v1/messages/batches/{job.id}/results"
        cancelled = job.cancelled_at
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": rfc3339(job.ended) if ended and job.ended is not None else None,
            "created_at": rfc3339(job.created),
            "expires_at": rfc3339(job.deadline),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(cancelled) if cancelled is not None else None,
            "results_url": results_url if ended else None,
        }

    def _write(self, job: Job, now: float) -> None:
        """The results file of an ended job; runs once, off the event loop."""
        path = self.store.new_path()
        with path.open("wb") as out:
            for result in self.store.results(job, now):
                line = result.line
                outcome: dict[str, Any] = {"type": result.outcome.value}
                if result.outcome is Outcome.SUCCEEDED:
                    assert result.chat is not None and result.answer is not None
                    rendered = common.answer_body(_FORMAT, result.chat, result.answer, None)
                    outcome["message"] = rendered.body
                elif result.outcome is Outcome.ERRORED:
                    if result.fault is not None and result.chat is not None:
                        outcome["error"] = common.fault_body(
                            _FORMAT, result.fault, result.chat, None
                        ).body
                    else:
                        assert line.invalid is not None
                        outcome["error"] = line.invalid.body
                out.write(common.jsonl_line({"custom_id": line.custom_id, "result": outcome}))
        job.info["results"] = path

    async def _job(self, request: web.Request) -> Job:
        job_id = request.match_info["id"]
        job = await self.ctx.job(job_id, self._write) if job_id.startswith(_PREFIX) else None
        if job is None:
            raise ApiError(404, Problem.UNKNOWN_PATH, f"Message batch {job_id} not found.")
        return job

    async def get(self, request: web.Request) -> web.StreamResponse:
        return common.json_ok(self._batch(await self._job(request)))

    async def list(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        limit = common.page_size(query.get("limit"), 20, 1000)
        if limit is None:
            raise _invalid("limit: Input should be between 1 and 1000")
        jobs = self.store.newest_first(_PREFIX)
        before = query.get("before_id")
        if before is not None:  # the page just before it: reversed, it is the page after it
            older_first, more = common.page(jobs[::-1], before, limit)
            jobs = older_first[::-1]
        else:
            jobs, more = common.page(jobs, query.get("after_id"), limit)
        for job in jobs:
            self.store.settle(job, self._write)
        data = [self._batch(job) for job in jobs]
        return common.json_ok(
            {
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        now = self.store.clock()
        phase = job.scheduled(now)
        if phase in TERMINAL and job.cancelled_at is None:
            raise _invalid(f"Batch {job.id} has ended and can no longer be canceled.")
        if job.cancelled_at is None:
            job.cancelled_at = now
        self.store.settle(job, self._write)
        return common.json_ok(self._batch(job))

    async def results(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        path = job.info.get("results")
        if path is None:
            raise _invalid(f"Batch {job.id} is still processing: its results are not ready.")
        response = web.FileResponse(path)
        response.content_type = "application/binary"
        return response

    async def delete(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        if job.scheduled(self.store.clock()) not in TERMINAL:
            raise _invalid(f"Batch {job.id} is still processing: cancel it before deleting it.")
        self.store.forget(job)
        path = job.info.get("results")
        if path is not None:
            path.unlink(missing_ok=True)
        return common.json_ok({"id": job.id, "type": "message_batch_deleted"})
