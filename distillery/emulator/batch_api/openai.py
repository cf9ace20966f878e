"""OpenAI Batch: the Files API and ``/v1/batches``, as the official ``openai`` SDK calls them.

A client uploads a JSONL file (``POST /v1/files``, ``purpose=batch``) whose lines are
``{custom_id, method, url, body}``, creates a batch on it (``POST /v1/batches``), polls
``GET /v1/batches/{id}`` and downloads ``output_file_id`` (answers) and ``error_file_id``
(error responses, and the lines a cancel or expiry left undone, with ``batch_cancelled`` or
``batch_expired``). Every line lands in exactly one of the two files, in completion order, and
``request_counts`` counts them: ``completed`` the output's, ``failed`` the error file's.

A file that breaks the batch rules (not JSON, a missing field, a URL other than the endpoint,
two models, a repeated ``custom_id``, over 50,000 lines) fails the batch after validating, with
one ``errors`` entry per problem and its line number, as the real API reports it. A body the
chat endpoint would refuse (no ``messages``, say) is not a file problem: that line gets the
endpoint's 400 in the error file. Error codes follow OpenAI's documented ones; the wording of
the file-size and line-field messages is the emulator's.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from distillery.emulator.batch_api import common
from distillery.emulator.batch_api.common import Context, Handler, Parsed
from distillery.emulator.batch_api.store import TERMINAL, Job, Outcome, Phase, Spool, new_id
from distillery.emulator.formats.base import ApiError, Problem
from distillery.emulator.formats.openai import OpenAIFormat

#: The Batch API's caps per input file.
MAX_LINES = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024
#: The Files API's cap for any other purpose.
MAX_FILE_BYTES = 512 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: At most this many problems are reported for one file (the rest are alike).
MAX_PROBLEMS = 100
_REQUEST_ID = "x-request-id"
_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
_CANCELLED = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}
_FORMAT = OpenAIFormat()


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, Problem.INVALID_REQUEST, message, param=param, code=code)


def _missing(param: str) -> ApiError:
    message = f"Missing required parameter: '{param}'."
    return _invalid(message, param, "missing_required_parameter")


def _not_found(message: str) -> ApiError:
    return ApiError(404, Problem.INVALID_REQUEST, message, param="id")


def _problem(code: str, message: str, line: int | None = None, param: str | None = None) -> Any:
    return {"code": code, "message": message, "param": param, "line": line}


class OpenAIBatches:
    """The routes, over one :class:`Context`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def add_routes(self, app: web.Application) -> None:
        """Register the routes but the batch list, which Gemini's ``/v1`` shares (see
        :attr:`list_route`). Ids keep their prefix in the pattern, so Gemini's routes on the
        same paths, registered after these, get the other ids."""
        guard = self.ctx.guard
        router = app.router
        file, batch = "/v1/files/{id:file-[^/]+}", "/v1/batches/{id:batch_[^/]+}"
        router.add_post("/v1/files", guard(_FORMAT, self.upload))
        router.add_get(file, guard(_FORMAT, self.get_file))
        router.add_delete(file, guard(_FORMAT, self.delete_file))
        router.add_get(file + "/content", guard(_FORMAT, self.content))
        router.add_post("/v1/batches", guard(_FORMAT, self.create))
        router.add_get(batch, guard(_FORMAT, self.get))
        router.add_post(batch + "/cancel", guard(_FORMAT, self.cancel))

    @property
    def list_route(self) -> Handler:
        """``GET /v1/batches``, guarded."""
        return self.ctx.guard(_FORMAT, self.list)

    # Files

    async def upload(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            raise _invalid("Expected a multipart/form-data body with 'file' and 'purpose'.")
        purpose: str | None = None
        received: tuple[Path, str] | None = None
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = await part.text()
            elif part.name == "file":
                cap = MAX_BATCH_BYTES if purpose == "batch" else MAX_FILE_BYTES
                received = await self._receive(part, cap), part.filename or "file"
        if received is None:
            raise _missing("file")
        path, filename = received
        if purpose not in PURPOSES:
            path.unlink()
            if purpose is None:
                raise _missing("purpose")
            raise _invalid(f"Invalid value for purpose: {purpose!r}.", "purpose")
        if purpose == "batch" and path.stat().st_size > MAX_BATCH_BYTES:
            path.unlink()  # the purpose came after the file: its cap was the general one
            raise _too_large(MAX_BATCH_BYTES)
        stored = self.store.add_file(
            new_id("file-", 22), path, {"filename": filename, "purpose": purpose}
        )
        return common.json_ok(self._file(stored.id))

    async def _receive(self, part: BodyPartReader, cap: int) -> Path:
        """Stream the part to disk; over ``cap`` bytes, the provider's error."""
        path = self.store.new_path()
        size = 0
        with path.open("wb") as handle:
            while chunk := await part.read_chunk():
                size += len(chunk)
                if size > cap:
                    handle.close()
                    path.unlink()
                    raise _too_large(cap)
                handle.write(chunk)
        return path

    def _file(self, file_id: str) -> dict[str, Any]:
        stored = self.store.files.get(file_id)
        if stored is None or not file_id.startswith("file-"):
            raise _not_found(f"No such File object: {file_id}")
        return {
            "id": stored.id,
            "object": "file",
            "bytes": stored.size,
            "created_at": int(stored.created),
            "filename": stored.info["filename"],
            "purpose": stored.info["purpose"],
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        return common.json_ok(self._file(request.match_info["id"]))

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        self._file(file_id)
        stored = self.store.files.pop(file_id)
        stored.path.unlink(missing_ok=True)
        return common.json_ok({"id": file_id, "object": "file", "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        self._file(file_id)
        return web.FileResponse(self.store.files[file_id].path)

    # Batches

    async def create(self, request: web.Request) -> web.StreamResponse:
        data = common.json_object(await request.read())
        for param in ("input_file_id", "endpoint", "completion_window"):
            if param not in data:
                raise _missing(param)
        if data["completion_window"] != "24h":
            raise _invalid(
                f"Invalid value: {json.dumps(data['completion_window'])}. Supported values "
                "are: '24h'.",
                "completion_window",
                "invalid_value",
            )
        if data["endpoint"] != ENDPOINT:
            raise _invalid(
                f"Invalid value: {json.dumps(data['endpoint'])}. The emulator serves "
                f"'{ENDPOINT}' only.",
                "endpoint",
                "invalid_value",
            )
        metadata = data.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            raise _invalid("Invalid 'metadata': at most 16 string pairs.", "metadata")
        file_id = data["input_file_id"]
        stored = self.store.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None or stored.info.get("purpose") != "batch":
            raise _invalid(
                f"Invalid 'input_file_id': {json.dumps(file_id)}: no file with purpose "
                "'batch' has this id.",
                "input_file_id",
            )
        (parsed, problems, model), spool = await self.ctx.spooled(
            partial(self._validate, stored.path, request)
        )
        lines = [self.ctx.line(_FORMAT, key, item, request) for key, item in parsed]
        info = {"input_file_id": file_id, "metadata": metadata, "model": model}
        read = self.ctx.reader(_FORMAT, request)
        job = self.store.add_job(new_id("batch_", 24), lines, info, problems, spool.path, read)
        return common.json_ok(self._batch(job))

    def _validate(
        self, path: Path, request: web.Request, spool: Spool
    ) -> tuple[list[Parsed], list[Any], str]:
        """The file's lines parsed, or the problems that fail the batch, and its model."""
        problems: list[Any] = []
        parsed: list[Parsed] = []
        seen: set[str] = set()
        model = ""
        if path.stat().st_size > MAX_BATCH_BYTES:
            return [], [_problem("file_too_large", _too_large(MAX_BATCH_BYTES).message)], model
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                if len(problems) >= MAX_PROBLEMS:
                    break
                if not raw.strip():
                    continue
                if len(parsed) + len(problems) >= MAX_LINES:
                    message = f"The batch input file has more than {MAX_LINES:,} requests."
                    return [], [_problem("too_many_tasks", message)], model
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = None
                if not isinstance(line, dict):
                    message = "This line is not parseable as valid JSON."
                    problems.append(_problem("invalid_json_line", message, number))
                    continue
                problem = _line_problem(line, number, seen)
                body = line.get("body")
                if problem is None and isinstance(body, dict):
                    line_model = body.get("model")
                    if isinstance(line_model, str) and line_model:
                        if not model:
                            model = line_model
                        elif line_model != model:
                            problem = _problem(
                                "model_mismatch",
                                f"The model {line_model!r} of this request is not the batch's "
                                f"model {model!r}: a batch file holds one model.",
                                number,
                                "body.model",
                            )
                if problem is not None:
                    problems.append(problem)
                    continue
                custom_id = line["custom_id"]
                seen.add(custom_id)
                parsed.append((custom_id, self.ctx.parse(_FORMAT, request, body, spool)))
        if not parsed and not problems:
            problems.append(_problem("empty_file", "The batch input file is empty."))
        return ([] if problems else parsed), problems, model

    def _batch(self, job: Job) -> dict[str, Any]:
        now = self.store.clock()
        phase = job.phase(now)
        succeeded, failed = job.counts(now)
        if job.settled:  # undone lines are in the error file now
            failed = len(job.lines) - succeeded
        failed_validation = phase is Phase.FAILED
        cancelled = job.cancelled_at

        def at(moment: float | None, reached: bool = True) -> int | None:
            return int(moment) if moment is not None and reached and now >= moment else None

        ran = not failed_validation and (cancelled is None or cancelled >= job.started)
        finalized = ran and (cancelled is None or cancelled >= job.finalizing)
        payload: dict[str, Any] = {
            "id": job.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": {"object": "list", "data": job.problems} if failed_validation else None,
            "input_file_id": job.info["input_file_id"],
            "completion_window": "24h",
            "status": phase.value,
            "output_file_id": job.info.get("output_file_id"),
            "error_file_id": job.info.get("error_file_id"),
            "created_at": int(job.created),
            "in_progress_at": at(job.started, ran),
            "expires_at": int(job.deadline),
            "finalizing_at": at(job.finalizing, finalized),
            "completed_at": at(job.deadline, phase is Phase.COMPLETED),
            "failed_at": at(job.started, failed_validation),
            "expired_at": at(job.deadline, phase is Phase.EXPIRED),
            "cancelling_at": at(cancelled),
            "cancelled_at": at(job.ended, phase is Phase.CANCELLED),
            "request_counts": {
                "total": 0 if failed_validation else len(job.lines),
                "completed": succeeded,
                "failed": failed,
            },
            "metadata": job.info["metadata"],
            "model": job.info["model"] or None,
        }
        if "usage" in job.info:
            payload["usage"] = job.info["usage"]
        return payload

    def _write(self, job: Job, now: float) -> None:
        """The output and error files of an ended job; runs once, off the event loop."""
        store = self.store
        paths = {"output_file_id": store.new_path(), "error_file_id": store.new_path()}
        written = dict.fromkeys(paths, 0)
        usage = {"input": 0, "cached": 0, "output": 0, "reasoning": 0}
        with paths["output_file_id"].open("wb") as out, paths["error_file_id"].open("wb") as err:
            for result in store.results(job, now):
                line = result.line
                record: dict[str, Any] = {
                    "id": new_id("batch_req_", 32),
                    "custom_id": line.custom_id,
                    "response": None,
                    "error": None,
                }
                target = "error_file_id"
                if result.outcome is Outcome.EXPIRED:
                    record["error"] = _EXPIRED
                elif result.outcome is Outcome.CANCELED:
                    record["error"] = _CANCELLED
                else:
                    if result.answer is not None and result.chat is not None:
                        rendered = common.answer_body(
                            _FORMAT, result.chat, result.answer, _REQUEST_ID
                        )
                        target = "output_file_id"
                        _add_usage(usage, rendered.body["usage"])
                    elif result.fault is not None and result.chat is not None:
                        rendered = common.fault_body(
                            _FORMAT, result.fault, result.chat, _REQUEST_ID
                        )
                    else:
                        assert line.invalid is not None
                        rendered = line.invalid
                    record["response"] = {
                        "status_code": rendered.status,
                        "request_id": rendered.request_id,
                        "body": rendered.body,
                    }
                (out if target == "output_file_id" else err).write(common.jsonl_line(record))
                written[target] += 1
        for key, path in paths.items():
            if written[key]:
                name = "batch_output.jsonl" if key == "output_file_id" else "batch_errors.jsonl"
                file_id = new_id("file-", 22)
                # Registered from this thread: the loop only looks files up by id meanwhile.
                store.add_file(file_id, path, {"filename": name, "purpose": "batch_output"})
                job.info[key] = file_id
            else:
                path.unlink()
        job.info["usage"] = {
            "input_tokens": usage["input"],
            "input_tokens_details": {"cached_tokens": usage["cached"]},
            "output_tokens": usage["output"],
            "output_tokens_details": {"reasoning_tokens": usage["reasoning"]},
            "total_tokens": usage["input"] + usage["output"],
        }

    async def _job(self, request: web.Request) -> Job:
        job_id = request.match_info["id"]
        job = await self.ctx.job(job_id, self._write) if job_id.startswith("batch_") else None
        if job is None:
            raise _not_found(f"No batch found with id '{job_id}'.")
        return job

    async def get(self, request: web.Request) -> web.StreamResponse:
        return common.json_ok(self._batch(await self._job(request)))

    async def list(self, request: web.Request) -> web.StreamResponse:
        limit = common.page_size(request.query.get("limit"), 20, 100)
        if limit is None:
            raise _invalid("Invalid 'limit': expected an integer between 1 and 100.", "limit")
        jobs, more = common.page(
            self.store.newest_first("batch_"), request.query.get("after"), limit
        )
        for job in jobs:
            self.store.settle(job, self._write)
        data = [self._batch(job) for job in jobs]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return common.json_ok(
            {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        now = self.store.clock()
        phase = job.scheduled(now)
        if phase in TERMINAL and phase is not Phase.CANCELLED:
            raise ApiError(
                409,
                Problem.INVALID_REQUEST,
                f"Cannot cancel a batch with status '{phase.value}'.",
            )
        if job.cancelled_at is None:
            job.cancelled_at = now
        self.store.settle(job, self._write)
        return common.json_ok(self._batch(job))


def _line_problem(line: dict[str, Any], number: int, seen: set[str]) -> Any:
    """Why a parsed line breaks the batch rules, or None."""
    custom_id = line.get("custom_id")
    for param in ("custom_id", "method", "url", "body"):
        if param not in line:
            missing = _missing(param)
            return _problem(missing.code or "", missing.message, number, param)
    if not isinstance(custom_id, str) or not custom_id:
        return _problem(
            "invalid_value", "custom_id must be a non-empty string.", number, "custom_id"
        )
    if line["method"] != "POST":
        return _problem("invalid_value", "method must be 'POST'.", number, "method")
    if line["url"] != ENDPOINT:
        message = "The URL provided for this request does not match the batch endpoint."
        return _problem("url_mismatch", message, number, "url")
    if not isinstance(line["body"], dict):
        return _problem("invalid_value", "body must be a JSON object.", number, "body")
    if custom_id in seen:
        message = (
            "The custom_id for this request is a duplicate of another request. The custom_id "
            "parameter must be unique for each request in a batch."
        )
        return _problem("duplicate_custom_id", message, number, "custom_id")
    return None


def _too_large(cap: int) -> ApiError:
    return _invalid(
        f"File is too large: batch input files are at most {cap // (1024 * 1024)} MB.",
        "file",
        "file_too_large",
    )


def _add_usage(totals: dict[str, int], usage: dict[str, Any]) -> None:
    totals["input"] += usage["prompt_tokens"]
    totals["output"] += usage["completion_tokens"]
    totals["cached"] += usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    totals["reasoning"] += usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0)
