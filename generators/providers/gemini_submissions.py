"""Gemini batch mode: requests inline or in a File API upload, results inline or in a file.

The wire, as google-genai's ``batches`` and ``files`` speak it on the Gemini API:
``POST /{version}/models/{model}:batchGenerateContent {batch: {displayName, inputConfig}}``,
``inputConfig`` holding ``requests: {requests: [{request, metadata: {key}}]}`` (the whole
call under 20 MB) or ``fileName`` of a JSONL of ``{key, request}`` lines (up to 2 GB)
uploaded with the resumable protocol (``POST /upload/{version}/files``, then 8 MiB chunks);
the answer is the operation ``batches/{id}``, ``GET`` it for ``metadata.state``
(``BATCH_STATE_PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``CANCELLED``,
``EXPIRED``) and ``batchStats``; once done, ``metadata.output`` holds ``inlinedResponses``
or a ``responsesFile`` (``GET /{version}/files/{id}:download?alt=media``): per request a
``response`` (a ``GenerateContentResponse``) or an ``error`` (a ``google.rpc.Status``, whose
``code`` is a gRPC code, not an HTTP status), in input order. An expired or cancelled batch
has no results to retrieve (Gemini's batch guide): its requests are to be sent again.

Inline or file: inline saves the upload, but its responses come back inside one JSON
object, read whole; so requests go inline only while the call is under 20 MB *and* there
are at most :data:`INLINE_MAX_REQUESTS` of them, which bounds that object (a thousand
answers). Everything bigger goes through the File API and comes back as a file, streamed.

The submission id is the batch's ``displayName`` (``distillery-<id>``), which the
operations list carries: :meth:`~GeminiSubmissions.find` recovers a batch by it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import orjson

from distillery.generators.http import json_body
from distillery.generators.providers.base import HttpCall
from distillery.generators.providers.gemini import DEFAULT_API_VERSION
from distillery.generators.providers.submission_base import (
    HttpSubmissionApi,
    Listing,
    parse_line,
    rfc3339_seconds,
)
from distillery.generators.providers.submission_http import LinesFile, on_base
from distillery.generators.providers.submissions import (
    FindHints,
    SubmissionCounts,
    SubmissionError,
    SubmissionResult,
    SubmissionState,
    SubmissionStatus,
)

#: 2 GB per input file (decimal, under the API's 2 GiB). Gemini documents no request cap;
#: ours keeps a submission's fate (an expired batch returns nothing) to 100,000 requests.
#: The inline cap on the whole create call (Gemini: "under 20 MB").
INLINE_MAX_BYTES = 20_000_000
#: Requests inline at most: their answers come back in one JSON object read whole.
INLINE_MAX_REQUESTS = 1_000
#: The resumable upload's chunk, as google-genai sends it.
UPLOAD_CHUNK = 8 * 1024 * 1024
DISPLAY_PREFIX = "distillery-"
_STATES = {
    "BATCH_STATE_PENDING": SubmissionState.VALIDATING,
    "BATCH_STATE_RUNNING": SubmissionState.IN_PROGRESS,
    "BATCH_STATE_SUCCEEDED": SubmissionState.ENDED,
    "BATCH_STATE_FAILED": SubmissionState.FAILED,
    "BATCH_STATE_CANCELLED": SubmissionState.CANCELLED,
    "BATCH_STATE_EXPIRED": SubmissionState.EXPIRED,
}
_ENDED = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)
#: google.rpc.Code: (name, the HTTP status Google's REST APIs map it to).
_GRPC = {
    1: ("CANCELLED", 499),
    2: ("UNKNOWN", 500),
    3: ("INVALID_ARGUMENT", 400),
    4: ("DEADLINE_EXCEEDED", 504),
    5: ("NOT_FOUND", 404),
    6: ("ALREADY_EXISTS", 409),
    7: ("PERMISSION_DENIED", 403),
    8: ("RESOURCE_EXHAUSTED", 429),
    9: ("FAILED_PRECONDITION", 400),
    10: ("ABORTED", 409),
    11: ("OUT_OF_RANGE", 400),
    12: ("UNIMPLEMENTED", 501),
    13: ("INTERNAL", 500),
    14: ("UNAVAILABLE", 503),
    15: ("DATA_LOSS", 500),
    16: ("UNAUTHENTICATED", 401),
}


def display_name(submission_id: str) -> str:
    return DISPLAY_PREFIX + submission_id


class GeminiSubmissions(HttpSubmissionApi):
    listing = Listing(
        "pageSize", "pageToken", "operations", lambda page, items: page.get("nextPageToken")
    )

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    @property
    def api(self) -> str:
        return f"{self.teacher.base_url}/{self.teacher.api_version or DEFAULT_API_VERSION}"

    @property
    def batches(self) -> str:
        return f"{self.api}/batches"

    def line(self, custom_id: str, call: HttpCall) -> bytes:
        return json_body({"key": custom_id, "request": call.body}) + b"\n"

    async def upload(self, submission_id: str, lines_path: Path) -> str | None:
        lines = LinesFile.requests(lines_path)
        if _inline_body(submission_id, lines) is not None:
            return None
        return await self._upload(submission_id, lines)

    async def _upload(self, submission_id: str, lines: LinesFile) -> str:
        """The resumable upload: a start call answered with the upload URL, then the file in
        chunks, the last one finalizing. A chunk whose answer is lost (or a 5xx) is not sent
        again — the server may hold it already, and the offsets would disagree: the upload
        fails, retryable, and the next one starts from the first byte."""
        size = lines.file_size
        start = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            "content-type": "application/json",
        }
        spec = {
            "file": {"displayName": display_name(submission_id), "mimeType": "application/jsonl"}
        }
        version = self.teacher.api_version or DEFAULT_API_VERSION
        url = f"{self.teacher.base_url}/upload/{version}/files"
        started = await self.http.call(
            "start file upload", "POST", url, json_body(spec), headers=start
        )
        target = started.headers.get("x-goog-upload-url")
        if not target:
            raise SubmissionError("start file upload: no x-goog-upload-url answered", "malformed")
        target = on_base(target, self.teacher.base_url)
        offset = 0
        with lines.path.open("rb") as handle:
            while True:
                chunk = handle.read(UPLOAD_CHUNK)
                last = offset + len(chunk) >= size
                headers = {
                    "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                    "X-Goog-Upload-Offset": str(offset),
                    "content-type": "application/octet-stream",
                }
                try:  # may_create: a chunk the server may hold already is not resent
                    answer = await self.http.call(
                        "upload file chunk", "POST", target, chunk, headers=headers, may_create=True
                    )
                except SubmissionError as exc:
                    raise SubmissionError(
                        f"{exc} (at byte {offset}: the upload must start again)",
                        exc.error_class,
                        exc.status,
                        retryable=exc.retryable,
                    ) from exc
                offset += len(chunk)
                if last:
                    break
        try:
            return str(orjson.loads(answer.content)["file"]["name"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            message = f"finish file upload: no file name answered ({exc})"
            raise SubmissionError(message, "malformed") from exc

    async def _create(
        self, submission_id: str, lines: LinesFile, file_id: str | None, model: str
    ) -> str:
        if file_id is None:
            body = _inline_body(submission_id, lines)
            if body is None:
                raise ValueError(
                    f"{lines.path}: too large to send inline ({lines.count} requests, "
                    f"{lines.file_size:,} bytes): upload() it first"
                )
        else:
            config = {"fileName": file_id}
            body = json_body(
                {"batch": {"displayName": display_name(submission_id), "inputConfig": config}}
            )
        url = f"{self.api}/models/{model}:batchGenerateContent"
        created = await self.http.json("create batch", "POST", url, body, may_create=True)
        return str(created["name"])

    def _created_at(self, batch: dict[str, Any]) -> float | None:
        return rfc3339_seconds((batch.get("metadata") or {}).get("createTime"))

    def _is_for(self, batch: dict[str, Any], submission_id: str, hints: FindHints) -> bool:
        return (batch.get("metadata") or {}).get("displayName") == display_name(submission_id)

    def _batch_id(self, batch: dict[str, Any]) -> str:
        return str(batch["name"])

    def _batch_url(self, batch_id: str) -> str:
        return f"{self.api}/{batch_id}"  # the name: batches/<id>

    def _status_of(self, batch: dict[str, Any]) -> SubmissionStatus:
        return _status(batch)

    async def results(self, batch_id: str) -> AsyncGenerator[SubmissionResult]:
        operation = await self._ended(batch_id)
        output = (operation.get("metadata") or {}).get("output") or operation.get("response")
        output = output if isinstance(output, dict) else {}
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        if isinstance(inlined, list):
            for item in inlined:
                item = item if isinstance(item, dict) else {}
                yield self._result(batch_id, (item.get("metadata") or {}).get("key"), item)
            return
        file_name = output.get("responsesFile")
        if isinstance(file_name, str):
            url = f"{self.api}/{file_name}:download?alt=media"
            async for raw in self.http.lines(f"read results of {batch_id}", url):
                record = parse_line(f"batch {batch_id}", raw)
                yield self._result(batch_id, record.get("key"), record)

    def _result(self, batch_id: str, key: object, record: dict[str, Any]) -> SubmissionResult:
        """A response or an error (inline, or one line of the responses file), by the key
        its request was sent with."""
        if key is None:
            raise SubmissionError(f"batch {batch_id}: a response without its key", "malformed")
        key = str(key)
        response = record.get("response")
        if isinstance(response, dict):
            return self.answered(key, response, {}, "usageMetadata")
        error = record.get("error")
        error = error if isinstance(error, dict) else {}
        code = int(error.get("code") or 2)
        name, status = _GRPC.get(code, ("UNKNOWN", 500))
        if code >= 100:  # an HTTP status where a gRPC code belongs: read it as one
            name, status = str(error.get("status") or f"http_{code}"), code
        envelope = {"error": {**error, "code": status, "status": name}}
        return self.refused(key, status, json_body(envelope))

    async def cancel(self, batch_id: str) -> None:
        await self._cancel(batch_id, f"{self.api}/{batch_id}:cancel")

    async def delete_file(self, file_id: str) -> None:
        await self._delete(f"{self.api}/{file_id}")


def _inline_body(submission_id: str, lines: LinesFile) -> bytes | None:
    """The create call with the requests inline, or None if they are too many or too big
    for it (then they go as a file)."""
    if lines.count > INLINE_MAX_REQUESTS or lines.file_size >= INLINE_MAX_BYTES:
        return None
    requests = []
    with lines.path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
                requests.append({"request": item["request"], "metadata": {"key": item["key"]}})
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{lines.path}: line {number} is not a request line") from None
    config = {"requests": {"requests": requests}}
    body = json_body({"batch": {"displayName": display_name(submission_id), "inputConfig": config}})
    return body if len(body) < INLINE_MAX_BYTES else None


def _status(operation: dict[str, Any]) -> SubmissionStatus:
    metadata = operation.get("metadata") or {}
    raw = str(metadata.get("state"))
    stats = metadata.get("batchStats") or {}
    total, succeeded, failed, pending = (
        int(stats.get(k) or 0)
        for k in (
            "requestCount",
            "successfulRequestCount",
            "failedRequestCount",
            "pendingRequestCount",
        )
    )
    ended = bool(operation.get("done")) or raw in _ENDED
    error = operation.get("error")
    state = _STATES.get(raw, SubmissionState.IN_PROGRESS)
    return SubmissionStatus(
        provider_batch_id=str(operation.get("name") or metadata.get("name")),
        state=state,
        raw_state=raw,
        counts=SubmissionCounts(
            total=total, succeeded=succeeded, errored=failed, processing=0 if ended else pending
        ),
        ended=ended,
        error=str(error.get("message") or error) if isinstance(error, dict) else None,
    )
