"""The HTTP stack under every teacher client: one pooled sender per teacher and process.

A teacher client needs one thing from HTTP: POST a JSON body, get back status, headers and
bytes, and learn — when no answer came — whether the server may have received (and billed)
the request. :class:`HttpSender` is that, with two implementations:

- ``aiohttp`` (default): aiohttp's ``ClientSession`` directly. It costs a fraction of the
  client CPU a request of httpx's API on aiohttp's transport, and far less than httpx's own
  transport (BENCHMARKS.md, "HTTP stack"); at the rates top-tier limits allow (hundreds of
  requests/s per model) the httpx layer would take most of a core.
- ``httpx``: httpx's own transport, selectable (``http_transport`` in the job file) should
  aiohttp misbehave somewhere.

Both honour the proxy environment variables (``HTTPS_PROXY``, ``NO_PROXY``...), trust the same
CA store, keep cookies a server sets (a load balancer's sticky cookie) and map failures to the
same error classes, so switching transports changes speed, not behaviour.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import cache
from typing import Literal, Protocol
from urllib.parse import urlsplit

# Imported with this module (as the flow module loads, before the run starts), not when the
# teacher pool is built: importing aiohttp costs ~0.15 s, which then delayed the first batch.
import aiohttp
import httpx
import orjson

Transport = Literal["aiohttp", "httpx"]

#: Seconds to open a connection; the per-read timeout is the teacher's ``timeout_s``.
CONNECT_TIMEOUT_S = 10.0
#: Bytes read at a time from a streamed answer (:meth:`HttpSender.stream`).
STREAM_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What came back: status, headers (names lower-cased; the last of repeated ones) and body."""

    status: int
    headers: dict[str, str]
    content: bytes


@dataclass(frozen=True, slots=True)
class BodyStream:
    """A request body sent while it is read — a batch input file of up to 2 GB — of a length
    known up front: it goes with a ``Content-Length``, never chunked, as upload endpoints
    expect, and never whole in memory. One use: a retry needs a new one."""

    chunks: AsyncIterable[bytes]
    length: int


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    """An answer whose body is read as it arrives (a batch's results file, gigabytes at
    most), inside :meth:`HttpSender.stream`'s block."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]

    async def read(self) -> bytes:
        """The whole body: for the small ones (an error, a JSON object)."""
        return b"".join([chunk async for chunk in self.chunks])


#: What a streamed request sends: bytes, a :class:`BodyStream`, or nothing.
Body = bytes | BodyStream | None


@asynccontextmanager
async def _streamed(
    status: int,
    headers: Mapping[str, str],
    chunks: AsyncGenerator[bytes],
    release: Callable[[], Awaitable[None]],
) -> AsyncIterator[StreamedAnswer]:
    """An answer for :meth:`HttpSender.stream`'s block; after it, its chunks are closed and
    its connection ``release``d (back to the pool if read to the end, else closed)."""
    try:
        yield StreamedAnswer(status, {k.lower(): v for k, v in headers.items()}, chunks)
    finally:
        await chunks.aclose()
        await release()


class HttpTransportError(Exception):
    """No answer came back (refused, reset, timed out, proxy down...).

    ``error_class`` is ``connection_error`` or ``timeout``; ``reached_server`` says whether the
    request may have been received, and so billed, by the server (a refused connection was
    not; a reset or a read timeout after sending may have been).
    """

    def __init__(self, error_class: str, reached_server: bool, description: str) -> None:
        super().__init__(description)
        self.error_class = error_class
        self.reached_server = reached_server


class HttpSender(Protocol):
    """One teacher's pooled connections."""

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> HttpAnswer:
        """Send one request; raises :class:`HttpTransportError` when no answer came."""
        ...

    def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: Body = None
    ) -> AbstractAsyncContextManager[StreamedAnswer]:
        """Send one request and read its answer's body as it arrives, inside the block;
        raises :class:`HttpTransportError` as :meth:`request` does, also while reading."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


def json_body(body: object) -> bytes:
    """A request body as httpx's ``json=`` would send it: compact UTF-8 JSON.

    orjson (installed with Prefect) encodes a chat body an order of magnitude faster than the
    standard library (BENCHMARKS.md, "Flow overhead"); anything it refuses (a non-string key,
    an integer beyond 64 bits) goes through ``json`` instead, which raises for what no JSON
    can hold (NaN).
    """
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _json_content_type(headers: Mapping[str, str], body: Body) -> Mapping[str, str]:
    """``headers``, with a JSON Content-Type when a body goes without one (the providers set
    it; neither sender should fall back to its own default, octet-stream for aiohttp), and
    the length of a streamed body."""
    if body is not None and "content-type" not in {k.lower() for k in headers}:
        headers = {**headers, "Content-Type": "application/json"}
    if isinstance(body, BodyStream):
        headers = {**headers, "Content-Length": str(body.length)}
    return headers


def _proxy_for(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url`` (honouring NO_PROXY), looked up once:
    ``HTTPS_PROXY``/``HTTP_PROXY`` by scheme, else ``ALL_PROXY``, as httpx reads them."""
    parts = urlsplit(base_url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None


@cache
def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default SSL context (certifi's CA bundle), built once per process.

    Loading the CA bundle costs ~0.1 s of CPU, and every teacher client (and judge) of every
    run built its own; one context serves any number of connections of either transport.
    """
    return httpx.create_ssl_context()


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AiohttpSender:
    """aiohttp's ``ClientSession``, created on first use inside the running event loop.

    Given the ``base_url`` it will serve, the proxy is resolved once instead of aiohttp asking
    the environment (and ~/.netrc) on every request (BENCHMARKS.md, "Flow overhead").
    """

    def __init__(self, max_connections: int, timeout_s: float, base_url: str | None) -> None:
        # Loaded here, not at the first request: that one has already been admitted by the
        # limiter, and ~0.1 s of CA loading between admission and sending could land it in the
        # provider's next window (a 429 under a shared limit).
        self._ssl = shared_ssl_context()
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._per_request_env = base_url is None
        self._proxy = None if base_url is None else _proxy_for(base_url)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=30, ssl=self._ssl
        )
        # sock_read is httpx's read timeout (between bytes, not the whole answer); waiting for
        # a pooled connection is not timed (the teacher's semaphore bounds it).
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self._timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            trust_env=self._per_request_env,
            # aiohttp's default jar refuses cookies from IP addresses; httpx's keeps them, and
            # a self-hosted server behind a load balancer is often addressed by IP.
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )
        return self._session

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> HttpAnswer:
        session = self._session or self._open()
        headers = _json_content_type(headers, body)
        try:
            # Redirects are not followed, as httpx does not: a teacher API that redirects a
            # POST is misconfigured, and following it could carry the key to another host.
            async with session.request(
                method, url, headers=headers, data=body, proxy=self._proxy, allow_redirects=False
            ) as response:
                content = await response.read()
                lowered = {k.lower(): v for k, v in response.headers.items()}
                return HttpAnswer(response.status, lowered, content)
        except (aiohttp.ClientError, OSError) as exc:
            raise _aiohttp_failure(exc) from exc

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: Body = None
    ) -> AsyncIterator[StreamedAnswer]:
        session = self._session or self._open()
        headers = _json_content_type(headers, body)
        data = body.chunks if isinstance(body, BodyStream) else body
        try:
            response = await session.request(
                method, url, headers=headers, data=data, proxy=self._proxy, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise _aiohttp_failure(exc) from exc

        async def release() -> None:
            response.release()

        chunks = _aiohttp_chunks(response)
        async with _streamed(response.status, response.headers, chunks, release) as answer:
            yield answer

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _aiohttp_failure(exc: BaseException) -> HttpTransportError:
    """What an aiohttp exception says about the request: never sent, or perhaps received."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        # Never connected (refused, DNS, connect timeout, proxy down): nothing was sent.
        return HttpTransportError("connection_error", False, describe_error(exc))
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return HttpTransportError("timeout", True, describe_error(exc))
    return HttpTransportError("connection_error", True, describe_error(exc))


async def _aiohttp_chunks(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes]:
    try:
        async for chunk in response.content.iter_chunked(STREAM_CHUNK):
            yield chunk
    except (aiohttp.ClientError, OSError) as exc:
        raise _aiohttp_failure(exc) from exc


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, skipping responses that set no cookie.

    httpx hands every response to ``http.cookiejar`` through urllib-compatible wrappers (an
    ``email.message.Message`` of all its headers, a ``urllib.request.Request`` of the
    request's): CPU on every request (BENCHMARKS.md, "Flow overhead") to learn, for an answer, that
    there is no ``Set-Cookie``. The jar reads nothing else, so a response without one is
    skipped; one with one is stored as before.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class HttpxSender:
    """httpx's ``AsyncClient`` on its own transport."""

    def __init__(self, max_connections: int, timeout_s: float) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S, pool=None)
        self._client = httpx.AsyncClient(
            limits=limits, timeout=timeout, verify=shared_ssl_context()
        )
        self._client._cookies = _Cookies(self._client._cookies)
        #: Request URLs parsed once: httpx parses a string URL on every request (~0.1 ms).
        self._urls: dict[str, httpx.URL] = {}

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 256:  # URLs with a per-request part: keep the cache small
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> HttpAnswer:
        headers = _json_content_type(headers, body)
        try:
            response = await self._client.request(
                method, self._url(url), headers=dict(headers), content=body
            )
        except httpx.TransportError as exc:
            raise _httpx_failure(exc) from exc
        lowered = {k.lower(): v for k, v in response.headers.items()}
        return HttpAnswer(response.status_code, lowered, response.content)

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: Body = None
    ) -> AsyncIterator[StreamedAnswer]:
        headers = _json_content_type(headers, body)
        content = body.chunks if isinstance(body, BodyStream) else body
        request = self._client.build_request(
            method, self._url(url), headers=dict(headers), content=content
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _httpx_failure(exc) from exc
        chunks = _httpx_chunks(response)
        async with _streamed(
            response.status_code, response.headers, chunks, response.aclose
        ) as answer:
            yield answer

    async def aclose(self) -> None:
        await self._client.aclose()


def _httpx_failure(exc: httpx.TransportError) -> HttpTransportError:
    """What an httpx exception says about the request: never sent, or perhaps received."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError)):
        return HttpTransportError("connection_error", False, describe_error(exc))
    if isinstance(exc, httpx.TimeoutException):
        return HttpTransportError("timeout", True, describe_error(exc))
    return HttpTransportError("connection_error", True, describe_error(exc))


async def _httpx_chunks(response: httpx.Response) -> AsyncGenerator[bytes]:
    try:
        async for chunk in response.aiter_bytes(STREAM_CHUNK):
            yield chunk
    except httpx.TransportError as exc:
        raise _httpx_failure(exc) from exc


def make_http_client(
    transport: Transport, max_connections: int, timeout_s: float, base_url: str | None = None
) -> HttpSender:
    """A pooled sender sized for ``max_connections`` requests in flight."""
    if transport == "aiohttp":
        return AiohttpSender(max_connections, timeout_s, base_url)
    return HttpxSender(max_connections, timeout_s)
