"""What a wire format must provide, so the server can stay format-agnostic.

The server owns everything common to every provider (auth check, latency, limits, faults,
stats, the usage window); a format owns only its request and response shapes, including how
it words an injected fault or a refusal of the limits, where it is mounted and how its API
caches prompts. Adding a provider's format is a new module in this package implementing
:class:`WireFormat` and naming an instance ``FORMAT`` (:func:`.wire_formats` finds it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from aiohttp import web

from distillery.emulator.caching import CachePolicy
from distillery.emulator.completion import Answer, ChatRequest
from distillery.emulator.faults import Fault
from distillery.emulator.limits import Refusal
from distillery.emulator.window import Quota

# llama.cpp's answer while its model loads, whatever the endpoint: the OpenAI- and
# Anthropic-compatible routes of a local server share it, so every format sends it verbatim.
LOADING_BODY = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


class Problem(Enum):
    """The kinds of client error the emulator reports; each format words and types them."""

    MISSING_KEY = "missing_key"
    BAD_KEY = "bad_key"
    BAD_JSON = "bad_json"
    INVALID_REQUEST = "invalid_request"
    BODY_TOO_LARGE = "body_too_large"
    UNKNOWN_PATH = "unknown_path"


class ApiError(Exception):
    """A request the emulator refuses, as the format will render it.

    ``message`` is empty for errors the server raises (auth, unknown path): the format then
    uses its provider's standard wording. Parse errors carry the format's own message, ``param``
    and ``code``.
    """

    def __init__(
        self,
        status: int,
        problem: Problem,
        message: str = "",
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message or problem.value)
        self.status = status
        self.problem = problem
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Served:
    """Server-side facts a success response reports in its headers."""

    quota: Quota
    processing_ms: int


class WireFormat(Protocol):
    """One provider's HTTP API shape."""

    @property
    def name(self) -> str:
        """The wire format's name, as providers name theirs (``Provider.wire_format``)."""
        ...

    @property
    def paths(self) -> tuple[str, ...]:
        """POST routes answered with this format (aiohttp route syntax)."""
        ...

    @property
    def mount(self) -> str:
        """Where the provider SDK's base URL points under the emulator's root (OpenAI:
        ``/v1``; empty for APIs whose base URL is the bare host)."""
        ...

    @property
    def home(self) -> re.Pattern[str]:
        """The paths of this API: an unknown path gets the 404 of the format whose ``home``
        matches most of it."""
        ...

    @property
    def cache(self) -> CachePolicy:
        """How this API caches prompts and reports it (:mod:`..caching`)."""
        ...

    def api_key(self, request: web.Request) -> str | None:
        """The key the client sent, wherever this provider expects it."""
        ...

    def parse(self, request: web.Request, body: bytes) -> ChatRequest:
        """The chat request in ``body``; raises :class:`ApiError` if it is invalid."""
        ...

    def render(self, chat: ChatRequest, answer: Answer, served: Served) -> web.Response:
        """The success response answering ``chat`` with ``answer``.

        Reports exactly ``answer``'s text and usage, whatever its finish (flagged answers of
        :func:`.faults.flag` included): the stats count those tokens as billed.
        """
        ...

    def error(self, error: ApiError, request: web.Request) -> web.Response:
        """The error response for ``error``."""
        ...

    def fault(self, fault: Fault, chat: ChatRequest) -> web.Response:
        """The error response of an HTTP-level injected fault (one of ``faults.HTTP_ERRORS``),
        with the status, headers and body this provider sends for it."""
        ...

    def limited(self, refusal: Refusal, chat: ChatRequest) -> web.Response:
        """The 429 of a request the configured limits refused (:mod:`..limits`), with the
        provider's own retry hint (exactly ``refusal``'s wait, rounded up) and headers."""
        ...


def json_response(status: int, payload: Any, headers: dict[str, str]) -> web.Response:
    """A compact JSON response (no spaces: less to send and to parse at high rates)."""
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        headers=headers,
        content_type="application/json",
    )
