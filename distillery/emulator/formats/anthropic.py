"""Anthropic Messages: ``POST /v1/messages``, as the official ``anthropic`` SDK expects it.

Requests map to the neutral chat (``system`` becomes a leading system message), so the same
conversation gets the same answer and usage here as in any other format. Errors use
Anthropic's envelope ``{"type":"error","error":{"type","message"},"request_id"}``, whose
``error.type`` (and, for spend limits, ``error.details.error_code``) the SDK maps to its
exception classes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
import string
import time
from functools import lru_cache
from typing import Any

from aiohttp import web

from distillery.emulator import faults
from distillery.emulator.caching import CachePolicy
from distillery.emulator.completion import Answer, ChatRequest, Finish
from distillery.emulator.faults import Fault
from distillery.emulator.formats.base import LOADING_BODY, ApiError, Problem, Served, json_response
from distillery.emulator.limits import Refusal, Refused
from distillery.emulator.reasoning import EFFORT_TOKENS, Thinking, signature
from distillery.emulator.snapshots import is_dated, snapshot_date
from distillery.emulator.window import Quota

_ALNUM = string.ascii_letters + string.digits
_ids = random.Random()  # ids need uniqueness, not secrecy
_ROLES = ("user", "assistant")

# Aliases with the snapshot the real API serves for them; other names get a hash-derived date.
_SNAPSHOTS = {
    "claude-3-haiku": "claude-3-haiku-20240307",
    "claude-3-opus": "claude-3-opus-20240229",
    "claude-3-5-haiku": "claude-3-5-haiku-20241022",
    "claude-3-5-sonnet": "claude-3-5-sonnet-20241022",
    "claude-3-7-sonnet": "claude-3-7-sonnet-20250219",
    "claude-sonnet-4": "claude-sonnet-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-opus-4": "claude-opus-4-20250514",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
}
_STOP_REASONS = {
    Finish.STOP: "end_turn",
    Finish.LENGTH: "max_tokens",
    # The Messages API has no content-filter reason: its safety classifiers end a response
    # with `refusal` too (the filtered one without text, a declining model with its words).
    Finish.CONTENT_FILTER: "refusal",
    Finish.REFUSAL: "refusal",
}
_PROBLEMS: dict[Problem, tuple[str, str]] = {
    Problem.MISSING_KEY: ("authentication_error", "x-api-key header is required"),
    Problem.BAD_KEY: ("authentication_error", "invalid x-api-key"),
    Problem.BAD_JSON: ("invalid_request_error", "Request body is not valid JSON."),
    Problem.INVALID_REQUEST: ("invalid_request_error", "Invalid request."),
    Problem.BODY_TOO_LARGE: (
        "request_too_large",
        "Request exceeds the maximum allowed number of bytes.",
    ),
    Problem.UNKNOWN_PATH: ("not_found_error", "Not Found"),
}
_RATE_LIMITED = (
    "This request would exceed the rate limit for your organization of 400,000 output tokens "
    "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can "
    "see the response headers for current usage. Please reduce the prompt length or the "
    "maximum tokens requested, or try again later."
)
_RATE_LIMITS_URL = "https://docs.claude.com/en/api/rate-limits"
_CONCURRENCY = (
    "Number of concurrent connections has exceeded your rate limit. Please try again later or "
    "contact sales at https://www.anthropic.com/contact-sales to discuss your options for a "
    "rate limit increase."
)
_SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
# (status, error type, message) of the 5xx faults.
_SERVER_FAULTS: dict[Fault, tuple[int, str, str]] = {
    Fault.INTERNAL: (500, "api_error", "Internal server error"),
    Fault.NO_RETRY_5XX: (500, "api_error", "Internal server error"),
    Fault.BAD_GATEWAY: (502, "api_error", "Bad gateway"),
    Fault.UNAVAILABLE: (503, "api_error", "Service unavailable"),
    Fault.GATEWAY_TIMEOUT: (504, "timeout_error", "Request timeout"),
    Fault.OVERLOADED: (529, "overloaded_error", "Overloaded"),
}


@lru_cache(maxsize=1024)
def returned_model(model: str) -> str:
    """The dated snapshot reported for a requested ``model`` (``-latest`` aliases included)."""
    base = model.removesuffix("-latest")
    if base in _SNAPSHOTS:
        return _SNAPSHOTS[base]
    if is_dated(base):
        return base
    return f"{base}-{snapshot_date(base):%Y%m%d}"


def rfc3339(unix: float) -> str:
    """UTC time as the rate-limit ``reset`` headers carry it, e.g. ``2025-01-01T00:00:05Z``."""
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(message: str) -> ApiError:
    return ApiError(400, Problem.INVALID_REQUEST, message)


def _text(content: object, where: str) -> str:
    """A message's content, a string or a list of blocks, as one string (text blocks only)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"{where}: Input should be a valid string or a list of content blocks")
    texts = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or "type" not in block:
            raise _invalid(f"{where}.{index}: Input should be a valid content block")
        if block["type"] == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _invalid(f"{where}.{index}.text: Field required")
            texts.append(text)
    return "\n".join(texts)


def _output_schema(data: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of ``output_config.format`` (or the deprecated beta ``output_format``)."""
    config = data.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _invalid("output_config: Input should be a valid dictionary")
    spec = (config or {}).get("format") or data.get("output_format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        raise _invalid("output_config.format.type: Input should be 'json_schema'")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise _invalid("output_config.format.schema: Field required")
    return schema


def _cache_marked(data: dict[str, Any]) -> bool:
    """Whether the request marks anything for caching: ``cache_control`` at the top level
    (automatic caching), on a system block or on a message's content block."""
    if data.get("cache_control"):
        return True
    blocks: list[Any] = []
    for content in [data.get("system"), *(m.get("content") for m in data["messages"])]:
        if isinstance(content, list):
            blocks.extend(content)
    return any(isinstance(b, dict) and b.get("cache_control") for b in blocks)


def _request_id() -> str:
    return "req_011C" + "".join(_ids.choices(_ALNUM, k=20))


def _thinking(data: dict[str, Any], max_tokens: int) -> Thinking | None:
    """Extended thinking, with the API's checks: ``1024 <= budget_tokens < max_tokens``, and
    a temperature of 1 at most (thinking models sample at 1)."""
    thinking = data.get("thinking")
    if thinking is None:
        return None
    kinds = ("enabled", "adaptive", "disabled")
    if not isinstance(thinking, dict) or thinking.get("type") not in kinds:
        raise _invalid("thinking: Input tag does not match any of the expected tags")
    if thinking["type"] == "disabled":
        return None
    shown = thinking.get("display") != "omitted"
    if thinking["type"] == "adaptive":
        effort = (data.get("output_config") or {}).get("effort", "high")
        if effort not in (*EFFORT_TOKENS, "xhigh", "max"):
            raise _invalid("output_config.effort: Input should be 'low', 'medium' or 'high'")
        budget = EFFORT_TOKENS.get(effort)
        return Thinking(budget=None if budget is None else min(budget, max_tokens), shown=shown)
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise _invalid("thinking.enabled.budget_tokens: Field required")
    if budget < 1024:
        raise _invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if budget >= max_tokens:
        raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    temperature = data.get("temperature")
    if temperature is not None and temperature != 1:
        raise _invalid(
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our "
            "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        )
    return Thinking(budget=budget, shown=shown)


class AnthropicFormat:
    """Messages API, non-streaming, text content only (other blocks are ignored)."""

    name = "anthropic"
    paths = ("/v1/messages",)
    mount = ""
    home = re.compile(r"^/v1/messages")
    # Only what a request marks with cache_control is cached; writes are reported (and billed).
    cache = CachePolicy(needs_marking=True, reports_writes=True)

    def api_key(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key is not None:
            return key
        # The SDK's auth_token (OAuth) alternative: Authorization: Bearer ...
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def parse(self, request: web.Request, body: bytes) -> ChatRequest:
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, Problem.BAD_JSON) from None
        if not isinstance(data, dict):
            raise _invalid("Input should be a valid dictionary")
        model = data.get("model")
        if model is None:
            raise _invalid("model: Field required")
        if not isinstance(model, str) or not model:
            raise _invalid("model: Input should be a valid non-empty string")
        max_tokens = data.get("max_tokens")
        if max_tokens is None:
            raise _invalid("max_tokens: Field required")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise _invalid("max_tokens: Input should be greater than or equal to 1")
        raw_messages = data.get("messages")
        if raw_messages is None:
            raise _invalid("messages: Field required")
        if not isinstance(raw_messages, list):
            raise _invalid("messages: Input should be a valid list")
        if not raw_messages:
            raise _invalid("messages: at least one message is required")
        messages = []
        system = data.get("system")
        if system is not None:
            messages.append({"role": "system", "content": _text(system, "system")})
        for index, raw in enumerate(raw_messages):
            where = f"messages.{index}"
            if not isinstance(raw, dict):
                raise _invalid(f"{where}: Input should be a valid dictionary")
            role = raw.get("role")
            if role not in _ROLES:
                raise _invalid(f"{where}.role: Input should be 'user' or 'assistant'")
            if "content" not in raw:
                raise _invalid(f"{where}.content: Field required")
            messages.append({"role": role, "content": _text(raw["content"], f"{where}.content")})
        thinking = _thinking(data, max_tokens)
        return ChatRequest(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            thinking=thinking,
            schema=_output_schema(data),
            cache_marked=_cache_marked(data),
        )

    def render(self, chat: ChatRequest, answer: Answer, served: Served) -> web.Response:
        content: list[dict[str, Any]] = []
        output_tokens = answer.completion_tokens
        trace = answer.trace
        if trace is not None:
            output_tokens += trace.tokens  # output_tokens bills the thinking
            if trace.withheld:
                content.append({"type": "redacted_thinking", "data": signature(trace.text)})
            else:
                # display: omitted keeps the block and its signature, not the text.
                block = {"type": "thinking", "thinking": trace.text if trace.shown else ""}
                content.append({**block, "signature": signature(trace.text)})
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        payload = {
            "id": "msg_01" + "".join(_ids.choices(_ALNUM, k=22)),
            "type": "message",
            "role": "assistant",
            "model": returned_model(chat.model),
            "content": content,
            "stop_reason": _STOP_REASONS[answer.finish],
            "stop_sequence": None,
            # input_tokens leaves out the tokens read from and written to the prompt cache,
            # which come on top (see ..caching); writes here are all 5-minute ones.
            "usage": {
                "input_tokens": answer.prompt_tokens
                - answer.cache_read_tokens
                - answer.cache_write_tokens,
                "cache_creation_input_tokens": answer.cache_write_tokens,
                "cache_read_input_tokens": answer.cache_read_tokens,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": answer.cache_write_tokens,
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": output_tokens,
            },
        }
        headers = {"request-id": _request_id(), **_rate_limit_headers(served.quota)}
        return json_response(200, payload, headers)

    def error(self, error: ApiError, request: web.Request) -> web.Response:
        kind, message = _PROBLEMS[error.problem]
        if error.problem is Problem.UNKNOWN_PATH:
            message = f"Not Found: {request.method} {request.path}"
        return _error(error.status, kind, error.message or message)

    def fault(self, fault: Fault, chat: ChatRequest) -> web.Response:
        fault = faults.without_gemini_details(fault)
        if fault is Fault.LOADING:
            return json_response(503, LOADING_BODY, {})
        if fault is Fault.SPEND_LIMIT:
            # Fatal: no retry-after, and a code the SDK maps to EnforcedSpendLimitReachedError.
            message = (
                f"Your organization has reached its enforced spend limit ({_SPEND_LIMIT_CODE}). "
                f"You will regain access on {_next_month():%Y-%m-%d} at 00:00 UTC."
            )
            return _error(429, "rate_limit_error", message, {"error_code": _SPEND_LIMIT_CODE})
        if fault in faults.RATE_LIMITS:
            response = _error(429, "rate_limit_error", _RATE_LIMITED)
            response.headers.update(faults.retry_after_headers(fault))
            return response
        status, kind, message = _SERVER_FAULTS[fault]
        response = _error(status, kind, message)
        if fault is Fault.NO_RETRY_5XX:
            response.headers["x-should-retry"] = "false"
        return response

    def limited(self, refusal: Refusal, chat: ChatRequest) -> web.Response:
        reason = refusal.reason
        if reason is Refused.CONCURRENCY:
            message = _CONCURRENCY
        elif reason is Refused.REQUESTS:
            message = (
                "This request would exceed the rate limit for your organization of "
                f"{refusal.limit:,} requests per minute. For details, refer to: "
                f"{_RATE_LIMITS_URL}. You can see the response headers for current usage. "
                "Please try again later."
            )
        else:
            message = (
                "This request would exceed the rate limit for your organization of "
                f"{refusal.limit:,} tokens per minute. For details, refer to: {_RATE_LIMITS_URL}. "
                "You can see the response headers for current usage. Please reduce the prompt "
                "length or the maximum tokens requested, or try again later."
            )
        response = _error(429, "rate_limit_error", message)
        if refusal.quota is not None:
            response.headers.update(_rate_limit_headers(refusal.quota))
        if refusal.retryable:
            # Whole seconds, rounded up: a client waiting for it is never early.
            response.headers["retry-after"] = str(refusal.wait_whole_s)
        else:
            # More tokens than a whole window allows: waiting cannot help (the SDKs obey this).
            response.headers["x-should-retry"] = "false"
        return response


def _rate_limit_headers(quota: Quota) -> dict[str, str]:
    """The ``anthropic-ratelimit-*`` headers of ``quota``.

    Token budgets are reported rounded down to thousands, as the real headers are. The emulator
    keeps one token budget, so input, output and total report the same numbers. Resets are
    instants in whole seconds, rounded up so that waiting until one is never early.
    """
    now = time.time()
    requests_reset = _reset_instant(now, quota.reset_requests_s)
    tokens_reset = _reset_instant(now, quota.reset_tokens_s)
    tokens_left = str(quota.remaining_tokens // 1000 * 1000)
    headers = {
        "anthropic-ratelimit-requests-limit": str(quota.limit_requests),
        "anthropic-ratelimit-requests-remaining": str(quota.remaining_requests),
        "anthropic-ratelimit-requests-reset": requests_reset,
    }
    for kind in ("tokens", "input-tokens", "output-tokens"):
        headers[f"anthropic-ratelimit-{kind}-limit"] = str(quota.limit_tokens)
        headers[f"anthropic-ratelimit-{kind}-remaining"] = tokens_left
        headers[f"anthropic-ratelimit-{kind}-reset"] = tokens_reset
    return headers


def _reset_instant(now: float, reset_s: float) -> str:
    return rfc3339(math.ceil(now + reset_s) if reset_s > 0 else now)


def _next_month() -> dt.date:
    """The first day of next month (UTC), when a monthly spend limit resets."""
    later = dt.datetime.now(dt.UTC).date().replace(day=28) + dt.timedelta(days=4)
    return later.replace(day=1)


def _error(
    status: int, kind: str, message: str, details: dict[str, str] | None = None
) -> web.Response:
    request_id = _request_id()
    error: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        error["details"] = details
    payload = {"type": "error", "error": error, "request_id": request_id}
    return json_response(status, payload, {"request-id": request_id})


FORMAT = AnthropicFormat()
