"""Gemini API ``generateContent`` (``POST {base_url}/{version}/models/{model}:generateContent``).

``base_url`` is the bare host as in google-genai (``https://generativelanguage.googleapis.com``).
The version is the teacher's ``api_version``: ``v1beta`` unless a job asks for the stable ``v1``
(the service answers both; google-genai 3.x defaults to ``v1``, while thinking summaries and
``responseJsonSchema`` came to ``v1beta`` first).
Gemini sends no ``Retry-After``: the wait is ``RetryInfo.retryDelay`` in the error's
``details``, and a ``QuotaFailure`` whose quota id says ``PerDay`` will not clear by retrying.
A bad key is a 400 with reason ``API_KEY_INVALID``, not a 401.

Reasoning: ``generationConfig.thinkingConfig`` with ``includeThoughts: true`` and either
``thinkingBudget`` (2.5 models) or ``thinkingLevel`` (3 models). ``maxOutputTokens`` includes
thinking; ``thoughtsTokenCount`` is billed as output beside ``candidatesTokenCount``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from distillery.config import TeacherConfig
from distillery.generators.durations import parse_go_duration
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
from distillery.generators.providers.reasoning import asked
from distillery.generators.providers.registry import register
from distillery.generators.providers.traces import visibility
from distillery.generators.retry import status_is_retryable

if TYPE_CHECKING:
    from distillery.generators.providers.base import SubmissionsFactory

DEFAULT_API_VERSION = "v1beta"
_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_LEVELS = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH"}


def _finish(raw: str | None) -> FinishReason:
    if raw == "STOP":
        return "stop"
    if raw == "MAX_TOKENS":
        return "length"
    if raw in _FILTERED:
        return "content_filter"
    return "other"


@register("gemini")
class GeminiProvider(Provider):
    """generateContent over httpx, no SDK at run time."""

    # batchGenerateContent: the model is in the URL; requests inline under 20 MB, otherwise a
    # JSONL file through the File API of up to 2 GB; no documented request count.
    submission_limits = SubmissionLimits(
        max_requests=None, max_bytes=2_000_000_000, inline_max_bytes=20_000_000, one_model=True
    )

    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        params = teacher.params
        system, conversation = split_system(messages)
        contents = [
            {
                "role": "model" if m["role"] == "assistant" else "user",
                "parts": [{"text": m["content"]}],
            }
            for m in conversation
        ]
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if params.temperature is not None:
            config["temperature"] = params.temperature
        if params.top_p is not None:
            config["topP"] = params.top_p
        if params.max_tokens is not None:
            config["maxOutputTokens"] = params.max_tokens
        if params.seed is not None:
            config["seed"] = params.seed
        if params.stop:
            config["stopSequences"] = params.stop
        config.update(self.reasoning_fields(teacher))
        if config:
            body["generationConfig"] = config
        body.update(params.extra_body)
        headers = {"content-type": "application/json"}
        if api_key:
            headers["x-goog-api-key"] = api_key
        version = teacher.api_version or DEFAULT_API_VERSION
        url = f"{teacher.base_url}/{version}/models/{teacher.model}:generateContent"
        return HttpCall(url=url, headers=headers, body=body)

    def reasoning_problem(self, teacher: TeacherConfig) -> str | None:
        reasoning, bound = asked(teacher), teacher.params.max_tokens
        budget = reasoning.budget_tokens if reasoning is not None else None
        if budget is not None and bound is not None and budget >= bound:
            return (
                f"reasoning.budget_tokens: {budget} must be below "
                f"params.max_tokens {bound} (Gemini counts thoughts in it)"
            )
        return None

    def reasoning_fields(self, teacher: TeacherConfig) -> dict[str, Any]:
        """The ``thinkingConfig`` of ``generationConfig`` (where :meth:`build_call` puts it)."""
        reasoning = asked(teacher)
        if reasoning is None:
            return {}
        config: dict[str, Any] = {"includeThoughts": True}
        if reasoning.budget_tokens is not None:
            config["thinkingBudget"] = reasoning.budget_tokens
        elif reasoning.effort is not None:
            config["thinkingLevel"] = _LEVELS[reasoning.effort]
        return {"thinkingConfig": config}

    def structured_output(self, schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
        # responseJsonSchema takes JSON Schema as written; responseSchema would need the
        # OpenAPI subset (upper-case types), which a pydantic model's schema is not.
        config = {"responseMimeType": "application/json", "responseJsonSchema": schema}
        return {"generationConfig": config}

    def parse_success(self, payload: Any, headers: dict[str, str]) -> Completion:
        try:
            candidates = payload.get("candidates") or []
            usage = payload.get("usageMetadata") or {}
            if candidates:
                candidate = candidates[0]
                parts = (candidate.get("content") or {}).get("parts") or []
                text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
                thoughts = "".join(p.get("text", "") for p in parts if p.get("thought"))
                raw_finish = candidate.get("finishReason")
                finish = _finish(raw_finish)
            else:
                # A blocked prompt: no candidates, the reason in promptFeedback.
                block = (payload.get("promptFeedback") or {}).get("blockReason")
                if block is None:
                    raise MalformedResponse("no candidates and no promptFeedback.blockReason")
                text, raw_finish, finish = "", f"prompt_blocked:{block}", "content_filter"
                thoughts = ""
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"unexpected generateContent shape: {exc}") from exc
        return Completion(
            text=text,
            finish_reason=finish,
            finish_reason_raw=raw_finish,
            model_version=payload.get("modelVersion"),
            response_id=payload.get("responseId"),
            request_id=headers.get("x-request-id"),
            prompt_tokens=usage.get("promptTokenCount"),
            completion_tokens=_completion_tokens(usage),
            cached_tokens=usage.get("cachedContentTokenCount"),
            reasoning_tokens=usage.get("thoughtsTokenCount"),
            # includeThoughts returns thought summaries, never the raw thoughts.
            reasoning_text=thoughts or None,
            reasoning_visibility=visibility(
                thoughts or None, usage.get("thoughtsTokenCount"), summary=True
            ),
        )

    def submissions(self) -> SubmissionsFactory | None:
        from distillery.generators.providers.gemini_submissions import GeminiSubmissions

        return GeminiSubmissions

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ErrorVerdict:
        code_name, message, details = _error_fields(body)
        reasons = {str(d.get("reason")) for d in details if d.get("@type") == _ERROR_INFO}
        retry_after: float | None = None
        per_day = False
        for detail in details:
            if detail.get("@type") == _RETRY_INFO:
                retry_after = parse_go_duration(str(detail.get("retryDelay", "")))
            if detail.get("@type") == _QUOTA_FAILURE:
                quota_ids = [str(v.get("quotaId", "")) for v in detail.get("violations") or []]
                per_day = per_day or any("PerDay" in q for q in quota_ids)
        fatal = status in (401, 403) or "API_KEY_INVALID" in reasons
        retryable = status_is_retryable(status, headers) and not per_day and not fatal
        error_class = "quota_per_day" if per_day else (code_name or f"http_{status}")
        return ErrorVerdict(
            error_class=error_class,
            message=message or f"HTTP {status}",
            retryable=retryable,
            fatal_for_run=fatal,
            retry_after_s=retry_after if retry_after and retry_after > 0 else None,
        )


def _completion_tokens(usage: dict[str, Any]) -> int | None:
    """Output tokens as billed: candidates plus thoughts (``totalTokenCount`` includes both)."""
    candidates = usage.get("candidatesTokenCount")
    thoughts = usage.get("thoughtsTokenCount")
    if candidates is None and thoughts is None:
        return None
    return int(candidates or 0) + int(thoughts or 0)


def _error_fields(body: bytes) -> tuple[str | None, str, list[dict[str, Any]]]:
    """(status name, message, details) of a google.rpc error body."""
    try:
        error = json.loads(body)["error"]
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        return error.get("status"), str(error.get("message") or ""), details
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, body[:200].decode("utf-8", "replace").strip(), []
