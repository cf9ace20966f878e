"""Gemini batch mode and the File API, as the official ``google-genai`` SDK calls them.

``POST /v1beta/models/{model}:batchGenerateContent`` takes ``batch.inputConfig``: inline
``requests.requests[{request, metadata}]`` (the whole body under 20 MB) or a ``fileName`` of a
JSONL file uploaded through the File API (``{key, request}`` per line, up to 2 GB, uploaded
with the resumable protocol the SDK uses: a ``start`` call answered with an
``x-goog-upload-url``, then ``upload``/``finalize`` chunks). The answer is a long-running
operation ``batches/{id}`` whose ``metadata.state`` goes ``BATCH_STATE_PENDING``, ``RUNNING``,
then ``SUCCEEDED``, ``FAILED`` (an input file that is not valid JSONL), ``CANCELLED`` or
``EXPIRED``; the SDK shows these as ``JOB_STATE_*``. A succeeded batch holds its responses
inline (``inlinedResponses``, one per request, with its ``metadata``) or in a generated file
(``responsesFile``, downloaded with ``files/{id}:download?alt=media``), in input order, each a
``response`` or an ``error`` (a ``google.rpc.Status``: its ``code`` is a gRPC code, 13 for
an internal error, not an HTTP status). As the Gemini docs say, a cancelled or expired batch
has no results to retrieve: its requests must be sent again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from distillery.emulator.batch_api import common
from distillery.emulator.batch_api.common import Context, Handler, Parsed
from distillery.emulator.batch_api.store import (
    TERMINAL,
    Job,
    Phase,
    Rendered,
    Result,
    Spool,
    new_id,
)
from distillery.emulator.formats.anthropic import rfc3339
from distillery.emulator.formats.base import ApiError, Problem
from distillery.emulator.formats.gemini import GeminiFormat

MAX_INLINE_BYTES = 20 * 1024 * 1024
MAX_FILE_BYTES = 2 * 1024 * 1024 * 1024
_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_TYPES = "type.googleapis.com/google.ai.generativelanguage.v1beta."
_STATES = {
    Phase.VALIDATING: "BATCH_STATE_PENDING",
    Phase.IN_PROGRESS: "BATCH_STATE_RUNNING",
    Phase.FINALIZING: "BATCH_STATE_RUNNING",
    Phase.CANCELLING: "BATCH_STATE_RUNNING",
    Phase.COMPLETED: "BATCH_STATE_SUCCEEDED",
    Phase.FAILED: "BATCH_STATE_FAILED",
    Phase.CANCELLED: "BATCH_STATE_CANCELLED",
    Phase.EXPIRED: "BATCH_STATE_EXPIRED",
}
_UPLOAD_STATUS = "x-goog-upload-status"
#: google.rpc.Code numbers of the status names the online errors use.
GRPC_CODES = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_FORMAT = GeminiFormat()
_ID = "{id:[^/:]+}"


def _invalid(message: str) -> ApiError:
    return ApiError(400, Problem.INVALID_REQUEST, message)


def _google_error(code: int, status: str, message: str) -> web.Response:
    """An error in Google's envelope with a status the wire format has no problem for."""
    return common.json_ok({"error": {"code": code, "message": message, "status": status}}, code)


def _not_found() -> web.Response:
    return _google_error(404, "NOT_FOUND", "Requested entity was not found.")


@dataclass
class _Upload:
    """A resumable upload in progress."""

    path: Path
    declared: int
    info: dict[str, Any]
    received: int = 0


class GeminiBatches:
    """The routes, over one :class:`Context`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self._uploads: dict[str, _Upload] = {}

    def add_routes(self, app: web.Application) -> None:
        """Register the routes under ``/v1beta`` and ``/v1`` (the SDK's default), but the
        ``/v1`` batch list, which OpenAI's shares (see :attr:`list_route`)."""
        guard = self.ctx.guard
        router = app.router
        for version in ("v1beta", "v1"):
            model = f"/{version}/models/{{model:[^/:]+}}:batchGenerateContent"
            batch, file = f"/{version}/batches/{_ID}", f"/{version}/files/{_ID}"
            router.add_post(model, guard(_FORMAT, self.create))
            if version != "v1":
                router.add_get(f"/{version}/batches", self.list_route)
            router.add_get(batch, guard(_FORMAT, self.get))
            router.add_delete(batch, guard(_FORMAT, self.delete))
            router.add_post(batch + ":cancel", guard(_FORMAT, self.cancel))
            router.add_post(f"/upload/{version}/files", guard(_FORMAT, self.upload))
            router.add_get(file, guard(_FORMAT, self.get_file))
            router.add_delete(file, guard(_FORMAT, self.delete_file))
            # The SDK downloads from the API path; download URIs have a /download/ prefix.
            router.add_get(file + ":download", guard(_FORMAT, self.download))
            router.add_get(
                f"/download/{version}/files/{_ID}:download", guard(_FORMAT, self.download)
            )

    @property
    def list_route(self) -> Handler:
        """``GET /{version}/batches``, guarded."""
        return self.ctx.guard(_FORMAT, self.list)

    # Batches

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await common.read_capped(request, MAX_INLINE_BYTES)
        if body is None:
            raise _invalid(f"Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes.")
        batch = common.json_object(body).get("batch")
        if not isinstance(batch, dict):
            raise _invalid("* BatchGenerateContentRequest.batch: batch is required.")
        config = batch.get("inputConfig", batch.get("input_config"))
        if not isinstance(config, dict):
            raise _invalid("* GenerateContentBatch.input_config: input_config is required.")
        inline = config.get("requests")
        file_name = config.get("fileName", config.get("file_name"))
        if (inline is None) == (file_name is None):
            raise _invalid("* InputConfig: exactly one of requests or file_name must be set.")
        model = request.match_info["model"]
        info: dict[str, Any] = {
            "model": model,
            "displayName": batch.get("displayName", batch.get("display_name", "")),
            "origin": f"{request.scheme}://{request.host}",
        }
        problems: list[dict[str, Any]] = []
        if inline is not None:
            items = inline.get("requests") if isinstance(inline, dict) else None
            if not isinstance(items, list) or not items:
                raise _invalid("* InlinedRequests.requests: requests must not be empty.")
            parsed, spool = await self.ctx.spooled(partial(self._parse_inline, items, request))
            info["metadata"] = [item.get("metadata") for item in items]
        else:
            stored = self.store.files.get(str(file_name))
            if stored is None:
                return _not_found()
            info["fileName"] = stored.id
            (parsed, problems), spool = await self.ctx.spooled(
                partial(self._parse_file, stored.path, request)
            )
        lines = [self.ctx.line(_FORMAT, key, item, request) for key, item in parsed]
        read = self.ctx.reader(_FORMAT, request)
        job_id = "batches/" + new_id("", 32, _LOWER)
        job = self.store.add_job(job_id, lines, info, problems, spool.path, read)
        return common.json_ok(self._operation(job))

    def _parse_inline(self, items: list[Any], request: web.Request, spool: Spool) -> list[Parsed]:
        parsed: list[Parsed] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                parsed.append((str(index), _invalid(f"* requests[{index}].request is required.")))
                continue
            metadata = item.get("metadata")
            key = metadata.get("key") if isinstance(metadata, dict) else None
            parsed.append(
                (
                    str(key if key is not None else index),
                    self.ctx.parse(_FORMAT, request, item["request"], spool),
                )
            )
        return parsed

    def _parse_file(
        self, path: Path, request: web.Request, spool: Spool
    ) -> tuple[list[Parsed], list[dict[str, Any]]]:
        parsed: list[Parsed] = []
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    item = json.loads(raw)
                except ValueError:
                    item = None
                if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                    message = f"Line {number} of the input file is not a JSON {{key, request}}."
                    return [], [{"code": 3, "message": message}]
                parsed.append(
                    (
                        str(item.get("key", number)),
                        self.ctx.parse(_FORMAT, request, item["request"], spool),
                    )
                )
        if not parsed:
            return [], [{"code": 3, "message": "The input file holds no requests."}]
        return parsed, []

    def _operation(self, job: Job) -> dict[str, Any]:
        now = self.store.clock()
        phase = job.phase(now)
        succeeded, failed = job.counts(now)
        total = len(job.lines)
        metadata: dict[str, Any] = {
            "@type": _TYPES + "GenerateContentBatch",
            "model": f"models/{job.info['model']}",
            "displayName": job.info["displayName"],
            "createTime": rfc3339(job.created),
            "updateTime": rfc3339(now),
            "batchStats": {
                "requestCount": str(total),
                "successfulRequestCount": str(succeeded),
                "failedRequestCount": str(failed),
                "pendingRequestCount": str(total - succeeded - failed),
            },
            "state": _STATES[phase],
            "name": job.id,
        }
        if "fileName" in job.info:
            metadata["inputConfig"] = {"fileName": job.info["fileName"]}
        operation: dict[str, Any] = {"name": job.id, "metadata": metadata}
        if phase in TERMINAL:
            if job.ended is not None:
                metadata["endTime"] = rfc3339(job.ended)
            operation["done"] = True
            output = job.info.get("output")
            if phase is Phase.FAILED:
                operation["error"] = job.problems[0]
            elif output is not None:
                metadata["output"] = output
                operation["response"] = {"@type": _TYPES + "GenerateContentBatchOutput", **output}
        return operation

    def _write(self, job: Job, now: float) -> None:
        """The responses of a succeeded job, inline or in a generated file; runs once, off
        the event loop. Cancelled and expired jobs get none (see the module docstring)."""
        if job.scheduled(now) is not Phase.COMPLETED:
            return
        metadata: list[Any] | None = job.info.get("metadata")
        if metadata is not None:
            records = []
            for result in self.store.results(job, now, input_order=True):
                record = _record(result)
                if metadata[result.index] is not None:
                    record["metadata"] = metadata[result.index]
                records.append(record)
            job.info["output"] = {"inlinedResponses": {"inlinedResponses": records}}
            return
        path = self.store.new_path()
        with path.open("wb") as out:
            for result in self.store.results(job, now, input_order=True):
                out.write(common.jsonl_line({"key": result.line.custom_id, **_record(result)}))
        name = "files/batch-" + new_id("", 24, _LOWER)
        info = {"displayName": f"{job.id} responses", "mimeType": "application/jsonl"}
        self.store.add_file(name, path, {**info, "source": "GENERATED"})
        job.info["output"] = {"responsesFile": name}

    async def _job(self, request: web.Request) -> Job | None:
        job_id = "batches/" + request.match_info["id"]
        return await self.ctx.job(job_id, self._write)

    async def get(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        return _not_found() if job is None else common.json_ok(self._operation(job))

    async def list(self, request: web.Request) -> web.StreamResponse:
        size = common.page_size(request.query.get("pageSize"), 50, 1000)
        if size is None:
            raise _invalid("page_size must be between 1 and 1000.")
        token = request.query.get("pageToken") or None
        jobs, more = common.page(self.store.newest_first("batches/"), token, size)
        for job in jobs:
            self.store.settle(job, self._write)
        payload: dict[str, Any] = {"operations": [self._operation(job) for job in jobs]}
        if more:
            payload["nextPageToken"] = jobs[-1].id
        return common.json_ok(payload)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        if job is None:
            return _not_found()
        now = self.store.clock()
        if job.scheduled(now) in TERMINAL and job.cancelled_at is None:
            return _google_error(400, "FAILED_PRECONDITION", f"{job.id} has already ended.")
        if job.cancelled_at is None:
            job.cancelled_at = now
        return common.json_ok({})

    async def delete(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        if job is None:
            return _not_found()
        self.store.forget(job)
        return common.json_ok({})

    # Files

    async def upload(self, request: web.Request) -> web.StreamResponse:
        upload_id = request.query.get("upload_id")
        if upload_id is None:
            return await self._start(request)
        pending = self._uploads.get(upload_id)
        if pending is None:
            response = _not_found()
        else:
            response = await self._chunk(request, upload_id, pending)
        # The SDK retries a chunk whose answer lacks an upload status, even an error.
        response.headers.setdefault(_UPLOAD_STATUS, "final")
        return response

    async def _start(self, request: web.Request) -> web.Response:
        headers = request.headers
        if headers.get("X-Goog-Upload-Protocol") != "resumable":
            raise _invalid("The emulator takes resumable uploads (X-Goog-Upload-Protocol).")
        if headers.get("X-Goog-Upload-Command") != "start":
            raise _invalid("A resumable upload begins with X-Goog-Upload-Command: start.")
        try:
            declared = int(headers.get("X-Goog-Upload-Header-Content-Length", ""))
        except ValueError:
            raise _invalid("X-Goog-Upload-Header-Content-Length is required.") from None
        if declared > MAX_FILE_BYTES:
            raise _invalid(
                f"File size {declared} bytes exceeds the limit of {MAX_FILE_BYTES} bytes."
            )
        body = await request.read()
        spec = (common.json_object(body) if body else {}).get("file") or {}
        name = spec.get("name") or "files/" + new_id("", 12, _LOWER)
        mime = headers.get("X-Goog-Upload-Header-Content-Type", spec.get("mimeType", ""))
        info = {"displayName": spec.get("displayName", ""), "mimeType": mime, "name": name}
        upload_id = new_id("", 32)
        self._uploads[upload_id] = _Upload(self.store.new_path(), declared, info)
        url = f"{request.scheme}://{request.host}{request.path}"
        return web.Response(
            headers={
                "x-goog-upload-url": f"{url}?upload_id={upload_id}&upload_protocol=resumable",
                _UPLOAD_STATUS: "active",
                "x-goog-upload-chunk-granularity": str(8 * 1024 * 1024),
            }
        )

    async def _chunk(self, request: web.Request, upload_id: str, pending: _Upload) -> web.Response:
        command = request.headers.get("X-Goog-Upload-Command", "")
        offset = request.headers.get("X-Goog-Upload-Offset", "")
        if offset != str(pending.received):
            message = f"Upload offset {offset or 'missing'}, expected {pending.received}."
            return _google_error(400, "INVALID_ARGUMENT", message)
        data = await common.read_capped(request, pending.declared - pending.received)
        if data is None:
            message = f"More bytes than the {pending.declared} the upload declared."
            return _google_error(400, "INVALID_ARGUMENT", message)
        with pending.path.open("ab") as handle:
            handle.write(data)
        pending.received += len(data)
        if "finalize" not in command:
            return web.Response(headers={_UPLOAD_STATUS: "active"})
        del self._uploads[upload_id]
        if pending.received != pending.declared:
            pending.path.unlink(missing_ok=True)
            message = f"Upload finalized at {pending.received} of {pending.declared} bytes."
            return _google_error(400, "INVALID_ARGUMENT", message)
        info = {**pending.info, "source": "UPLOADED"}
        stored = self.store.add_file(info.pop("name"), pending.path, info)
        response = common.json_ok({"file": self._file(stored.id, request)})
        response.headers[_UPLOAD_STATUS] = "final"
        return response

    def _file(self, name: str, request: web.Request) -> dict[str, Any]:
        stored = self.store.files[name]
        origin = f"{request.scheme}://{request.host}"
        created = rfc3339(stored.created)
        file = {
            "name": name,
            "displayName": stored.info.get("displayName", ""),
            "mimeType": stored.info.get("mimeType", ""),
            "sizeBytes": str(stored.size),
            "createTime": created,
            "updateTime": created,
            "expirationTime": rfc3339(stored.created + 48 * 3600),
            "uri": f"{origin}/v1beta/{name}",
            "state": "ACTIVE",
            "source": stored.info["source"],
        }
        if stored.info["source"] == "GENERATED":
            file["downloadUri"] = f"{origin}/download/v1beta/{name}:download?alt=media"
        return file

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        name = "files/" + request.match_info["id"]
        if name not in self.store.files:
            return _not_found()
        return common.json_ok(self._file(name, request))

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        stored = self.store.files.pop("files/" + request.match_info["id"], None)
        if stored is None:
            return _not_found()
        stored.path.unlink(missing_ok=True)
        return common.json_ok({})

    async def download(self, request: web.Request) -> web.StreamResponse:
        stored = self.store.files.get("files/" + request.match_info["id"])
        if stored is None:
            return _not_found()
        if stored.info["source"] != "GENERATED":
            raise _invalid("Only generated files can be downloaded; uploaded files cannot.")
        return web.FileResponse(stored.path)


def _record(result: Result) -> dict[str, Any]:
    """One request's outcome in a succeeded batch: its ``response`` or its ``error``."""
    line = result.line
    if result.answer is not None and result.chat is not None:
        return {"response": common.answer_body(_FORMAT, result.chat, result.answer, None).body}
    if result.fault is not None and result.chat is not None:
        return {"error": _status(common.fault_body(_FORMAT, result.fault, result.chat, None))}
    assert line.invalid is not None
    return {"error": _status(line.invalid)}


def _status(rendered: Rendered) -> dict[str, Any]:
    """The online error answer as the ``google.rpc.Status`` a batch result holds: ``code``
    is the gRPC code its ``status`` names (13 for ``INTERNAL``), not the HTTP status the
    online answer went with, and there is no ``status`` string."""
    error = rendered.body["error"]
    status: dict[str, Any] = {"code": GRPC_CODES[error["status"]], "message": error["message"]}
    if error.get("details"):
        status["details"] = error["details"]
    return status
