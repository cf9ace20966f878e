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
lost can only be recognised by when it was made and how many requests it holds:
:meth:`AnthropicSubmissions.find` does that, conservatively (see there), and
:meth:`~AnthropicSubmissions.create` never retries a lost answer by itself.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from distillery.config import TeacherConfig
from distillery.generators.http import HttpSender, json_body
from distillery.generators.providers.anthropic import API_VERSION
from distillery.generators.providers.base import HttpCall, Provider
from distillery.generators.providers.submission_http import (
    HttpSubmissionApi,
    LinesFile,
    SubmissionHttp,
    on_base,
    parse_line,
    rfc3339_seconds,
)
from distillery.generators.providers.submissions import (
    AmbiguousSubmission,
    SubmissionCounts,
    SubmissionError,
    SubmissionLimits,
    SubmissionResult,
    SubmissionState,
    SubmissionStatus,
)

#: 100,000 requests; 256 MB of lines in decimal megabytes, which leaves the JSON around them
#: well under the API's 256 MiB.
LIMITS = SubmissionLimits(max_requests=100_000, max_bytes=256_000_000)
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
    limits = LIMITS
    finds_by_id = False

    def __init__(
        self,
        provider: Provider,
        teacher: TeacherConfig,
        sender: HttpSender,
        api_key: str | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        http = SubmissionHttp(provider, teacher, sender, headers, api_key, sleep)
        super().__init__(provider, teacher, http, clock)
        self.batches = f"{teacher.base_url}/v1/messages/batches"

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

    async def find(
        self,
        submission_id: str,
        *,
        created_after: float | None = None,
        request_count: int | None = None,
        exclude: Iterable[str] = (),
    ) -> str | None:
        """The one batch created since ``created_after`` (less the clock skew allowed)
        holding ``request_count`` requests and not in ``exclude``; None without both hints
        or without such a batch.

        Conservative: two such batches (another run of the same size at the same minutes,
        say) raise :class:`AmbiguousSubmission` rather than adopt one — adopting the wrong
        one would take another submission's answers and lose this one's. The caller passes
        in ``exclude`` every batch it already holds, and ``created_after`` from its record
        made just before the create.
        """
        if created_after is None or request_count is None:
            return None
        skip = set(exclude)
        found: list[str] = []
        async for batch in self.newest(self._listing(), _created_at, created_after):
            counts = batch.get("request_counts") or {}
            size = sum(int(counts.get(name) or 0) for name in _COUNTS)
            if size == request_count and batch.get("id") not in skip:
                found.append(str(batch["id"]))
        if len(found) > 1:
            raise AmbiguousSubmission(
                f"teacher {self.teacher.name!r}: submission {submission_id}: "
                f"{len(found)} message batches of {request_count} requests were created "
                f"around its time ({', '.join(found)}); Anthropic keeps no submission id to "
                "tell which is its own",
                found,
            )
        return found[0] if found else None

    async def _listing(self) -> AsyncGenerator[dict[str, Any]]:
        """Every message batch of the workspace, newest first, 100 a page."""
        after: str | None = None
        while True:
            query = "limit=100" + (f"&after_id={quote(after)}" if after else "")
            page = await self.http.json("list message batches", "GET", f"{self.batches}?{query}")
            data = [batch for batch in page.get("data") or [] if isinstance(batch, dict)]
            for batch in data:
                yield batch
            if not page.get("has_more") or not data:
                return
            after = str(page.get("last_id") or data[-1]["id"])

    async def _batch(self, batch_id: str) -> dict[str, Any]:
        url = f"{self.batches}/{quote(batch_id)}"
        return await self.http.json("get message batch", "GET", url)

    async def status(self, batch_id: str) -> SubmissionStatus:
        return _status(await self._batch(batch_id))

    async def results(self, batch_id: str) -> AsyncGenerator[SubmissionResult]:
        batch = await self._batch(batch_id)
        results_url = batch.get("results_url")
        if batch.get("processing_status") != "ended" or not isinstance(results_url, str):
            raise SubmissionError(
                f"message batch {batch_id} has not ended ({batch.get('processing_status')}): "
                "no results yet",
                "not_ended",
            )
        url = on_base(results_url, self.http.teacher.base_url)
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
        if (await self.status(batch_id)).ended:
            return  # an ended batch cannot be canceled (400)
        url = f"{self.batches}/{quote(batch_id)}/cancel"
        await self.http.call("cancel message batch", "POST", url, b"")

    async def delete_file(self, file_id: str) -> None:
        """Nothing to delete: message batches take no files."""


def _created_at(batch: dict[str, Any]) -> float | None:
    return rfc3339_seconds(batch.get("created_at"))


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
