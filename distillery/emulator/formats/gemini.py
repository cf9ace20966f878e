"""Gemini API: ``POST /v1beta/models/{model}:generateContent``, as ``google-genai`` expects it,
and the same at the stable ``/v1`` (the real service answers both; google-genai 3.x posts to
``/v1`` unless told an ``api_version``).

Requests map to the neutral chat (``systemInstruction`` becomes a system message, role
``model`` becomes ``assistant``). Errors use Google's ``{"error":{"code","message","status",
"details"}}``; rate limits carry their wait in ``details[]`` (``google.rpc.RetryInfo``), never in
a ``Retry-After`` header, and a ``google.rpc.QuotaFailure`` whose ``quotaId`` says ``PerDay`` or
``PerMinute``. Zero-valued fields are omitted, as proto3 JSON does (``candidatesTokenCount``
of an empty answer is absent, not 0).
"""

from __future__ import annotations

import json
import random
import re
import string
from functools import lru_cache
from typing import Any

from aiohttp import web

from distillery.emulator import faults
from distillery.emulator.caching import CachePolicy
from distillery.emulator.completion import Answer, ChatRequest, Finish
from distillery.emulator.faults import Fault, proto_duration
from distillery.emulator.formats.base import LOADING_BODY, ApiError, Problem, Served, json_response
from distillery.emulator.limits import Refusal, Refused
from distillery.emulator.reasoning import EFFORT_TOKENS, Thinking
from distillery.emulator.snapshots import snapshot_date
from distillery.emulator.structured import openapi_to_json_schema

_ID_CHARS = string.ascii_letters + string.digits + "-_"
_ids = random.Random()  # ids need uniqueness, not secrecy
_ROLES = {"user": "user", "model": "assistant"}
_TYPE = "type.googleapis.com/google.rpc."
_TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."
_SERVICE = "generativelanguage.googleapis.com"
_RATE_LIMITS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    f"information on this error, head to: {_RATE_LIMITS_URL}."
)
_PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel"
_PER_DAY = "GenerateRequestsPerDayPerProjectPerModel"
_REQUESTS_METRIC = f"{_SERVICE}/generate_content_requests"
_TOKENS_PER_MINUTE = "GenerateContentInputTokensPerModelPerMinute"
_TOKENS_METRIC = f"{_SERVICE}/generate_content_input_token_count"
# What the API says on a 429 that is not about a named quota (here: too many in flight).
_EXHAUSTED = "Resource has been exhausted (e.g. check quota)."
# Versions the real API reports for its aliases; 2.5 models report their own name.
_VERSIONS = {
    "gemini-1.5-flash": "gemini-1.5-flash-002",
    "gemini-1.5-flash-8b": "gemini-1.5-flash-8b-001",
    "gemini-1.5-pro": "gemini-1.5-pro-002",
    "gemini-2.0-flash": "gemini-2.0-flash-001",
    "gemini-2.0-flash-lite": "gemini-2.0-flash-lite-001",
}
_VERSIONED = re.compile(r"-\d{3}$|^gemini-2\.5-|-preview-|-exp")
_FINISH_REASONS = {
    Finish.STOP: "STOP",
    Finish.LENGTH: "MAX_TOKENS",
    Finish.CONTENT_FILTER: "SAFETY",
    # Gemini has no refusal signal: a declining model answers in plain text and stops.
    Finish.REFUSAL: "STOP",
}
_SAFE = [
    {"category": category, "probability": "NEGLIGIBLE"}
    for category in (
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    )
]
_BLOCKED_RATINGS = [
    *_SAFE,
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
]
_INTERNAL = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
_OVERLOADED = "The model is overloaded. Please try again later."
# (status, google.rpc.Code name, message) of the 5xx faults. Gemini never sends 529: the
# overloaded 503 body goes out with status 529.
_SERVER_FAULTS: dict[Fault, tuple[int, str, str]] = {
    Fault.INTERNAL: (500, "INTERNAL", _INTERNAL),
    Fault.NO_RETRY_5XX: (500, "INTERNAL", _INTERNAL),
    Fault.BAD_GATEWAY: (502, "UNAVAILABLE", "Bad Gateway"),
    Fault.UNAVAILABLE: (503, "UNAVAILABLE", _OVERLOADED),
    Fault.GATEWAY_TIMEOUT: (504, "DEADLINE_EXCEEDED", "The request timed out. Please try again."),
    Fault.OVERLOADED: (529, "UNAVAILABLE", _OVERLOADED),
}


@lru_cache(maxsize=1024)
def model_version(model: str) -> str:
    """The ``modelVersion`` reported for a requested ``model``: a stable ``-00N`` suffix."""
    if model in _VERSIONS:
        return _VERSIONS[model]
    if _VERSIONED.search(model):
        return model
    return f"{model}-{snapshot_date(model).toordinal() % 3 + 1:03d}"


def _invalid(message: str) -> ApiError:
    return ApiError(400, Problem.INVALID_REQUEST, message)


def _parts_text(content: object, where: str) -> str:
    """The text of a ``Content`` (``{"parts": [{"text": ...}, ...]}``), parts joined."""
    if not isinstance(content, dict):
        raise _invalid(f"Invalid value at '{where}' ({_TYPE_PREFIX}Content)")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    return "\n".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def _int_field(config: dict[str, Any], camel: str, snake: str) -> int | None:
    value = config.get(camel, config.get(snake))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(
            f"Invalid value at 'generation_config.{snake}' (TYPE_INT32), {json.dumps(value)}"
        )
    return value


def _thinking(config: dict[str, Any]) -> Thinking | None:
    """``thinkingConfig``: a budget of 0 turns thinking off; thoughts come back only with
    ``includeThoughts``; without the config the emulator does not think (2.5 models would)."""
    raw = config.get("thinkingConfig", config.get("thinking_config"))
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _invalid(
            f"Invalid value at 'generation_config.thinking_config' ({_TYPE_PREFIX}ThinkingConfig)"
        )
    budget = _int_field(raw, "thinkingBudget", "thinking_budget")
    if budget == 0:
        return None
    level = raw.get("thinkingLevel", raw.get("thinking_level"))
    if budget is None and isinstance(level, str):
        budget = EFFORT_TOKENS.get(level.lower())
    shown = bool(raw.get("includeThoughts", raw.get("include_thoughts", False)))
    return Thinking(budget=budget if budget and budget > 0 else None, shown=shown)


def _retry_details(
    quota_id: str,
    model: str,
    delay_s: float | None,
    metric: str = _REQUESTS_METRIC,
    value: int = 1000,
) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = [
        {
            "@type": _TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(value),
                }
            ],
        },
        {
            "@type": _TYPE + "Help",
            "links": [
                {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMITS_URL}
            ],
        },
    ]
    if delay_s is not None:
        details.append({"@type": _TYPE + "RetryInfo", "retryDelay": proto_duration(delay_s)})
    return details


def _error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return json_response(code, {"error": error}, {})


def _response_schema(config: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a JSON request: ``responseJsonSchema`` as it is, ``responseSchema``
    (OpenAPI subset) converted; any JSON object for ``application/json`` without a schema."""
    mime = config.get("responseMimeType", config.get("response_mime_type"))
    json_schema = config.get("responseJsonSchema", config.get("response_json_schema"))
    openapi = config.get("responseSchema", config.get("response_schema"))
    if json_schema is None and openapi is None:
        return {"type": "object"} if mime == "application/json" else None
    if json_schema is not None and openapi is not None:
        raise _invalid("responseSchema and responseJsonSchema cannot both be set.")
    if mime != "application/json":
        raise _invalid(
            "* GenerationConfig.response_mime_type: response_mime_type must be "
            "application/json when a response schema is set."
        )
    schema = json_schema if json_schema is not None else openapi_to_json_schema(openapi)
    return schema if isinstance(schema, dict) else {}


class GeminiFormat:
    """generateContent, non-streaming, one candidate (``candidateCount`` is ignored)."""

    name = "gemini"
    paths = (
        "/v1beta/models/{model:[^/:]+}:generateContent",
        "/v1/models/{model:[^/:]+}:generateContent",
    )
    mount = ""
    # The stable version shares OpenAI's /v1 prefix; its method after a colon tells it apart.
    home = re.compile(r"^/v1beta/|^/v1/models/[^/]+:")
    cache = CachePolicy()  # implicit caching, hits reported in cachedContentTokenCount

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def parse(self, request: web.Request, body: bytes) -> ChatRequest:
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, Problem.BAD_JSON) from None
        if not isinstance(data, dict):
            raise ApiError(400, Problem.BAD_JSON)
        contents = data.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified")
        messages = []
        system = data.get("systemInstruction", data.get("system_instruction"))
        if system is not None:
            text = system if isinstance(system, str) else _parts_text(system, "system_instruction")
            messages.append({"role": "system", "content": text})
        for index, content in enumerate(contents):
            where = f"contents[{index}]"
            role = content.get("role", "user") if isinstance(content, dict) else "user"
            if role not in _ROLES:
                raise _invalid("Please use a valid role: user, model.")
            messages.append({"role": _ROLES[role], "content": _parts_text(content, where)})
        config = data.get("generationConfig", data.get("generation_config")) or {}
        if not isinstance(config, dict):
            raise _invalid(f"Invalid value at 'generation_config' ({_TYPE_PREFIX}GenerationConfig)")
        max_tokens = _int_field(config, "maxOutputTokens", "max_output_tokens")
        if max_tokens is not None and max_tokens < 1:
            max_tokens = None  # Gemini treats 0 as "no limit"
        return ChatRequest(
            model=request.match_info["model"],
            messages=messages,
            max_tokens=max_tokens,
            seed=_int_field(config, "seed", "seed"),
            thinking=_thinking(config),
            schema=_response_schema(config),
        )

    def render(self, chat: ChatRequest, answer: Answer, served: Served) -> web.Response:
        candidate: dict[str, Any] = {}
        if answer.finish is Finish.CONTENT_FILTER:
            candidate["finishReason"] = "SAFETY"
            candidate["safetyRatings"] = _BLOCKED_RATINGS
        else:
            content: dict[str, Any] = {"role": "model"}
            parts: list[dict[str, Any]] = []
            if answer.trace is not None and answer.trace.visible:
                parts.append({"text": answer.trace.text, "thought": True})
            if answer.text:
                parts.append({"text": answer.text})
            if parts:
                content = {"parts": parts, "role": "model"}
            candidate["content"] = content
            candidate["finishReason"] = _FINISH_REASONS[answer.finish]
        candidate["index"] = 0
        usage: dict[str, Any] = {"promptTokenCount": answer.prompt_tokens}
        if answer.completion_tokens:
            usage["candidatesTokenCount"] = answer.completion_tokens
        usage["totalTokenCount"] = answer.prompt_tokens + answer.completion_tokens
        if answer.trace is not None and answer.trace.tokens:
            # Thoughts are counted apart from the candidates, and in the total.
            usage["thoughtsTokenCount"] = answer.trace.tokens
            usage["totalTokenCount"] += answer.trace.tokens
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": answer.prompt_tokens}]
        if answer.cache_read_tokens:
            # Part of promptTokenCount, as in OpenAI's usage (unlike Anthropic's); see .caching.
            usage["cachedContentTokenCount"] = answer.cache_read_tokens
            usage["cacheTokensDetails"] = [
                {"modality": "TEXT", "tokenCount": answer.cache_read_tokens}
            ]
        payload = {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model_version(chat.model),
            "responseId": "".join(_ids.choices(_ID_CHARS, k=23)),
        }
        headers = {"server-timing": f"gfet4t7; dur={served.processing_ms}"}
        return json_response(200, payload, headers)

    def error(self, error: ApiError, request: web.Request) -> web.Response:
        problem = error.problem
        if problem is Problem.BAD_KEY:
            # The real API answers a wrong key with 400 (not 401) and says why in ErrorInfo.
            message = "API key not valid. Please pass a valid API key."
            info = {
                "@type": _TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": _SERVICE},
            }
            localized = {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": message}
            return _error(400, "INVALID_ARGUMENT", message, [info, localized])
        if problem is Problem.MISSING_KEY:
            return _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if problem is Problem.BAD_JSON:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if problem is Problem.UNKNOWN_PATH:
            return _error(404, "NOT_FOUND", f"Method not found: {request.method} {request.path}")
        if problem is Problem.BODY_TOO_LARGE:
            return _error(413, "INVALID_ARGUMENT", "Request payload size exceeds the limit.")
        return _error(error.status, "INVALID_ARGUMENT", error.message or "Invalid request.")

    def fault(self, fault: Fault, chat: ChatRequest) -> web.Response:
        if fault is Fault.LOADING:
            return json_response(503, LOADING_BODY, {})
        if fault is Fault.SPEND_LIMIT:
            return _error(
                429,
                "RESOURCE_EXHAUSTED",
                _QUOTA_MESSAGE,
                _retry_details(_PER_DAY, chat.model, None),
            )
        if fault is Fault.GEMINI_PERDAY:
            # The real per-day error carries a RetryInfo too; only the quotaId says it is fatal.
            details = _retry_details(_PER_DAY, chat.model, faults.GEMINI_PERDAY_RETRY_DELAY_S)
            return _error(429, "RESOURCE_EXHAUSTED", _QUOTA_MESSAGE, details)
        if fault in faults.RATE_LIMITS:
            # No Retry-After header in this API: every 429 variant says its wait in RetryInfo.
            details = _retry_details(_PER_MINUTE, chat.model, faults.RETRY_WAIT_S[fault])
            return _error(429, "RESOURCE_EXHAUSTED", _QUOTA_MESSAGE, details)
        status, code, message = _SERVER_FAULTS[fault]
        response = _error(status, code, message)
        if fault is Fault.NO_RETRY_5XX:
            response.headers["x-should-retry"] = "false"
        return response

    def limited(self, refusal: Refusal, chat: ChatRequest) -> web.Response:
        # No rate-limit headers and no Retry-After in this API: the wait is in RetryInfo.
        reason = refusal.reason
        delay = refusal.wait_ms / 1000 if refusal.retryable else None
        if reason is Refused.CONCURRENCY:
            assert delay is not None
            retry = [{"@type": _TYPE + "RetryInfo", "retryDelay": proto_duration(delay)}]
            return _error(429, "RESOURCE_EXHAUSTED", _EXHAUSTED, retry)
        if reason is Refused.REQUESTS:
            metric, quota_id = _REQUESTS_METRIC, _PER_MINUTE
        else:
            metric, quota_id = _TOKENS_METRIC, _TOKENS_PER_MINUTE
        details = _retry_details(quota_id, chat.model, delay, metric, refusal.limit)
        message = (
            f"{_QUOTA_MESSAGE}\n* Quota exceeded for metric: {metric}, limit: {refusal.limit}, "
            f"model: {chat.model}\n"
        )
        if delay is None:
            # More tokens than a whole window allows: no RetryInfo, and a header the clients
            # honour (as for the no-retry 5xx fault), since a per-minute quota reads retryable.
            message += (
                f"The request's {refusal.requested} tokens exceed the {refusal.allowance} a "
                f"{refusal.window_s:g}s window admits; reduce the prompt or maxOutputTokens."
            )
            response = _error(429, "RESOURCE_EXHAUSTED", message, details)
            response.headers["x-should-retry"] = "false"
            return response
        message += f"Please retry in {proto_duration(delay)}."
        return _error(429, "RESOURCE_EXHAUSTED", message, details)


FORMAT = GeminiFormat()
