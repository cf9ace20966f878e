"""Anthropic Messages API (``POST {base_url}/v1/messages``).

``base_url`` is the bare host as in the official SDK (``https://api.anthropic.com``). System and
developer messages become the top-level ``system`` field; ``max_tokens`` is required by the API,
so a teacher without one gets :data:`DEFAULT_MAX_TOKENS`.

Reasoning: a budget is extended thinking, ``thinking: {type: enabled, budget_tokens}``
(``1024 <= budget_tokens < max_tokens``; up to Claude 4.6, removed on Opus 4.7); an effort is
adaptive thinking, ``thinking: {type: adaptive}`` with ``output_config.effort`` (Claude 4.6 and
later). Either way no temperature but 1 and ``top_p`` of at least 0.95. ``output_tokens``
counts the thinking (billed in full even when the trace is summarised).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from distillery.config import TeacherConfig
from distillery.generators.providers.base import (
    Completion,
    ErrorVerdict,
    FinishReason,
    HttpCall,
    MalformedResponse,
    Message,
    Provider,
    SubmissionLimits,
    split_system,
)
from distillery.generators.providers.reasoning import (
    asked,
    expected_reasoning_tokens,
    merge_fields,
)
from distillery.generators.providers.registry import register
from distillery.generators.providers.traces import Visibility
from distillery.generators.ratelimit_headers import RateLimitHeaders, reset_at
from distillery.generators.retry import parse_retry_after, status_is_retryable

if TYPE_CHECKING:
    from distillery.generators.providers.base import SubmissionsFactory

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MIN_BUDGET = 1024
#: Answer room a thinking teacher gets on top of its thinking budget when max_tokens is not set.
ANSWER_TOKENS = 4096
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
}


@register("anthropic")
class AnthropicProvider(Provider):
    """Messages over httpx, no SDK at run time."""

    rate_limit_headers = RateLimitHeaders(
        "anthropic-ratelimit-{kind}-{field}",
        ("requests", "tokens", "input-tokens", "output-tokens"),
        reset_at,
    )
    # Message Batches: at most 100,000 requests or 256 MB, whichever comes first; models may mix.
    submission_limits = SubmissionLimits(max_requests=100_000, max_bytes=256_000_000)

    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        params = teacher.params
        system, conversation = split_system(messages)
        turns = [{"role": m["role"], "content": m["content"]} for m in conversation]
        body: dict[str, Any] = {
            "model": teacher.model,
            "max_tokens": self.completion_bound(teacher) or DEFAULT_MAX_TOKENS,
            "messages": turns,
        }
        if system:
            body["system"] = system
        if params.temperature is not None:
            body["temperature"] = min(params.temperature, 1.0)
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop_sequences"] = params.stop
        merge_fields(body, self.reasoning_fields(teacher))
        body.update(params.extra_body)
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return HttpCall(url=f"{teacher.base_url}/v1/messages", headers=headers, body=body)

    def completion_bound(self, teacher: TeacherConfig) -> int | None:
        """The configured ``max_tokens``, else, for a thinking teacher, room for its thinking
        plus :data:`ANSWER_TOKENS` (None otherwise: :data:`DEFAULT_MAX_TOKENS` is sent)."""
        if teacher.params.max_tokens is not None:
            return teacher.params.max_tokens
        if asked(teacher) is None:
            return None
        return expected_reasoning_tokens(teacher) + ANSWER_TOKENS

    def reasoning_problem(self, teacher: TeacherConfig) -> str | None:
        reasoning, params = asked(teacher), teacher.params
        if reasoning is None:
            return None
        budget = reasoning.budget_tokens
        if budget is None and reasoning.effort is None:
            return "reasoning: anthropic needs budget_tokens (>= 1024) or effort"
        if budget is not None and budget < MIN_BUDGET:
            return f"reasoning.budget_tokens: {budget} is below Anthropic's minimum of 1024"
        if budget is not None and params.max_tokens is not None and budget >= params.max_tokens:
            return (
                f"reasoning.budget_tokens: {budget} must be below params.max_tokens "
                f"{params.max_tokens} (Anthropic counts thinking in max_tokens)"
            )
        if params.temperature is not None and params.temperature != 1:
            return "params.temperature: Anthropic extended thinking allows only 1 (or unset)"
        if params.top_p is not None and params.top_p < 0.95:
            return "params.top_p: Anthropic extended thinking needs top_p >= 0.95 (or unset)"
        return None

    def reasoning_fields(self, teacher: TeacherConfig) -> dict[str, Any]:
        reasoning = asked(teacher)
        if reasoning is None:
            return {}
        if reasoning.budget_tokens is not None:
            return {"thinking": {"type": "enabled", "budget_tokens": reasoning.budget_tokens}}
        return {"thinking": {"type": "adaptive"}, "output_config": {"effort": reasoning.effort}}

    def structured_output(self, schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
        # Structured outputs, generally available: no beta header (the beta's ``output_format``
        # is deprecated). The schema has no name here; strictness is the API's own.
        format_ = {"type": "json_schema", "schema": supported_schema(schema)}
        return {"output_config": {"format": format_}}

    def parse_success(self, payload: Any, headers: dict[str, str]) -> Completion:
        try:
            blocks = payload["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            usage = payload["usage"]
            raw_finish = payload.get("stop_reason")
            trace, shown = _thinking(blocks, str(payload.get("model") or ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"unexpected message shape: {exc}") from exc
        if not isinstance(usage, dict):
            raise MalformedResponse("usage is not an object")
        return Completion(
            text=text,
            finish_reason=_FINISH.get(raw_finish or "", "other"),
            finish_reason_raw=raw_finish,
            model_version=payload.get("model"),
            response_id=payload.get("id"),
            request_id=headers.get("request-id"),
            prompt_tokens=_all_input(usage),
            completion_tokens=usage.get("output_tokens"),
            cached_tokens=usage.get("cache_read_input_tokens"),
            cache_write_tokens=usage.get("cache_creation_input_tokens"),
            rate_limits=self.parse_rate_limits(headers),
            reasoning_text=trace,
            reasoning_visibility=shown,
        )

    def submissions(self) -> SubmissionsFactory | None:
        from distillery.generators.providers.anthropic_submissions import AnthropicSubmissions

        return AnthropicSubmissions

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ErrorVerdict:
        kind, message = _error_fields(body)
        hint = parse_retry_after(headers)
        retryable = status_is_retryable(status, headers)
        spend_limit = "spend_limit" in (kind or "") or "spend limit" in message.lower()
        if status == 429 and spend_limit and hint is None:
            kind, retryable = "spend_limit_reached", False
        return ErrorVerdict(
            error_class=kind or f"http_{status}",
            message=message or f"HTTP {status}",
            retryable=retryable,
            fatal_for_run=status in (401, 403),
            retry_after_s=hint,
        )


def _all_input(usage: dict[str, Any]) -> int | None:
    """Every input token of the request. Anthropic's ``input_tokens`` counts only those after
    the last cache breakpoint: the tokens read from the cache and those written to it come on
    top (and are billed at their own rates, see :mod:`distillery.generators.pricing`)."""
    uncached = usage.get("input_tokens")
    if uncached is None:
        return None
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return int(uncached) + int(read) + int(written)


def _thinking(blocks: list[dict[str, Any]], model: str) -> tuple[str | None, Visibility]:
    """The readable thinking of a message's content blocks, and how much of it that is.

    ``thinking`` blocks carry the text (and a ``signature`` we need not keep: it only matters
    when passing a block back to the API); ``redacted_thinking`` blocks carry encrypted
    ``data`` only. Claude 3.7 returns its full thinking, later models a summary of it; the
    usage's ``output_tokens`` bills the full thinking either way, and has no separate count.
    """
    thinking = [b for b in blocks if b.get("type") == "thinking"]
    texts = [b["thinking"] for b in thinking if b.get("thinking")]
    redacted = any(b.get("type") == "redacted_thinking" for b in blocks)
    trace = "\n\n".join(texts) if texts else None
    if redacted:
        return trace, "redacted"
    if trace is None:
        # display: omitted sends the blocks (and their signatures) without the text.
        return None, "hidden" if thinking else "none"
    return trace, "full" if model.startswith("claude-3") else "summary"


# What Anthropic's structured outputs take; other keywords are refused with a 400.
_KEPT = {"type", "enum", "const", "anyOf", "allOf", "description", "title", "$ref", "$defs"}
_KEPT_BY_TYPE = {"object": {"properties", "required"}, "array": {"items"}, "string": set()}
_FORMATS = {
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
}


def supported_schema(schema: Any) -> Any:
    """``schema`` in the subset the Messages API accepts, as the official SDK sends it: every
    object closed (``additionalProperties: false``), ``oneOf`` as ``anyOf``, and keywords the
    API refuses (numeric bounds, lengths, ``minItems`` above 1, ...) moved into the
    description, where the model still reads them. The answer is still validated against the
    full schema, so nothing is lost: a bound the API could not enforce is enforced by repair.
    """
    if not isinstance(schema, dict):
        return schema
    rest = dict(schema)
    if "oneOf" in rest and "anyOf" not in rest:
        rest["anyOf"] = rest.pop("oneOf")
    declared = rest.get("type")
    kinds = set(declared) if isinstance(declared, list) else {declared}
    # Only a declared object is closed: allOf parts (and an object built of them) stay open.
    closed = "object" in kinds and "allOf" not in rest
    if declared is None:
        kinds = {"object"} if "properties" in rest else {"array"} if "items" in rest else set()
    allowed = set(_KEPT)
    for kind in kinds:
        allowed |= _KEPT_BY_TYPE.get(str(kind), set())
    out: dict[str, Any] = {}
    for key in list(rest):
        value = rest[key]
        if key == "properties" and key in allowed:
            value = {name: supported_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "allOf") and key in allowed:
            value = (
                [supported_schema(v) for v in value]
                if isinstance(value, list)
                else supported_schema(value)
            )
        elif key == "$defs":
            value = {name: supported_schema(sub) for name, sub in value.items()}
        elif (key == "minItems" and "array" in kinds and value in (0, 1)) or (
            key == "format" and "string" in kinds and value in _FORMATS
        ):
            allowed.add(key)
        if key in allowed:
            out[key] = value
            del rest[key]
    rest.pop("additionalProperties", None)
    if closed:
        out["additionalProperties"] = False
    if rest:
        moved = ", ".join(f"{key}: {json.dumps(value)}" for key, value in rest.items())
        description = out.get("description")
        out["description"] = (f"{description}\n\n" if description else "") + "{" + moved + "}"
    return out


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """(error type, message) of ``{"type":"error","error":{"type","message"}}``."""
    try:
        payload = json.loads(body)
        error = payload["error"]
        return str(error.get("type") or "") or None, str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, body[:200].decode("utf-8", "replace").strip()
