"""What the three providers' batch APIs share above their HTTP: a create that looks before
it tries again, one search of the provider's batch list, and answers read as online ones.

Each provider module (``openai_submissions`` ...) subclasses :class:`HttpSubmissionApi` and
says only what its wire format decides: its key headers, its URLs and bodies, how its list
pages and what in a listed batch says whose it is.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from distillery.config import TeacherConfig
from distillery.generators.http import HttpSender
from distillery.generators.providers.base import MalformedResponse, Provider
from distillery.generators.providers.submission_http import LinesFile, SubmissionHttp
from distillery.generators.providers.submissions import (
    NO_HINTS,
    AmbiguousSubmission,
    FindHints,
    SubmissionApi,
    SubmissionError,
    SubmissionResult,
    SubmissionStatus,
)
from distillery.generators.providers.traces import split_trace
from distillery.generators.retry import wait_s

#: Clock difference allowed between this machine and the provider's, when a time taken
#: here bounds a search of the provider's batches.
SKEW_S = 600.0
#: Batches listed at most by one search without a time bound.
MAX_LISTED = 10_000
#: A listing's next-page cursor, from its page and the page's items (None: the last page).
Cursor = Callable[[dict[str, Any], list[dict[str, Any]]], str | None]


@dataclass(frozen=True)
class Listing:
    """How a provider pages its list of batches (``GET`` on :attr:`HttpSubmissionApi.batches`,
    newest first): its page-size and cursor parameters, the key of the page's items, and
    where a page says the next cursor is."""

    size_param: str
    cursor_param: str
    items: str
    next_cursor: Cursor


class HttpSubmissionApi(SubmissionApi):
    """A provider's batch API over HTTP; subclasses fill in the wire format."""

    #: Whether a listed batch carries the submission id (OpenAI metadata, Gemini display
    #: name). Without (Anthropic) a batch is matched by its time and size, which needs the
    #: caller's :class:`FindHints`, and a create whose answer was lost cannot look for its
    #: batch itself: it raises, for the caller to :meth:`find` with its record.
    finds_by_id: ClassVar[bool] = True
    listing: ClassVar[Listing]

    def __init__(
        self,
        provider: Provider,
        teacher: TeacherConfig,
        sender: HttpSender,
        api_key: str | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.provider = provider
        self.teacher = teacher
        self.clock = clock
        caps = provider.submission_limits
        assert caps is not None, f"provider {provider.name} has no batch API"
        #: The provider's caps, lowered where the teacher's ``submissions:`` block asks.
        self.limits = caps.within(teacher.submission_options)
        headers = self.key_headers(api_key) if api_key else {}
        self.http = SubmissionHttp(provider, teacher, sender, headers, api_key, sleep)

    # ------------------------------------------------------------------ what subclasses say

    @abstractmethod
    def key_headers(self, api_key: str) -> dict[str, str]:
        """The headers every call carries: the key, and the API version where one is sent."""

    @abstractmethod
    async def _create(
        self, submission_id: str, lines: LinesFile, file_id: str | None, model: str
    ) -> str:
        """One attempt at creating the batch (``http.call`` with ``may_create``)."""

    @property
    @abstractmethod
    def batches(self) -> str:
        """The URL of the provider's batch collection (its list)."""

    @abstractmethod
    def _created_at(self, batch: dict[str, Any]) -> float | None:
        """When a listed batch was created, in unix seconds."""

    @abstractmethod
    def _is_for(self, batch: dict[str, Any], submission_id: str, hints: FindHints) -> bool:
        """Whether a listed batch may be the submission's."""

    @abstractmethod
    def _status_of(self, batch: dict[str, Any]) -> SubmissionStatus:
        """A batch as the provider shows it, read into a :class:`SubmissionStatus`."""

    def _batch_id(self, batch: dict[str, Any]) -> str:
        return str(batch["id"])

    def _batch_url(self, batch_id: str) -> str:
        return f"{self.batches}/{quote(batch_id)}"

    # ------------------------------------------------------------------ shared behaviour

    async def create(
        self, submission_id: str, lines_path: Path, file_id: str | None, model: str
    ) -> str:
        lines = LinesFile.requests(lines_path)
        hints = FindHints(created_after=self.clock(), request_count=lines.count)
        attempts = self.teacher.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await self._create(submission_id, lines, file_id, model)
            except SubmissionError as exc:
                if not (exc.maybe_created and self.finds_by_id):
                    raise
                found = await self.find(submission_id, hints)
                if found is not None:
                    return found
                if attempt == attempts:
                    raise
                await self.http.sleep(wait_s(None, attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def find(self, submission_id: str, hints: FindHints = NO_HINTS) -> str | None:
        if not self.finds_by_id and (hints.created_after is None or hints.request_count is None):
            return None  # nothing to tell the submission's batch by
        found: list[str] = []
        async for batch in self._newest(hints.created_after):
            batch_id = self._batch_id(batch)
            if batch_id in hints.exclude or not self._is_for(batch, submission_id, hints):
                continue
            if self.finds_by_id:
                return batch_id
            found.append(batch_id)
        if len(found) > 1:
            raise AmbiguousSubmission(
                f"teacher {self.teacher.name!r}: submission {submission_id}: {len(found)} "
                f"batches of {hints.request_count} requests were created around its time "
                f"({', '.join(found)}); {self.provider.name} keeps no submission id to tell "
                "which is its own",
                found,
            )
        return found[0] if found else None

    async def _newest(self, created_after: float | None) -> AsyncGenerator[dict[str, Any]]:
        """The listed batches down to ``created_after`` (less :data:`SKEW_S`), or
        :data:`MAX_LISTED` of them without it."""
        cutoff = None if created_after is None else created_after - SKEW_S
        seen = 0
        async for batch in self._listing():
            seen += 1
            if cutoff is None and seen > MAX_LISTED:
                return
            when = self._created_at(batch)
            if cutoff is not None and when is not None and when < cutoff:
                return
            yield batch

    async def _listing(self) -> AsyncGenerator[dict[str, Any]]:
        """Every batch of the account, newest first, page after page of 100."""
        listing = self.listing
        token: str | None = None
        while True:
            query = f"{listing.size_param}=100"
            if token is not None:
                query += f"&{listing.cursor_param}={quote(token)}"
            page = await self.http.json("list batches", "GET", f"{self.batches}?{query}")
            items = [item for item in page.get(listing.items) or [] if isinstance(item, dict)]
            for item in items:
                yield item
            token = (listing.next_cursor(page, items) or None) if items else None
            if token is None:
                return

    def answered(
        self, custom_id: str, payload: Any, headers: dict[str, str], usage_key: str
    ) -> SubmissionResult:
        """The result of a request answered 2xx: ``payload`` parsed as the online client
        parses it (``parse_success``, then the trace split off for a reasoning teacher)."""
        try:
            completion = self.provider.parse_success(payload, headers)
        except MalformedResponse as exc:
            return SubmissionResult(
                custom_id, None, "malformed_response", str(exc), 200, retryable=True
            )
        if self.teacher.reasoning is not None:
            completion = split_trace(completion, self.teacher.reasoning)
        usage = payload.get(usage_key) if isinstance(payload, dict) else None
        return SubmissionResult(
            custom_id,
            completion,
            http_status=200,
            request_id=completion.request_id,
            usage=usage if isinstance(usage, dict) else None,
        )

    def refused(
        self, custom_id: str, status: int, body: bytes, request_id: str | None = None
    ) -> SubmissionResult:
        """The result of a request answered with an error: judged by ``classify_error``, as
        the same answer online would be."""
        verdict = self.provider.classify_error(status, {}, body)
        return SubmissionResult(
            custom_id,
            None,
            verdict.error_class,
            self.http.scrub(verdict.message),
            status,
            verdict.retryable,
            request_id,
        )

    async def status(self, batch_id: str) -> SubmissionStatus:
        return self._status_of(await self._get(batch_id))

    async def _get(self, batch_id: str) -> dict[str, Any]:
        return await self.http.json("get batch", "GET", self._batch_url(batch_id))

    async def _ended(self, batch_id: str) -> dict[str, Any]:
        """The batch as the provider shows it, once ended: results are not read before."""
        batch = await self._get(batch_id)
        status = self._status_of(batch)
        if not status.ended:
            raise SubmissionError(
                f"batch {batch_id} has not ended ({status.raw_state}): no results yet",
                "not_ended",
            )
        return batch

    async def _cancel(self, batch_id: str, url: str) -> None:
        """POST ``url`` to cancel, unless the batch has ended already (then every provider
        refuses: a 409, which would be retried, or a 400)."""
        if not (await self.status(batch_id)).ended:
            await self.http.call("cancel batch", "POST", url, b"")

    async def _delete(self, url: str) -> None:
        """DELETE ``url``; one already gone is what cleanup wanted."""
        try:
            await self.http.call("delete file", "DELETE", url)
        except SubmissionError as exc:
            if exc.status != 404:
                raise


def last_id(page: dict[str, Any], items: list[dict[str, Any]]) -> str | None:
    """The next-page cursor of OpenAI's and Anthropic's lists: the page's last id, while
    the page says there are more."""
    return str(page.get("last_id") or items[-1]["id"]) if page.get("has_more") else None


def rfc3339_seconds(text: object) -> float | None:
    """Unix seconds of an RFC 3339 time (Anthropic's and Google's), None if it is not one.
    Google's may carry nanoseconds, more digits than ``datetime`` reads: they are cut."""
    if not isinstance(text, str):
        return None
    cut = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(cut).timestamp()
    except ValueError:
        return None


def parse_line(what: str, raw: bytes) -> dict[str, Any]:
    """One line of a results file as a JSON object; a line that is not one means the
    provider's file is broken, which no retry here mends."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        head = raw[:200].decode("utf-8", "replace")
        raise SubmissionError(f"{what}: a result line is not a JSON object: {head!r}", "malformed")
    return record
