"""OpenAI Chat Completions — and every OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...).

``base_url`` ends in ``/v1`` as in the official SDK; we append ``/chat/completions``.

Reasoning: ``reasoning_effort`` (low, medium, high); there is no token budget knob. The trace of
OpenAI's own models is never returned, DeepSeek-style APIs and vLLM return it in
``message.reasoning_content`` (vLLM >= 0.11: ``reasoning``), open models without a parser
inline ``<think>`` tags. ``completion_tokens`` includes ``reasoning_tokens``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

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
)
from distillery.generators.providers.reasoning import asked
from distillery.generators.providers.registry import register
from distillery.generators.providers.traces import visibility
from distillery.generators.ratelimit_headers import RateLimitHeaders, reset_after
from distillery.generators.retry import parse_retry_after, status_is_retryable

if TYPE_CHECKING:
    from distillery.generators.providers.base import SubmissionsFactory

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
}


@register("openai")
class OpenAIProvider(Provider):
    """Chat Completions over httpx, no SDK at run time."""

    rate_limit_counts_max_tokens = True
    rate_limit_headers = RateLimitHeaders(
        "x-ratelimit-{field}-{kind}", ("requests", "tokens"), reset_after
    )
    # OpenAI Batch: one JSONL file of at most 50,000 requests and 200 MB, one model per file.
    # OpenAI-compatible servers (vLLM, llama.cpp) have no batch API, but a teacher's base_url
    # cannot tell them from OpenAI or Azure OpenAI: their ``delivery: batch`` fails when sent.
    submission_limits: ClassVar[SubmissionLimits | None] = SubmissionLimits(
        max_requests=50_000, max_bytes=200_000_000, one_model=True
    )

    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        params = teacher.params
        body: dict[str, Any] = {"model": teacher.model, "messages": messages}
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
        thinking = self.reasoning_fields(teacher)
        if params.max_tokens is not None:
            # OpenAI-compatible servers still widely expect the older name; OpenAI's reasoning
            # models (the ones that take reasoning_effort) refuse it for the newer one.
            name = "max_completion_tokens" if "reasoning_effort" in thinking else "max_tokens"
            body[name] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = params.stop
        body.update(thinking)
        body.update(params.extra_body)
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return HttpCall(url=f"{teacher.base_url}/chat/completions", headers=headers, body=body)

    def reasoning_problem(self, teacher: TeacherConfig) -> str | None:
        reasoning = asked(teacher)
        if reasoning is not None and reasoning.budget_tokens is not None:
            return (
                "reasoning.budget_tokens: the OpenAI wire format has no thinking budget; "
                "use effort: low|medium|high"
            )
        return None

    def reasoning_fields(self, teacher: TeacherConfig) -> dict[str, Any]:
        reasoning = asked(teacher)
        if reasoning is not None and reasoning.effort is not None:
            return {"reasoning_effort": reasoning.effort}
        return {}

    def structured_output(self, schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
        json_schema = {"name": name, "schema": schema, "strict": strict}
        return {"response_format": {"type": "json_schema", "json_schema": json_schema}}

    def parse_success(self, payload: Any, headers: dict[str, str]) -> Completion:
        try:
            choice = payload["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            raw_finish = choice.get("finish_reason")
            usage = payload.get("usage") or {}
            if not isinstance(text, str) or not isinstance(usage, dict):
                raise TypeError("content or usage of the wrong type")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"unexpected chat.completion shape: {exc}") from exc
        finish: FinishReason = _FINISH.get(raw_finish or "", "other")
        if message.get("refusal"):
            finish, text = "refusal", text or str(message["refusal"])
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        trace = _trace(message)
        reasoning_tokens = completion_details.get("reasoning_tokens")
        return Completion(
            text=text,
            finish_reason=finish,
            finish_reason_raw=raw_finish,
            model_version=payload.get("model"),
            response_id=payload.get("id"),
            request_id=headers.get("x-request-id"),
            system_fingerprint=payload.get("system_fingerprint"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=prompt_details.get("cached_tokens"),
            reasoning_tokens=reasoning_tokens,
            rate_limits=self.parse_rate_limits(headers),
            reasoning_text=trace,
            reasoning_visibility=visibility(trace, reasoning_tokens),
        )

    def submissions(self) -> SubmissionsFactory | None:
        from distillery.generators.providers.openai_submissions import OpenAISubmissions

        return OpenAISubmissions

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ErrorVerdict:
        message, code, kind = _error_fields(body)
        retryable = status_is_retryable(status, headers)
        fatal = status in (401, 403)
        if code == "insufficient_quota" or message.startswith("Request too large"):
            retryable = False
        error_class = _error_class(status, code, kind)
        return ErrorVerdict(
            error_class=error_class,
            message=message or f"HTTP {status}",
            retryable=retryable and not fatal,
            fatal_for_run=fatal,
            retry_after_s=parse_retry_after(headers),
        )


def _trace(message: dict[str, Any]) -> str | None:
    """The trace a reasoning server returns beside the answer: ``reasoning_content``
    (DeepSeek, vLLM < 0.11, llama.cpp) or ``reasoning`` (vLLM >= 0.11, OpenRouter).
    OpenAI's own models return none (only ``reasoning_tokens``)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _error_fields(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, type) from an OpenAI or vLLM-style error body; tolerant of anything."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip(), None, None
    error = payload.get("error", payload) if isinstance(payload, dict) else {}
    if not isinstance(error, dict):
        return str(error)[:200], None, None
    code = error.get("code")
    return str(error.get("message") or ""), None if code is None else str(code), error.get("type")


def _error_class(status: int, code: str | None, kind: str | None) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "insufficient_quota" if code == "insufficient_quota" else "rate_limit_error"
    if status >= 500:
        return "server_error"
    return kind or code or f"http_{status}"


@register("local")
class LocalProvider(OpenAIProvider):
    """The embedded local teacher (``distillery teacher serve``): OpenAI-compatible wire
    format, its own provider name so lineage, terms and prices can tell it apart.

    llama.cpp's server answers with the alias of the weights it loaded
    (``<file>@sha256:<digest>``), whatever the request names, and that answer becomes the
    sample's model version. The request names the same alias for the job's model, so a log of
    requests says which weights were asked for.
    """

    submission_limits = None  # llama.cpp's server has no batch API

    def submissions(self) -> SubmissionsFactory | None:
        """None: llama.cpp's server, as OpenAI-compatible servers generally, has no batch
        API."""
        return None

    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        from distillery.local_teacher import model_alias

        call = super().build_call(teacher, messages, api_key)
        return HttpCall(call.url, call.headers, {**call.body, "model": model_alias(teacher.model)})
