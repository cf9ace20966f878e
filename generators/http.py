"""The HTTP stack under every teacher client: one ``httpx.AsyncClient`` per teacher and process.

httpx's own transport manages ~150-200 requests/s on 2 cores here; the same httpx API on
aiohttp's transport reaches ~4x that (BENCHMARKS.md), so ``aiohttp`` is the default and
``httpx`` stays selectable (``http_transport`` in the job file) should aiohttp misbehave.
"""

from __future__ import annotations

import ssl
import urllib.request
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

Transport = Literal["aiohttp", "httpx"]


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, skipping responses that set no cookie.

    httpx hands every response to ``http.cookiejar`` through urllib-compatible wrappers (an
    ``email.message.Message`` of all its headers, a ``urllib.request.Request`` of the
    request's): ~0.3 ms a request (BENCHMARKS.md, overhead) to learn, for an API answer, that
    there is no ``Set-Cookie``. The jar reads nothing else, so a response without one is
    skipped; one with one (a load balancer's sticky cookie) is stored as before.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class _AsyncClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` with :class:`_Cookies` as its jar (kept if cookies are set)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _Cookies(self._cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        self._cookies = _Cookies(cookies)


def _proxy_for(base_url: str) -> httpx.Proxy | None:
    """The proxy the environment names for ``base_url`` (honouring NO_PROXY), looked up once."""
    parts = urlsplit(base_url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    return httpx.Proxy(proxy) if proxy else None


@cache
def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default SSL context, built once per process.

    Loading the CA bundle costs ~0.1 s of CPU, and every teacher client (and judge) of every
    run built its own; one context serves any number of connections.
    """
    return httpx.create_ssl_context()


def make_http_client(
    transport: Transport, max_connections: int, timeout_s: float, base_url: str | None = None
) -> httpx.AsyncClient:
    """A pooled client sized for ``max_connections`` requests in flight.

    Both transports honour the proxy environment variables (``HTTPS_PROXY``, ``NO_PROXY``...)
    and trust the same CA store (httpx's default SSL context), so switching transports changes
    speed, not behaviour. Given the ``base_url`` it will serve, the aiohttp client resolves its
    proxy once instead of asking the environment (and ~/.netrc) on every request, which cost
    ~0.5 ms a request (BENCHMARKS.md, overhead).
    """
    timeout = httpx.Timeout(timeout_s, connect=10.0, pool=None)
    if transport == "aiohttp":
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        ssl_context = shared_ssl_context()

        per_request_env = base_url is None

        def session() -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(
                limit=max_connections, keepalive_timeout=30, ssl=ssl_context
            )
            return aiohttp.ClientSession(connector=connector, trust_env=per_request_env)

        proxy = None if base_url is None else _proxy_for(base_url)
        return _AsyncClient(
            transport=AiohttpTransport(client=session, proxy=proxy), timeout=timeout
        )
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return _AsyncClient(limits=limits, timeout=timeout, verify=shared_ssl_context())


def classify_transport_error(exc: httpx.TransportError) -> tuple[str, bool]:
    """(error class, whether the server may have received — and billed — the request).

    httpx-aiohttp maps every aiohttp connection error to ``httpx.ConnectTimeout``, a refused
    connection and a reset mid-answer alike, so the aiohttp cause is consulted first.
    """
    import aiohttp

    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        return "connection_error", False
    if isinstance(cause, aiohttp.ServerTimeoutError | aiohttp.SocketTimeoutError):
        return "timeout", True
    if isinstance(cause, aiohttp.ClientError):
        return "connection_error", True
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "connection_error", False
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", True
    return "connection_error", True
