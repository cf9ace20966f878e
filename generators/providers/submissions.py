"""The providers' batch APIs, as one interface: a *submission* is one provider batch.

("Batch" already names the Prefect task's prompt batch, ``batch_size``; a provider batch is a
*submission* everywhere in code.) OpenAI Batch, Anthropic Message Batches and Gemini batch
mode differ in every detail of their wire formats, and in nothing a run needs to know: put
requests in, learn when they are done, read each one's answer or failure. This module holds
that shape — :class:`SubmissionApi` and the values it returns — and the splitting of a run's
requests into submissions under a provider's caps; each provider's wire format implements it
beside its online one (``openai_submissions``, ``anthropic_submissions``,
``gemini_submissions``), reached through :meth:`Provider.submission_api
<distillery.generators.providers.base.Provider.submission_api>`.

A submission's life, as a caller drives it::

    line(custom_id, call)  -> bytes        each request, written to a JSONL file (lines_path)
    upload(sid, lines_path) -> file id      or None where requests go inline
    create(sid, lines_path, file_id, model) -> provider batch id
    status(batch_id) until .ended
    results(batch_id)   -> one SubmissionResult per request, streamed, any order

``sid`` is the caller's submission id: it is written into the provider batch (metadata or
display name) so :meth:`SubmissionApi.find` can recover a batch created just before a crash.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from distillery.generators.providers.base import Completion, HttpCall, SubmissionLimits

__all__ = ["SubmissionLimits"]  # the provider's caps, narrowed per teacher: base.py


class SubmissionState(StrEnum):
    """Where a submission is, in one vocabulary for every provider (the provider's own word
    is kept beside it: :attr:`SubmissionStatus.raw_state`)."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    #: Done, every request answered or errored (OpenAI ``completed``, Anthropic ``ended``,
    #: Gemini ``SUCCEEDED``).
    ENDED = "ended"
    #: Refused as a whole (a bad input file): no request was run.
    FAILED = "failed"
    #: The 24 h window (48 h for Gemini) ran out: what finished is kept, the rest expired.
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


#: The failure class of a request the provider returned nothing for, by how the submission
#: ended (Gemini returns no results at all for an expired or cancelled batch); ``errored``
#: for any other end.
_UNRETURNED = {SubmissionState.EXPIRED: "expired", SubmissionState.CANCELLED: "canceled"}


@dataclass(frozen=True)
class SubmissionCounts:
    """Requests by outcome, as the provider counts them while it runs and once it has ended.

    Providers count differently: Anthropic keeps every request ``processing`` until the end;
    OpenAI counts expired and cancelled requests among its ``failed`` (here ``errored``);
    Gemini counts pending, succeeded and failed. The results are the truth; these are for
    showing progress.
    """

    total: int = 0
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    canceled: int = 0
    processing: int = 0


@dataclass(frozen=True)
class SubmissionStatus:
    """One look at a submission."""

    provider_batch_id: str
    state: SubmissionState
    #: The provider's own status word (``in_progress``, ``ended``, ``BATCH_STATE_RUNNING``...).
    raw_state: str
    counts: SubmissionCounts
    #: Nothing will change any more and the results can be read (a provider that is still
    #: writing its result files shows as finalizing or cancelling until they are there).
    ended: bool
    #: Why the submission failed as a whole (the provider's validation errors), if it did.
    error: str | None = None

    @property
    def unreturned_class(self) -> str | None:
        """The failure class for a request :meth:`SubmissionApi.results` returned nothing for,
        once ended: ``expired`` or ``canceled`` as the submission ended (Gemini returns no
        results for those), ``errored`` otherwise (a failed submission; or a provider that
        lost a line)."""
        return _UNRETURNED.get(self.state, "errored") if self.ended else None


@dataclass(frozen=True)
class SubmissionResult:
    """What became of one request: a completion, or why there is none.

    ``completion`` is parsed by the provider's own ``parse_success``, as an online answer
    is, so a batch answer and an online one make the same row. ``error_class`` is
    ``expired`` or ``canceled`` for requests the submission never ran, or the class
    ``classify_error`` gives the request's own error answer (``invalid_request_error``,
    ``server_error``, ``INTERNAL``...), exactly as online.
    """

    custom_id: str
    completion: Completion | None
    error_class: str | None = None
    message: str | None = None
    #: The HTTP status of the request's own answer, where the provider reports one.
    http_status: int | None = None
    #: Whether sending the request again may well succeed (it expired, was cancelled, or met
    #: a rate limit or a server error); an invalid request would fail again.
    retryable: bool = False
    request_id: str | None = None
    #: The usage object as the provider reported it (its own field names), when it did.
    usage: dict[str, Any] | None = None


class SubmissionError(Exception):
    """A batch endpoint refused for good, or kept failing past the retries.

    The message names the teacher, the operation and the provider's error, never the key.
    ``retryable`` says whether the same call may succeed later (the provider was down);
    ``maybe_created`` that a create may have made a batch although no answer said so (then
    :meth:`SubmissionApi.find` decides).
    """

    def __init__(
        self,
        message: str,
        error_class: str,
        status: int | None = None,
        retryable: bool = False,
        maybe_created: bool = False,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.status = status
        self.retryable = retryable
        self.maybe_created = maybe_created


class AmbiguousSubmission(SubmissionError):
    """:meth:`SubmissionApi.find` matched more than one batch and cannot tell which is the
    submission's (Anthropic, which has no metadata to tell by): adopting either could lose
    the other's answers, so a person decides. ``candidates`` are their ids."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message, "ambiguous_submission")
        self.candidates = candidates


@dataclass(frozen=True)
class FindHints:
    """What the caller recorded about a submission just before creating it, for
    :meth:`SubmissionApi.find`.

    ``created_after`` (unix seconds, taken before :meth:`SubmissionApi.create` was called)
    stops the search at older batches (less ten minutes of clock skew); without it the
    provider's list is searched back to 10,000 batches. ``request_count`` and ``exclude``
    (the batch ids the caller already holds) serve a provider that keeps no submission id
    (Anthropic): it can only match a batch by its time and its size.
    """

    created_after: float | None = None
    request_count: int | None = None
    exclude: frozenset[str] = frozenset()


NO_HINTS = FindHints()


class SubmissionApi(ABC):
    """One teacher's batch API: what its wire format needs to submit requests and read the
    answers back. Made by :meth:`Provider.submission_api
    <distillery.generators.providers.base.Provider.submission_api>`.

    Every call is retried as an online request is (:mod:`distillery.generators.retry`:
    ``x-should-retry``, 408/409/429/5xx, the server's wait hint, up to the teacher's
    ``max_attempts``); an answer proving the key unusable raises
    :class:`~distillery.generators.client.TeacherUnusable`; anything else that does not
    succeed raises :class:`SubmissionError`.
    """

    #: The provider's caps on one submission.
    limits: SubmissionLimits

    @abstractmethod
    def line(self, custom_id: str, call: HttpCall) -> bytes:
        """One request as it goes into the submission's JSONL file, newline included.

        ``call`` is what :meth:`Provider.build_call` made for the online request (plus any
        structured-output fields): the same body goes out, so the same answer comes back.
        Its headers (and the key in them) are never written. ``custom_id`` (the sample id)
        comes back with the request's result.
        """

    @abstractmethod
    async def upload(self, submission_id: str, lines_path: Path) -> str | None:
        """Upload ``lines_path`` where the provider takes a file; its file id, or None when
        the requests go inline with :meth:`create` (Anthropic; Gemini under its inline cap)."""

    @abstractmethod
    async def create(
        self, submission_id: str, lines_path: Path, file_id: str | None, model: str
    ) -> str:
        """Start the provider batch on ``file_id`` (or the lines inline) for ``model``; its
        id. ``submission_id`` is written into it where the provider keeps such a thing, so
        :meth:`find` recovers a batch whose creation answer was lost.

        When that answer is lost (a timeout, a reset, a 5xx), :meth:`find` is asked before
        trying again, so a lost answer never makes a second batch. Where the provider keeps
        no submission id (Anthropic) that search needs what only the caller knows
        (:class:`FindHints`): the create raises :class:`SubmissionError` with
        ``maybe_created`` instead, for the caller to :meth:`find` with its record.
        """

    @abstractmethod
    async def find(self, submission_id: str, hints: FindHints = NO_HINTS) -> str | None:
        """The id of the batch created for ``submission_id``, or None if there is none (see
        :class:`FindHints`). A provider that matches by time and size (Anthropic) needs
        ``created_after`` and ``request_count``, answers None without them, and raises
        :class:`AmbiguousSubmission` rather than pick one of two batches that fit.
        """

    @abstractmethod
    async def status(self, batch_id: str) -> SubmissionStatus:
        """The batch's state and counts now."""

    @abstractmethod
    def results(self, batch_id: str) -> AsyncGenerator[SubmissionResult]:
        """Every result the provider returns for an ended batch, read line by line as it is
        downloaded (never a whole file in memory), in the provider's order: match them by
        ``custom_id``. Requests it returns nothing for take
        :attr:`SubmissionStatus.unreturned_class`.

        An async generator: a caller that stops early closes it (``contextlib.aclosing``)
        to give its connection back at once."""

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to stop the batch; what was done stays (see :meth:`results`)."""

    @abstractmethod
    async def delete_file(self, file_id: str) -> None:
        """Delete an uploaded or result file (cleanup; a no-op where there are none)."""


class LineTooLarge(ValueError):
    """One request is over a provider's byte cap for a whole submission: no submission can
    take it (send it online, or make it smaller)."""


class Splitter:
    """Decides where a run's request lines are cut into submissions: before the line that
    would break either cap — never at the request count alone (distilabel's 100 MB files of
    more than 50,000 lines) nor at the bytes alone."""

    def __init__(self, limits: SubmissionLimits) -> None:
        self.limits = limits
        self.requests = 0
        self.bytes = 0

    def add(self, line: bytes) -> bool:
        """Count ``line`` in; True if it starts a new submission (the previous one, not
        empty, could not take it)."""
        size = len(line)
        if size > self.limits.max_bytes:
            raise LineTooLarge(
                f"a request of {size:,} bytes is over the provider's cap of "
                f"{self.limits.max_bytes:,} bytes per submission"
            )
        cut = self.requests > 0 and (
            (self.limits.max_requests is not None and self.requests + 1 > self.limits.max_requests)
            or self.bytes + size > self.limits.max_bytes
        )
        if cut:
            self.requests = self.bytes = 0
        self.requests += 1
        self.bytes += size
        return cut


def split_lines(lines: Iterable[bytes], limits: SubmissionLimits) -> Iterator[list[bytes]]:
    """``lines`` in consecutive groups, each within ``limits`` (see :class:`Splitter`; a
    caller writing files as it goes uses a :class:`Splitter` directly)."""
    splitter = Splitter(limits)
    group: list[bytes] = []
    for line in lines:
        if splitter.add(line):
            yield group
            group = []
        group.append(line)
    if group:
        yield group
