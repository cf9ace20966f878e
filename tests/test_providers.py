"""Wire-format unit tests: request shapes and error verdicts, no network.

End-to-end behaviour over HTTP is tested against the emulator (test_providers_http.py).
"""

import json

import pytest
from pydantic import ValidationError

from distillery.config import GenerationParams, TeacherConfig
from distillery.generators.providers.registry import get_provider, provider_names

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Why?"},
]


def teacher(provider: str, base_url: str, **params: object) -> TeacherConfig:
    return TeacherConfig(
        name="t",
        provider=provider,
        model="m-1",
        base_url=base_url,
        params=GenerationParams.model_validate(params),
    )


def test_registry_knows_three_providers() -> None:
    assert provider_names() == ["anthropic", "gemini", "local", "openai"]
    with pytest.raises(KeyError, match="unknown provider 'nope'"):
        get_provider("nope")


def test_openai_request_shape() -> None:
    call = get_provider("openai").build_call(
        teacher("openai", "https://api.example/v1", temperature=0.3, max_tokens=9, seed=4),
        MESSAGES,
        "sk-x",
    )
    assert call.url == "https://api.example/v1/chat/completions"
    assert call.headers["authorization"] == "Bearer sk-x"
    assert call.body["messages"] == MESSAGES
    assert (call.body["temperature"], call.body["max_tokens"], call.body["seed"]) == (0.3, 9, 4)


def test_anthropic_request_shape() -> None:
    call = get_provider("anthropic").build_call(
        teacher("anthropic", "https://api.anthropic.test", temperature=1.5, stop=["END"]),
        MESSAGES,
        "k",
    )
    assert call.url == "https://api.anthropic.test/v1/messages"
    assert call.headers["x-api-key"] == "k" and call.headers["anthropic-version"] == "2023-06-01"
    assert call.body["system"] == "Be brief."
    assert [m["role"] for m in call.body["messages"]] == ["user", "assistant", "user"]
    assert call.body["max_tokens"] == 4096  # required by the API
    assert call.body["temperature"] == 1.0  # Anthropic's range ends at 1
    assert call.body["stop_sequences"] == ["END"]


def test_gemini_request_shape() -> None:
    call = get_provider("gemini").build_call(
        teacher("gemini", "https://gl.test", top_p=0.9, max_tokens=50), MESSAGES, "g"
    )
    assert call.url == "https://gl.test/v1beta/models/m-1:generateContent"
    assert call.headers["x-goog-api-key"] == "g"
    assert call.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in call.body["contents"]] == ["user", "model", "user"]
    assert call.body["generationConfig"] == {"topP": 0.9, "maxOutputTokens": 50}
    stable = teacher("gemini", "https://gl.test").model_copy(update={"api_version": "v1"})
    call = get_provider("gemini").build_call(stable, MESSAGES, "g")
    assert call.url == "https://gl.test/v1/models/m-1:generateContent"


def test_api_version_is_a_gemini_option() -> None:
    spec = {"name": "t", "model": "m", "base_url": "https://x.test"}
    chosen = TeacherConfig.model_validate({**spec, "provider": "gemini", "api_version": "v1"})
    assert chosen.api_version == "v1"
    with pytest.raises(ValidationError, match="api_version is a gemini option"):
        TeacherConfig.model_validate({**spec, "provider": "openai", "api_version": "v1"})
    with pytest.raises(ValidationError, match="v1beta"):
        TeacherConfig.model_validate({**spec, "provider": "gemini", "api_version": "v2"})


def test_parse_success_each_format() -> None:
    openai = get_provider("openai").parse_success(
        {
            "id": "chatcmpl-1",
            "model": "m-1-2024",
            "choices": [{"message": {"content": "ok", "refusal": None}, "finish_reason": "length"}],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 1,
                "completion_tokens_details": {"reasoning_tokens": 7},
            },
        },
        {"x-request-id": "req_1", "x-ratelimit-remaining-requests": "9"},
    )
    assert (openai.text, openai.finish_reason, openai.reasoning_tokens) == ("ok", "length", 7)
    assert openai.rate_limits == {"requests_remaining": 9.0}
    anthropic = get_provider("anthropic").parse_success(
        {
            "id": "msg_1",
            "model": "m-1-20250101",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "stop_reason": "refusal",
            "usage": {"input_tokens": 5, "output_tokens": 2},
        },
        {"request-id": "r"},
    )
    assert (anthropic.text, anthropic.finish_reason, anthropic.request_id) == ("ab", "refusal", "r")
    gemini = get_provider("gemini").parse_success(
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": "think", "thought": True}, {"text": "answer"}]},
                    "finishReason": "SAFETY",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 4,
                "candidatesTokenCount": 2,
                "thoughtsTokenCount": 3,
            },
            "modelVersion": "m-1-001",
        },
        {},
    )
    assert (gemini.text, gemini.finish_reason, gemini.completion_tokens) == (
        "answer",
        "content_filter",
        5,
    )
    blocked = get_provider("gemini").parse_success(
        {"promptFeedback": {"blockReason": "SAFETY"}}, {}
    )
    assert (blocked.text, blocked.finish_reason) == ("", "content_filter")


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("provider", "status", "headers", "payload", "retryable", "fatal", "error_class"),
    [
        (
            "openai",
            401,
            {},
            {"error": {"message": "bad key", "code": "invalid_api_key"}},
            False,
            True,
            "authentication_error",
        ),
        (
            "openai",
            429,
            {"retry-after": "2"},
            {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
            True,
            False,
            "rate_limit_error",
        ),
        (
            "openai",
            429,
            {},
            {"error": {"message": "quota", "code": "insufficient_quota"}},
            False,
            False,
            "insufficient_quota",
        ),
        (
            "openai",
            429,
            {},
            {"error": {"message": "Request too large for gpt-4"}},
            False,
            False,
            "rate_limit_error",
        ),
        (
            "openai",
            500,
            {"x-should-retry": "false"},
            {"error": {"message": "x"}},
            False,
            False,
            "server_error",
        ),
        (
            "openai",
            503,
            {},
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            True,
            False,
            "server_error",
        ),
        (
            "anthropic",
            529,
            {},
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            True,
            False,
            "overloaded_error",
        ),
        (
            "anthropic",
            429,
            {},
            {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "enforced_spend_limit_reached: spend limit",
                },
            },
            False,
            False,
            "spend_limit_reached",
        ),
        (
            "anthropic",
            401,
            {},
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
            },
            False,
            True,
            "authentication_error",
        ),
        (
            "gemini",
            429,
            {},
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "q",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [{"quotaId": "GenerateRequestsPerDayPerProject"}],
                        }
                    ],
                }
            },
            False,
            False,
            "quota_per_day",
        ),
        (
            "gemini",
            400,
            {},
            {
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "message": "API key not valid.",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                        }
                    ],
                }
            },
            False,
            True,
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_error_verdicts(
    provider: str,
    status: int,
    headers: dict[str, str],
    payload: object,
    retryable: bool,
    fatal: bool,
    error_class: str,
) -> None:
    verdict = get_provider(provider).classify_error(status, headers, body(payload))
    assert (verdict.retryable, verdict.fatal_for_run, verdict.error_class) == (
        retryable,
        fatal,
        error_class,
    )


def test_gemini_retry_info_is_the_hint() -> None:
    payload = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "q",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": "45.837906927s",
                },
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "GenerateRequestsPerMinutePerProject"}],
                },
            ],
        }
    }
    verdict = get_provider("gemini").classify_error(429, {}, body(payload))
    assert verdict.retryable and verdict.retry_after_s == pytest.approx(45.837906927)


def test_error_bodies_that_are_not_json() -> None:
    for name in provider_names():
        verdict = get_provider(name).classify_error(502, {}, b"<html>Bad Gateway</html>")
        assert verdict.retryable and "Bad Gateway" in verdict.message


def test_rate_limit_headers_are_normalised() -> None:
    from datetime import UTC, datetime

    from distillery.generators.providers.anthropic import AnthropicProvider

    assert get_provider("openai").parse_rate_limits(
        {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-reset-tokens": "12ms",
            "x-ratelimit-remaining-requests": "lots",  # unparsable: left out
        }
    ) == {
        "requests_limit": 10000.0,
        "tokens_remaining": 149984.0,
        "requests_reset_s": 360.0,
        "tokens_reset_s": pytest.approx(0.012),
    }
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert AnthropicProvider.rate_limit_headers.parse(
        {
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:30Z",
            "anthropic-ratelimit-requests-reset": "garbage",
        },
        now=now,
    ) == {"input_tokens_remaining": 39000.0, "input_tokens_reset_s": 30.0}
