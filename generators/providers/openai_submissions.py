"""OpenAI Batch: a JSONL file through the Files API, a batch on it, two result files.

The wire, as openai-python's ``files.create`` and ``batches`` speak it: ``POST /v1/files``
(multipart, ``purpose=batch``) with lines ``{custom_id, method: "POST", url:
"/v1/chat/completions", body}``; ``POST /v1/batches {input_file_id, endpoint,
completion_window: "24h", metadata}``; ``GET /v1/batches/{id}`` (``validating``,
``in_progress``, ``finalizing``, ``completed``, ``failed``, ``expired``, ``cancelling``,
``cancelled``); the answers in ``output_file_id`` and the error answers, with the requests an
expiry or a cancel left undone (``batch_expired``, ``batch_cancelled``), in ``error_file_id``
— both may exist, in any order, and every request is in one of them.

Caps: 50,000 requests and 200 MB per file, one model per file. The submission id goes in the
batch's ``metadata``, which ``GET /v1/batches`` lists: :meth:`find` recovers a batch whose
creation answer was lost.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from distillery.generators.http import json_body
from distillery.generators.providers.base import HttpCall
from distillery.generators.providers.submission_base import (
    HttpSubmissionApi,
    Listing,
    last_id,
    parse_line,
)
from distillery.generators.providers.submission_http import LinesFile
from distillery.generators.providers.submissions import (
    FindHints,
    SubmissionCounts,
    SubmissionResult,
    SubmissionState,
    SubmissionStatus,
)

ENDPOINT = "/v1/chat/completions"
#: The metadata key the submission id is written under.
METADATA_KEY = "distillery_submission"
#: 50,000 requests; 200 MB, counted in decimal megabytes so the file is under the cap
#: whichever megabyte OpenAI means.
_STATES = {
    "validating": SubmissionState.VALIDATING,
    "in_progress": SubmissionState.IN_PROGRESS,
    "finalizing": SubmissionState.FINALIZING,
    "completed": SubmissionState.ENDED,
    "failed": SubmissionState.FAILED,
    "expired": SubmissionState.EXPIRED,
    "cancelling": SubmissionState.CANCELLING,
    "cancelled": SubmissionState.CANCELLED,
}
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
#: Requests a batch never ran, by the error code of their line.
_UNDONE = {"batch_expired": "expired", "batch_cancelled": "canceled"}
#: Validation errors shown in a failed batch's status, at most.
_SHOWN_ERRORS = 5


class OpenAISubmissions(HttpSubmissionApi):
    listing = Listing("limit", "after", "data", last_id)

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    @property
    def base(self) -> str:
        return self.teacher.base_url

    @property
    def batches(self) -> str:
        return f"{self.base}/batches"

    def line(self, custom_id: str, call: HttpCall) -> bytes:
        record = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": call.body}
        return json_body(record) + b"\n"

    async def upload(self, submission_id: str, lines_path: Path) -> str | None:
        lines = LinesFile.requests(lines_path)
        boundary = "distillery-" + secrets.token_hex(12)
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", submission_id) + ".jsonl"
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        uploaded = await self.http.json(
            "upload batch file",
            "POST",
            f"{self.base}/files",
            lambda: lines.wrapped(head, tail),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        return str(uploaded["id"])

    async def _create(
        self, submission_id: str, lines: LinesFile, file_id: str | None, model: str
    ) -> str:
        # ``model`` is in every line's body: OpenAI takes one model per file, which a
        # submission (one teacher's requests) always is.
        if file_id is None:
            raise ValueError("an OpenAI batch runs on an uploaded file: upload() it first")
        body = {
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": {METADATA_KEY: submission_id},
        }
        created = await self.http.json(
            "create batch", "POST", self.batches, json_body(body), may_create=True
        )
        return str(created["id"])

    def _created_at(self, batch: dict[str, Any]) -> float | None:
        created = batch.get("created_at")
        return float(created) if isinstance(created, int | float) else None

    def _is_for(self, batch: dict[str, Any], submission_id: str, hints: FindHints) -> bool:
        metadata = batch.get("metadata")
        return isinstance(metadata, dict) and metadata.get(METADATA_KEY) == submission_id

    def _status_of(self, batch: dict[str, Any]) -> SubmissionStatus:
        return _status(batch)

    async def results(self, batch_id: str) -> AsyncGenerator[SubmissionResult]:
        batch = await self._ended(batch_id)
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            if not file_id:
                continue
            url = f"{self.base}/files/{quote(str(file_id))}/content"
            async for raw in self.http.lines(f"read {key} of {batch_id}", url):
                yield self._result(parse_line(f"batch {batch_id}", raw))

    def _result(self, record: dict[str, Any]) -> SubmissionResult:
        """One line of an output or error file: ``{custom_id, response: {status_code,
        request_id, body}, error}``."""
        custom_id = str(record.get("custom_id"))
        response = record.get("response")
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            request_id = response.get("request_id") or None
            body = response.get("body")
            if 200 <= status < 300:
                headers = {"x-request-id": str(request_id)} if request_id else {}
                return self.answered(custom_id, body, headers, "usage")
            return self.refused(custom_id, status, json_body(body), request_id)
        error = record.get("error")
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "errored")
        message = str(error.get("message") or "") or None
        undone = _UNDONE.get(code)
        return SubmissionResult(custom_id, None, undone or code, message, retryable=bool(undone))

    async def cancel(self, batch_id: str) -> None:
        await self._cancel(batch_id, self._batch_url(batch_id) + "/cancel")

    async def delete_file(self, file_id: str) -> None:
        await self._delete(f"{self.base}/files/{quote(file_id)}")


def _status(batch: dict[str, Any]) -> SubmissionStatus:
    raw = str(batch.get("status"))
    ended = raw in _ENDED
    counts = batch.get("request_counts") or {}
    total, done, failed = (int(counts.get(k) or 0) for k in ("total", "completed", "failed"))
    error = None
    if raw == "failed":
        errors = (batch.get("errors") or {}).get("data") or []
        shown = [_describe(e) for e in errors[:_SHOWN_ERRORS] if isinstance(e, dict)]
        more = f" (and {len(errors) - _SHOWN_ERRORS} more)" if len(errors) > _SHOWN_ERRORS else ""
        error = "; ".join(shown) + more if shown else "the batch failed validation"
    return SubmissionStatus(
        provider_batch_id=str(batch.get("id")),
        state=_STATES.get(raw, SubmissionState.IN_PROGRESS),
        raw_state=raw,
        counts=SubmissionCounts(
            total=total,
            succeeded=done,
            errored=failed,
            processing=0 if ended else max(total - done - failed, 0),
        ),
        ended=ended,
        error=error,
    )


def _describe(error: dict[str, Any]) -> str:
    """One validation error: ``line 3: duplicate_custom_id: ...``."""
    where = f"line {error['line']}: " if error.get("line") is not None else ""
    return f"{where}{error.get('code') or 'error'}: {error.get('message') or ''}".rstrip(": ")
