"""The HTTP under every provider's batch API: retried calls, streamed files, safe URLs.

A batch endpoint's answer is judged by the provider's own ``classify_error``, as an online
answer is, and retried by the same rules (:mod:`distillery.generators.retry`): 408, 409,
429 and 5xx (unless ``x-should-retry: false``), waiting ``max(server hint, backoff)``, up to
the teacher's ``max_attempts``. A bad key stops the run (``TeacherUnusable``); other refusals
raise :class:`~.submissions.SubmissionError`. tenacity is not used here: these calls are few
(a handful per submission), and a create must stop between attempts to ask whether the
lost attempt made a batch after all, which a plain loop says more plainly.

Files go both ways as streams: an input file is sent while it is read (:class:`LinesFile`),
a results file is read line by line while it arrives (:meth:`SubmissionHttp.lines`), so a
200 MB submission never sits whole in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import urlsplit, urlunsplit

from distillery.config import TeacherConfig
from distillery.generators.client import TeacherUnusable
from distillery.generators.http import BodyStream, HttpAnswer, HttpSender, HttpTransportError
from distillery.generators.providers.base import Provider
from distillery.generators.providers.submissions import SubmissionError
from distillery.generators.retry import MAX_HINT_S, wait_s

Sleep = Callable[[float], Awaitable[None]]
#: A call's body: bytes, or a factory of a streamed one (each attempt sends a new one).
CallBody = bytes | Callable[[], BodyStream] | None


class CallOptions(TypedDict, total=False):
    """What a call may add: ``headers`` beside the key's; ``may_create`` (see
    :meth:`SubmissionHttp.call`)."""

    headers: Mapping[str, str]
    may_create: bool


#: Bytes read from an input file at a time while it is sent.
READ_CHUNK = 1 << 20


class SubmissionHttp:
    """One teacher's calls to its batch endpoints, over its pooled sender."""

    def __init__(
        self,
        provider: Provider,
        teacher: TeacherConfig,
        sender: HttpSender,
        headers: Mapping[str, str],
        api_key: str | None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.teacher = teacher
        self.sender = sender
        #: Sent with every call: the key and the provider's version headers.
        self.headers = dict(headers)
        self._key = api_key
        self.sleep = sleep

    async def call(
        self,
        what: str,
        method: str,
        url: str,
        body: CallBody = None,
        **options: Unpack[CallOptions],
    ) -> HttpAnswer:
        """A 2xx answer to ``method url``, retried as the module says. ``what`` names the
        operation in errors.

        ``may_create``: the call makes something (a batch) that a lost answer may have made
        anyway; then a lost answer or a 5xx is not retried but raised with ``maybe_created``,
        for the caller to look before trying again.
        """
        sent = {**self.headers, **options.get("headers", {})}
        may_create = options.get("may_create", False)
        for attempt in range(1, self.teacher.max_attempts + 1):
            try:
                if callable(body):
                    async with self.sender.stream(method, url, sent, body()) as streamed:
                        content = await streamed.read()
                    answer = HttpAnswer(streamed.status, streamed.headers, content)
                else:
                    answer = await self.sender.request(method, url, sent, body)
            except HttpTransportError as exc:
                lost = may_create and exc.reached_server
                if lost or attempt == self.teacher.max_attempts:
                    raise self._error(
                        what, exc.error_class, str(exc), None, True, maybe_created=lost
                    ) from exc
                await self.sleep(wait_s(None, attempt - 1))
                continue
            if 200 <= answer.status < 300:
                return answer
            await self.sleep(self._judge(what, answer, attempt, may_create))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def json(
        self,
        what: str,
        method: str,
        url: str,
        body: CallBody = None,
        **options: Unpack[CallOptions],
    ) -> dict[str, Any]:
        """:meth:`call`'s answer as a JSON object."""
        answer = await self.call(what, method, url, body, **options)
        try:
            payload = json.loads(answer.content)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            head = answer.content[:200].decode("utf-8", "replace")
            raise self._error(what, "malformed_response", f"not a JSON object: {head!r}", None)
        return payload

    async def lines(self, what: str, url: str) -> AsyncGenerator[bytes]:
        """The non-blank lines of ``url``'s body, as they arrive.

        Opening is retried like any call; a download that breaks off midway is not (the
        lines already given cannot be taken back): it raises a retryable
        :class:`SubmissionError`, and reading the results again later is harmless, since
        they are matched by ``custom_id``.
        """
        for attempt in range(1, self.teacher.max_attempts + 1):
            opened = False
            try:
                async with self.sender.stream("GET", url, self.headers) as streamed:
                    if 200 <= streamed.status < 300:
                        opened = True
                        async for line in _split(streamed.chunks):
                            yield line
                        return
                    answer = HttpAnswer(streamed.status, streamed.headers, await streamed.read())
            except HttpTransportError as exc:
                if opened or attempt == self.teacher.max_attempts:
                    message = f"download broke off: {exc}" if opened else str(exc)
                    raise self._error(what, exc.error_class, message, None, True) from exc
                await self.sleep(wait_s(None, attempt - 1))
                continue
            await self.sleep(self._judge(what, answer, attempt, False))

    def _judge(self, what: str, answer: HttpAnswer, attempt: int, may_create: bool) -> float:
        """The wait before retrying a non-2xx ``answer``, or the error it raises."""
        verdict = self.provider.classify_error(answer.status, answer.headers, answer.content)
        teacher = self.teacher
        if verdict.fatal_for_run:
            where = f" (key from {teacher.api_key_env})" if teacher.api_key_env else ""
            raise TeacherUnusable(
                self.scrub(
                    f"teacher {teacher.name!r}: {what}: HTTP {answer.status} "
                    f"{verdict.error_class}{where}: {verdict.message}"
                )
            )
        hint = verdict.retry_after_s
        retryable = verdict.retryable and (hint is None or hint <= MAX_HINT_S)
        lost = may_create and answer.status >= 500
        if lost or not retryable or attempt == teacher.max_attempts:
            raise self._error(
                what,
                verdict.error_class,
                verdict.message,
                answer.status,
                verdict.retryable,
                maybe_created=lost,
            )
        return wait_s(hint, attempt - 1)

    def _error(
        self,
        what: str,
        error_class: str,
        message: str,
        status: int | None,
        retryable: bool = False,
        maybe_created: bool = False,
    ) -> SubmissionError:
        http = f"HTTP {status} " if status is not None else ""
        text = f"teacher {self.teacher.name!r}: {what}: {http}{error_class}: {message}"
        return SubmissionError(
            self.scrub(text), error_class, status, retryable, maybe_created=maybe_created
        )

    def scrub(self, text: str) -> str:
        """Servers sometimes echo the key they were sent; it must never reach an error."""
        return text.replace(self._key, "***") if self._key else text


def on_base(url: str, base_url: str) -> str:
    """``url`` (one the provider gave: a results or upload URL) kept on the teacher's own
    ``base_url``: unchanged when it is on the same scheme and host, else its path and query
    under ``base_url`` (a gateway's path prefix kept), as google-genai moves its upload URLs
    onto its base URL. The key it is fetched with never goes where ``base_url`` does not
    point."""
    given, base = urlsplit(url), urlsplit(base_url)
    if (given.scheme, given.netloc) == (base.scheme, base.netloc):
        return url
    path = base.path.rstrip("/") + given.path
    return urlunsplit((base.scheme, base.netloc, path, given.query, ""))


async def _split(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes]:
    """Lines of a stream of chunks (without their newlines), blank ones skipped."""
    rest = b""
    async for chunk in chunks:
        *whole, rest = (rest + chunk).split(b"\n")
        for line in whole:
            if line.strip():
                yield line
    if rest.strip():
        yield rest


@dataclass(frozen=True)
class LinesFile:
    """A submission's JSONL file, measured once, sent as often as attempts need.

    ``count`` is its non-blank lines, ``size`` their bytes without newlines: enough to know
    the exact length of a body that wraps the file (multipart) or joins its lines (a JSON
    array), so it can be streamed with a ``Content-Length``.
    """

    path: Path
    count: int
    size: int
    file_size: int

    @classmethod
    def measure(cls, path: Path) -> LinesFile:
        count = size = 0
        with path.open("rb") as handle:
            for raw in handle:
                line = raw.rstrip(b"\r\n")
                if line.strip():
                    count += 1
                    size += len(line)
        return cls(path, count, size, path.stat().st_size)

    @classmethod
    def requests(cls, path: Path) -> LinesFile:
        """:meth:`measure`, refusing a file without a request (no provider takes one)."""
        lines = cls.measure(path)
        if lines.count == 0:
            raise ValueError(f"{path}: no requests to submit")
        return lines

    def wrapped(self, head: bytes, tail: bytes) -> BodyStream:
        """``head``, the file's bytes as they are, ``tail``: a multipart upload."""

        async def chunks() -> AsyncIterator[bytes]:
            yield head
            with self.path.open("rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
            yield tail

        return BodyStream(chunks(), len(head) + self.file_size + len(tail))

    def joined(self, head: bytes, tail: bytes) -> BodyStream:
        """``head``, the lines joined by commas, ``tail``: a JSON array of the lines."""

        async def chunks() -> AsyncIterator[bytes]:
            yield head
            buffer = bytearray()
            first = True
            with self.path.open("rb") as handle:
                for raw in handle:
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    if not first:
                        buffer += b","
                    buffer += line
                    first = False
                    if len(buffer) >= READ_CHUNK:
                        yield bytes(buffer)
                        buffer.clear()
            yield bytes(buffer) + tail

        length = len(head) + self.size + max(self.count - 1, 0) + len(tail)
        return BodyStream(chunks(), length)
