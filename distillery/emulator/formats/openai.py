"""OpenAI Chat Completions: ``POST /v1/chat/completions``, as the official SDK expects it.

Also the shape every OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...) speaks. Messages
and codes of errors follow captures of the real API, since clients branch on ``code``.
"""

from __future__ import annotations

import hashlib
import json
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
from distillery.emulator.reasoning import EFFORT_TOKENS, REASONING_MODEL, Thinking, openai_style
from distillery.emulator.snapshots import is_dated, snapshot_date
from distillery.emulator.window import Quota
from distillery.generators.tokens import count_message_tokens

OPENAI_VERSION = "2020-10-01"
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_ALNUM = string.ascii_letters + string.digits
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ids = random.Random()  # ids need uniqueness, not secrecy; far cheaper than os.urandom

# Aliases with the snapshot the real API currently serves; other names get a hash-derived date.
_SNAPSHOTS = {
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "gpt-4": "gpt-4-0613",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)
_KEY_URL = "https://platform.openai.com/account/api-keys"
_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key "
    f"from {_KEY_URL}."
)
# The real message shows a masked key; we show none, so logs of tests never hold one.
_BAD_KEY = f"Incorrect API key provided. You can find your API key at {_KEY_URL}."
_FINISH_REASONS = {
    Finish.STOP: "stop",
    Finish.LENGTH: "length",
    Finish.CONTENT_FILTER: "content_filter",
    Finish.REFUSAL: "stop",  # a refusal is a normal stop whose message carries `refusal`
}
_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_ORGANIZATION = "org-emulator"
_RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_OVERLOADED = "The server is overloaded or not ready yet."
# (status, message, type, code) of the 5xx faults. 502 and 504 come from Cloudflare in front of
# the API, with its own types and a numeric code. OpenAI never sends 529: it gets the 503 body.
_SERVER_FAULTS: dict[Fault, tuple[int, str, str, int | None]] = {
    Fault.INTERNAL: (500, _SERVER_ERROR, "server_error", None),
    Fault.NO_RETRY_5XX: (500, _SERVER_ERROR, "server_error", None),
    Fault.BAD_GATEWAY: (502, "Bad gateway.", "cf_bad_gateway", 502),
    Fault.UNAVAILABLE: (503, _OVERLOADED, "server_error", None),
    Fault.GATEWAY_TIMEOUT: (504, "Gateway timeout.", "cf_gateway_timeout", 504),
    Fault.OVERLOADED: (529, _OVERLOADED, "server_error", None),
}


@lru_cache(maxsize=1024)
def returned_model(model: str) -> str:
    """The snapshot name reported for a requested ``model``."""
    if model in _SNAPSHOTS:
        return _SNAPSHOTS[model]
    if is_dated(model):
        return model
    return f"{model}-{snapshot_date(model).isoformat()}"


@lru_cache(maxsize=1024)
def system_fingerprint(version: str) -> str:
    """Stable per snapshot, as the real one is per backend configuration."""
    return "fp_" + hashlib.blake2b(version.encode(), digest_size=5).hexdigest()


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration`` (``6ms``, ``1m0s``, ``1h2m3s``), rounded to the ms."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    whole, frac = divmod(ms, 1000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    sec = f"{secs}.{frac:03d}".rstrip("0") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: object) -> ApiError:
    return ApiError(
        400,
        Problem.INVALID_REQUEST,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> ApiError:
    return ApiError(
        400,
        Problem.INVALID_REQUEST,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _content_text(content: object, param: str) -> str:
    """Message content as one string: multi-part content keeps its text parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise _invalid_type(param, "one of an array or string", content)
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    return "\n".join(texts)


def _message(raw: object, index: int) -> dict[str, str]:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _invalid_type(param, "an object", raw)
    role = raw.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    if role not in _ROLES:
        supported = ", ".join(f"'{r}'" for r in _ROLES)
        raise ApiError(
            400,
            Problem.INVALID_REQUEST,
            f"Invalid value: {json.dumps(role)}. Supported values are: {supported}.",
            param=f"{param}.role",
            code="invalid_value",
        )
    message = {"role": role, "content": _content_text(raw.get("content"), f"{param}.content")}
    name = raw.get("name")
    if isinstance(name, str):
        message["name"] = name
    return message


def _optional_int(data: dict[str, Any], param: str, minimum: int | None) -> int | None:
    value = data.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer", value)
    if minimum is not None and value < minimum:
        raise ApiError(
            400,
            Problem.INVALID_REQUEST,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    return value


def _response_schema(response_format: object) -> dict[str, Any] | None:
    """The JSON Schema a ``response_format`` asks for: ``json_schema``'s schema, ``{}`` (any
    JSON object) for ``json_object``, None for text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise _invalid_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise _missing("response_format.json_schema")
        name = spec.get("name")
        if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
            raise ApiError(
                400,
                Problem.INVALID_REQUEST,
                f"Invalid 'response_format.json_schema.name': string does not match pattern. "
                f"Expected a string that matches the pattern '{_SCHEMA_NAME.pattern}'.",
                param="response_format.json_schema.name",
                code="invalid_value",
            )
        schema = spec.get("schema", {})
        return schema if isinstance(schema, dict) else {}
    if kind == "text":
        return None
    raise ApiError(
        400,
        Problem.INVALID_REQUEST,
        f"Invalid value: {json.dumps(kind)}. Supported values are: 'text', 'json_object' and "
        "'json_schema'.",
        param="response_format.type",
        code="invalid_value",
    )


def _request_id() -> str:
    return f"req_{_ids.getrandbits(128):032x}"


def _thinking(data: dict[str, Any], model: str) -> Thinking | None:
    """A trace when ``reasoning_effort`` asks for one or the model is a reasoning model."""
    effort = data.get("reasoning_effort")
    if effort is not None and effort not in (*EFFORT_TOKENS, "none"):
        supported = ", ".join(f"'{e}'" for e in (*EFFORT_TOKENS, "none"))
        raise ApiError(
            400,
            Problem.INVALID_REQUEST,
            f"Invalid value: {json.dumps(effort)}. Supported values are: {supported}.",
            param="reasoning_effort",
            code="invalid_value",
        )
    if effort == "none":
        return None
    if effort is not None:
        return Thinking(budget=EFFORT_TOKENS[effort])
    return Thinking() if REASONING_MODEL.search(model) else None


class OpenAIFormat:
    """Chat Completions, non-streaming, one choice (``n`` is ignored)."""

    name = "openai"
    paths = ("/v1/chat/completions",)
    mount = "/v1"
    # Every path no other API claims: the shape most clients of unknown servers expect.
    home = re.compile(r"^/")
    # OpenAI caches automatically and reports hits in steps of 128 tokens past the minimum.
    cache = CachePolicy(step=128)

    def api_key(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, key = header.partition(" ")
        # Anything that is not a bearer token is a wrong key, not a missing one.
        return key.strip() if scheme.lower() == "bearer" else header

    def parse(self, request: web.Request, body: bytes) -> ChatRequest:
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, Problem.BAD_JSON, _BAD_JSON) from None
        if not isinstance(data, dict):
            raise ApiError(400, Problem.BAD_JSON, _BAD_JSON)
        model = data.get("model")
        if model is None or model == "":
            raise ApiError(400, Problem.INVALID_REQUEST, "you must provide a model parameter")
        if not isinstance(model, str):
            raise _invalid_type("model", "a string", model)
        raw_messages = data.get("messages")
        if raw_messages is None:
            raise _missing("messages")
        if not isinstance(raw_messages, list):
            raise _invalid_type("messages", "an array", raw_messages)
        if not raw_messages:
            raise ApiError(
                400,
                Problem.INVALID_REQUEST,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        max_tokens = _optional_int(data, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _optional_int(data, "max_tokens", 1)
        return ChatRequest(
            model=model,
            messages=[_message(m, i) for i, m in enumerate(raw_messages)],
            max_tokens=max_tokens,
            seed=_optional_int(data, "seed", None),
            thinking=_thinking(data, model),
            schema=_response_schema(data.get("response_format")),
        )

    def render(self, chat: ChatRequest, answer: Answer, served: Served) -> web.Response:
        version = returned_model(chat.model)
        finish = answer.finish
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if finish is Finish.REFUSAL:
            message["content"], message["refusal"] = None, answer.text
        elif finish is Finish.CONTENT_FILTER:
            message["content"] = None
        trace = answer.trace
        usage: dict[str, Any] = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            # Part of prompt_tokens (OpenAI counts cached tokens in the prompt); see .caching.
            "prompt_tokens_details": {"cached_tokens": answer.cache_read_tokens},
        }
        if trace is not None:
            # completion_tokens includes the reasoning; the details break it out.
            usage["completion_tokens"] += trace.tokens
            usage["total_tokens"] += trace.tokens
            usage["completion_tokens_details"] = {"reasoning_tokens": trace.tokens}
            style = openai_style(trace, chat.model)
            if style == "field":
                message["reasoning_content"] = trace.text
            elif style == "inline":
                message["content"] = f"<think>\n{trace.text}\n</think>\n\n{answer.text}"
        payload = {
            "id": "chatcmpl-" + "".join(_ids.choices(_ALNUM, k=24)),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": version,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _FINISH_REASONS[finish],
                }
            ],
            "usage": usage,
            "system_fingerprint": system_fingerprint(version),
        }
        headers = {
            "x-request-id": _request_id(),
            "openai-processing-ms": str(served.processing_ms),
            "openai-version": OPENAI_VERSION,
            **_rate_limit_headers(served.quota),
        }
        return json_response(200, payload, headers)

    def error(self, error: ApiError, request: web.Request) -> web.Response:
        message, code = error.message, error.code
        if error.problem is Problem.MISSING_KEY:
            message = message or _MISSING_KEY
        elif error.problem is Problem.BAD_KEY:
            message, code = message or _BAD_KEY, code or "invalid_api_key"
        elif error.problem is Problem.UNKNOWN_PATH:
            message = message or f"Invalid URL ({request.method} {request.path})"
        payload = {
            "error": {
                "message": message or error.problem.value,
                "type": "invalid_request_error",
                "param": error.param,
                "code": code,
            }
        }
        headers = {"x-request-id": _request_id(), "openai-version": OPENAI_VERSION}
        return json_response(error.status, payload, headers)

    def fault(self, fault: Fault, chat: ChatRequest) -> web.Response:
        fault = faults.without_gemini_details(fault)
        if fault is Fault.LOADING:
            return json_response(503, LOADING_BODY, {})  # llama.cpp: no OpenAI headers
        headers = {"x-request-id": _request_id(), "openai-version": OPENAI_VERSION}
        if fault is Fault.SPEND_LIMIT:
            error = _error_body(_QUOTA, "insufficient_quota", "insufficient_quota")
            return json_response(429, error, headers)
        if fault in faults.RATE_LIMITS:
            headers.update(faults.retry_after_headers(fault))
            wait = faults.RETRY_WAIT_S[fault] or faults.RETRY_AFTER_S
            requested = count_message_tokens(chat.messages, chat.model)
            message = (
                f"Rate limit reached for {chat.model} in organization {_ORGANIZATION} on tokens "
                f"per min (TPM): Limit 30000000, Used 30000000, Requested {requested}. Please "
                f"try again in {go_duration(wait)}. Visit {_RATE_LIMITS_URL} to learn more."
            )
            return json_response(
                429, _error_body(message, "tokens", "rate_limit_exceeded"), headers
            )
        status, message, kind, code = _SERVER_FAULTS[fault]
        if fault is Fault.NO_RETRY_5XX:
            headers["x-should-retry"] = "false"
        return json_response(status, _error_body(message, kind, code), headers)

    def limited(self, refusal: Refusal, chat: ChatRequest) -> web.Response:
        headers = {"x-request-id": _request_id(), "openai-version": OPENAI_VERSION}
        if refusal.quota is not None:
            headers.update(_rate_limit_headers(refusal.quota))
        reason = refusal.reason
        where = f"for {chat.model} in organization {_ORGANIZATION}"
        if reason is Refused.TOO_LARGE:
            # Can never succeed: the provider's wording (clients fail it) and no hint.
            message = (
                f"Request too large {where} on tokens per {refusal.per} (TPM): Limit "
                f"{refusal.allowance}, Requested {refusal.requested}. The input or output tokens "
                f"must be reduced in order to run successfully. Visit {_RATE_LIMITS_URL} to "
                "learn more."
            )
            headers["x-should-retry"] = "false"
            return json_response(
                429, _error_body(message, "tokens", "rate_limit_exceeded"), headers
            )
        wait = go_duration(refusal.wait_ms / 1000)
        headers["retry-after-ms"] = str(refusal.wait_ms)
        headers["retry-after"] = str(refusal.wait_whole_s)
        if reason is Refused.CONCURRENCY:
            kind = "requests"
            message = (
                f"Too many concurrent requests {where}: Limit {refusal.limit}, In flight "
                f"{refusal.used}. Please try again in {wait}. Visit {_RATE_LIMITS_URL} to "
                "learn more."
            )
        else:
            kind = reason.value
            short = "RPM" if reason is Refused.REQUESTS else "TPM"
            message = (
                f"Rate limit reached {where} on {kind} per {refusal.per} ({short}): Limit "
                f"{refusal.allowance}, Used {refusal.used}, Requested {refusal.requested}. "
                f"Please try again in {wait}. Visit {_RATE_LIMITS_URL} to learn more."
            )
        return json_response(429, _error_body(message, kind, "rate_limit_exceeded"), headers)


def _rate_limit_headers(quota: Quota) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(quota.limit_requests),
        "x-ratelimit-limit-tokens": str(quota.limit_tokens),
        "x-ratelimit-remaining-requests": str(quota.remaining_requests),
        "x-ratelimit-remaining-tokens": str(quota.remaining_tokens),
        "x-ratelimit-reset-requests": go_duration(quota.reset_requests_s),
        "x-ratelimit-reset-tokens": go_duration(quota.reset_tokens_s),
    }


def _error_body(message: str, kind: str, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


FORMAT = OpenAIFormat()
