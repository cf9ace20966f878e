"""Anthropic Message Batches: the requests inline, results as JSONL at ``results_url``.

The wire, as anthropic-sdk-python's ``messages.batches`` speaks it: ``POST
/v1/messages/batches {requests: [{custom_id, params}]}`` (``params`` a Messages request, up
to 100,000 of them or 256 MB); ``GET /v1/messages/batches/{id}`` with ``processing_status``
(``in_progress``, ``canceling``, ``ended``) and ``request_counts`` (every request
``processing`` until the end); once ended, ``results_url`` streams one ``{custom_id,
result}`` per request, ``result.type`` ``succeeded`` (the ``message``), ``errored`` (the
error response), ``canceled`` or ``expired``, in any order.

**No adoption by id.** A message batch has no metadata, display name or any other field a
client sets (``BatchCreateParams`` is ``requests`` plus the ``user_profile_id`` and
``workspace_id`` headers; ``MessageBatch`` has nothing of the caller's), and results, which
carry the custom ids, exist only once the batch has ended. A batch whose creation answer was
lost can only be recognised by when it was made and how many requests it holds, and only
the caller knows which batches of that size are already its own: so ``create`` never
retries a lost answer by itself (it raises ``SubmissionError`` with ``maybe_created``), and
``find`` needs the caller's ``FindHints`` (time, size, batches it holds) and raises
``AmbiguousSubmission`` rather than choose between two batches that fit. Two submissions of
one run are often the same size (cut at 100,000 requests): ``exclude`` is what tells them
apart.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from distillery.generators.http import json_body
from distillery.generators.providers.anthropic import API_VERSION
from distillery.generators.providers.base import HttpCall
from distillery.generators.providers.submission_base import (
    HttpSubmissionApi,
    Listing,
    last_id,
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

#: 100,000 requests; 256 MB of lines in decimal megabytes, which leaves the JSON around them
#: well under the API's 256 MiB.
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")
#: The HTTP status each error type comes with online (Anthropic's errors page): a result's
#: error carries the type only, and ``classify_error`` judges by status.
_STATUS_OF = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicSubmissions(HttpSubmissionApi):
    finds_by_id = False
    listing = Listing("limit", "after_id", "data", last_id)

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"anthropic-version": API_VERSION, "x-api-key": api_key}

    @property
    def batches(self) -> str:
        return f"{self.teacher.base_url}/v1/messages/batches"

    def line(self, custom_id: str, call: HttpCall) -> bytes:
        if not _CUSTOM_ID.match(custom_id):
            raise ValueError(
                f"custom_id {custom_id!r}: Anthropic takes 1 to 64 letters, digits, _ and -"
            )
        return json_body({"custom_id": custom_id, "params": call.body}) + b"\n"

    async def upload(self, submission_id: str, lines_path: Path) -> str | None:
        return None  # the requests go inline, in create()

    async def _create(
        self, submission_id: str, lines: LinesFile, file_id: str | None, model: str
    ) -> str:
        created = await self.http.json(
            "create message batch",
            "POST",
            self.batches,
            lambda: lines.joined(b'{"requests":[', b"]}"),
            may_create=True,
        )
        return str(created["id"])

    def _created_at(self, batch: dict[str, Any]) -> float | None:
        return rfc3339_seconds(batch.get("created_at"))

    def _is_for(self, batch: dict[str, Any], submission_id: str, hints: FindHints) -> bool:
        """A batch of the submission's size: no more can be told (see the module
        docstring); :meth:`find` refuses to choose between two."""
        counts = batch.get("request_counts") or {}
        return sum(int(counts.get(name) or 0) for name in _COUNTS) == hints.request_count

    def _status_of(self, batch: dict[str, Any]) -> SubmissionStatus:
        return _status(batch)

    async def results(self, batch_id: str) -> AsyncGenerator[SubmissionResult]:
        batch = await self._ended(batch_id)
        results_url = batch.get("results_url")
        if not isinstance(results_url, str):
            raise SubmissionError(
                f"message batch {batch_id} ended without a results_url", "malformed"
            )
        url = on_base(results_url, self.teacher.base_url)
        async for raw in self.http.lines(f"read results of {batch_id}", url):
            yield self._result(parse_line(f"message batch {batch_id}", raw))

    def _result(self, record: dict[str, Any]) -> SubmissionResult:
        """One results line: ``{custom_id, result: {type, message | error}}``."""
        custom_id = str(record.get("custom_id"))
        result = record.get("result")
        result = result if isinstance(result, dict) else {}
        kind = str(result.get("type"))
        if kind == "succeeded":
            return self.answered(custom_id, result.get("message"), {}, "usage")
        if kind == "errored":
            error = result.get("error")
            error = error if isinstance(error, dict) else {}
            inner = error.get("error")
            error_type = str(inner.get("type")) if isinstance(inner, dict) else ""
            status = _STATUS_OF.get(error_type, 500)
            return self.refused(custom_id, status, json_body(error), error.get("request_id"))
        if kind in ("canceled", "expired"):
            return SubmissionResult(custom_id, None, kind, retryable=True)
        return SubmissionResult(custom_id, None, "errored", f"unknown result type {kind!r}")

    async def cancel(self, batch_id: str) -> None:
        await self._cancel(batch_id, self._batch_url(batch_id) + "/cancel")

    async def delete_file(self, file_id: str) -> None:
        """Nothing to delete: message batches take no files."""


def _status(batch: dict[str, Any]) -> SubmissionStatus:
    raw = str(batch.get("processing_status"))
    counts = batch.get("request_counts") or {}
    tally = {name: int(counts.get(name) or 0) for name in _COUNTS}
    ended = raw == "ended"
    if not ended:
        state = SubmissionState.CANCELLING if raw == "canceling" else SubmissionState.IN_PROGRESS
    elif batch.get("cancel_initiated_at"):
        state = SubmissionState.CANCELLED
    elif tally["expired"]:
        state = SubmissionState.EXPIRED
    else:
        state = SubmissionState.ENDED
    return SubmissionStatus(
        provider_batch_id=str(batch.get("id")),
        state=state,
        raw_state=raw,
        counts=SubmissionCounts(total=sum(tally.values()), **tally),
        ended=ended,
    )
