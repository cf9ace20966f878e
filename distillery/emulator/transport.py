"""Faults below the API's own error handling: no answer, a reset, a cut body, broken JSON.

These look the same whichever provider format was called (they happen in load balancers,
proxies and kernels, not in the API), so the server applies them to any format's response.
Each leaves the handler with a response aiohttp can no longer send (the transport is closed);
aiohttp notices the closed connection and drops it quietly.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web

# The hang re-checks this often whether the client is still there, so an abandoned hang ends
# soon after its client gave up instead of holding a task (and the server's shutdown).
_HANG_POLL_S = 0.25


def _body(response: web.Response) -> bytes:
    body = response.body
    if not isinstance(body, bytes):
        raise TypeError("transport faults apply to responses with an in-memory body")
    return body


def _headers(response: web.Response) -> dict[str, str]:
    """Headers to copy to a replacement response (its length is set anew)."""
    return {k: v for k, v in response.headers.items() if k.lower() != "content-length"}


async def hang(request: web.Request, seconds: float) -> web.Response:
    """Hold the request ``seconds`` without answering, then close the connection.

    A client with a shorter read timeout sees its timeout; a patient one sees the server
    disconnect without a response.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return web.Response()  # the client gave up
        await asyncio.sleep(min(left, _HANG_POLL_S))
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()


def reset(request: web.Request) -> web.Response:
    """Abort the connection with a TCP RST (``SO_LINGER`` 0): the client reads ECONNRESET."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response()


async def truncate(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send ``response``'s status, headers and full ``Content-Length``, then half its body, then
    close: the client sees the connection end before the body is complete."""
    body = _body(response)
    stream = web.StreamResponse(status=response.status, headers=_headers(response))
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN
    return stream


def malformed(response: web.Response) -> web.Response:
    """``response`` with its JSON body cut at two thirds, sent complete and well-framed: the HTTP
    exchange succeeds, the body does not parse (a proxy or server bug, not a network fault)."""
    body = _body(response)
    return web.Response(
        status=response.status, body=body[: len(body) * 2 // 3], headers=_headers(response)
    )
