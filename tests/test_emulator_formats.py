"""The three wire formats as the official SDKs see them: answers parse, errors raise the class
each SDK's users catch, and the SDKs' own retry logic reads the emulator's hints."""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.generators.tokens import count_message_tokens, count_tokens

KEY = "emulator-test-key-0123456789"
SYSTEM = "You are a patient teacher."
QUESTION = "Explain how glaciers carve valleys, with one practical example."


# SDK clients are slow to build (an SSL context each, ~50-200 ms), so each key gets one client
# and each emulator a cheap copy of it (sharing the HTTP connection pool) or per-call options.
_NOWHERE = "http://127.0.0.1:9"


@functools.cache
def _openai(key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=_NOWHERE, api_key=key, max_retries=0, timeout=10)


@functools.cache
def _anthropic(key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=_NOWHERE, api_key=key, max_retries=0, timeout=10)


@functools.cache
def _gemini(key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=_NOWHERE))


def openai_client(emu: RunningEmulator, key: str = KEY, retries: int = 0) -> openai.OpenAI:
    return _openai(key).with_options(base_url=emu.url + "/v1", max_retries=retries)


def anthropic_client(emu: RunningEmulator, key: str = KEY, retries: int = 0) -> anthropic.Anthropic:
    return _anthropic(key).with_options(base_url=emu.url, max_retries=retries)


class GeminiTarget:
    """A genai client plus the emulator it calls (python-genai takes the URL per request)."""

    def __init__(self, emu: RunningEmulator, key: str) -> None:
        self.client = _gemini(key)
        self.http = genai_types.HttpOptions(base_url=emu.url, api_version="v1beta", timeout=10_000)


def gemini_client(emu: RunningEmulator, key: str = KEY) -> GeminiTarget:
    return GeminiTarget(emu, key)


def ask_openai(client: openai.OpenAI, model: str = "gpt-4o-mini", **extra: Any) -> Any:
    messages: Any = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ]
    return client.chat.completions.create(model=model, messages=messages, **extra)


def ask_anthropic(
    client: anthropic.Anthropic, model: str = "claude-3-5-haiku", max_tokens: int = 2048
) -> Any:
    return client.messages.create(
        model=model,
        max_tokens=max_tokens,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
    )


def ask_gemini(target: GeminiTarget, model: str = "gemini-2.0-flash", **config: Any) -> Any:
    settings = genai_types.GenerateContentConfig(
        system_instruction=SYSTEM, http_options=target.http, **config
    )
    return target.client.models.generate_content(model=model, contents=QUESTION, config=settings)


def faulty(fault: str) -> RunningEmulator:
    return RunningEmulator(
        EmulatorOptions(seed=5, require_key=KEY, fault_rate=1.0, faults=[fault], hang_s=0.0)
    )


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    with RunningEmulator(EmulatorOptions(seed=5, require_key=KEY)) as running:
        yield running


def expected_usage(model: str) -> int:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    return count_message_tokens(messages, model)


def test_openai_sdk_parses_a_success(emu: RunningEmulator) -> None:
    raw = openai_client(emu).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
        ],
    )
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_usage("gpt-4o-mini")
    assert completion.usage.completion_tokens == count_tokens(text, "gpt-4o-mini")
    assert raw.headers["x-ratelimit-remaining-requests"].isdigit()


def test_anthropic_sdk_parses_a_success(emu: RunningEmulator) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    raw = anthropic_client(emu).messages.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=2048,
        system=[{"type": "text", "text": SYSTEM}],
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
    )
    message = raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-3-5-haiku-20241022"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert re.fullmatch(r"msg_01[A-Za-z0-9]{22}", message.id)
    (block,) = message.content
    assert block.type == "text"
    assert block.text
    # System as a list of blocks counts like the same system string.
    assert message.usage.input_tokens == expected_usage("claude-3-5-haiku")
    assert message.usage.output_tokens == count_tokens(block.text, "claude-3-5-haiku")
    headers = raw.headers
    assert re.fullmatch(r"req_[A-Za-z0-9]{24}", headers["request-id"])
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert int(headers[f"anthropic-ratelimit-{kind}-limit"]) > 0
        assert headers[f"anthropic-ratelimit-{kind}-remaining"].isdigit()
        reset = dt.datetime.strptime(
            headers[f"anthropic-ratelimit-{kind}-reset"], "%Y-%m-%dT%H:%M:%SZ"
        )
        assert reset.replace(tzinfo=dt.UTC) >= before
    assert int(headers["anthropic-ratelimit-tokens-remaining"]) % 1000 == 0


def test_gemini_sdk_parses_a_success(emu: RunningEmulator) -> None:
    response = ask_gemini(gemini_client(emu))
    assert response.text
    assert response.model_version == "gemini-2.0-flash-001"
    assert response.response_id
    (candidate,) = response.candidates
    assert candidate.finish_reason == genai_types.FinishReason.STOP
    assert candidate.content.role == "model"
    usage = response.usage_metadata
    assert usage.prompt_token_count == expected_usage("gemini-2.0-flash")
    assert usage.candidates_token_count == count_tokens(response.text, "gemini-2.0-flash")
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count


def test_gemini_sdk_with_its_defaults_uses_the_stable_path(emu: RunningEmulator) -> None:
    """google-genai 3.x, told no api_version, posts to /v1 (the real service answers both)."""
    client = genai.Client(api_key=KEY, http_options=genai_types.HttpOptions(base_url=emu.url))
    # What the SDK defaults to (google-genai 3.6: v1), so this test says what it claims.
    assert client._api_client._http_options.api_version == "v1"
    settings = genai_types.GenerateContentConfig(system_instruction=SYSTEM)
    response = client.models.generate_content(
        model="gemini-2.0-flash", contents=QUESTION, config=settings
    )
    assert response.text == ask_gemini(gemini_client(emu)).text  # same answer as at v1beta
    assert response.model_version == "gemini-2.0-flash-001"
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == expected_usage("gemini-2.0-flash")


def test_same_conversation_same_answer_in_every_format(emu: RunningEmulator) -> None:
    model = "teacher-x"
    texts = {
        ask_openai(openai_client(emu), model=model).choices[0].message.content,
        ask_anthropic(anthropic_client(emu), model=model).content[0].text,
        ask_gemini(gemini_client(emu), model=model).text,
    }
    assert len(texts) == 1


def test_token_limits_end_answers_as_each_api_says(emu: RunningEmulator) -> None:
    cut_openai = ask_openai(openai_client(emu), max_completion_tokens=5)
    assert cut_openai.choices[0].finish_reason == "length"
    assert cut_openai.usage.completion_tokens == 5
    cut_anthropic = ask_anthropic(anthropic_client(emu), max_tokens=5)
    assert cut_anthropic.stop_reason == "max_tokens"
    assert cut_anthropic.usage.output_tokens == 5
    cut_gemini = ask_gemini(gemini_client(emu), max_output_tokens=5)
    assert cut_gemini.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert cut_gemini.usage_metadata.candidates_token_count == 5


def test_wrong_key_raises_each_sdks_auth_error(emu: RunningEmulator) -> None:
    with pytest.raises(openai.AuthenticationError) as openai_error:
        ask_openai(openai_client(emu, key="sk-wrong"))
    assert openai_error.value.status_code == 401
    assert openai_error.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as anthropic_error:
        ask_anthropic(anthropic_client(emu, key="sk-wrong"))
    assert anthropic_error.value.status_code == 401
    body = anthropic_error.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "authentication_error"
    assert body["request_id"] == anthropic_error.value.request_id
    # Gemini answers a wrong key with 400 INVALID_ARGUMENT + ErrorInfo API_KEY_INVALID, not 401.
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        ask_gemini(gemini_client(emu, key="wrong"))
    assert gemini_error.value.code == 400
    assert gemini_error.value.status == "INVALID_ARGUMENT"
    details = gemini_error.value.details["error"]["details"]
    assert details[0]["reason"] == "API_KEY_INVALID"


def test_gemini_missing_key_is_403_and_key_in_query_is_accepted(emu: RunningEmulator) -> None:
    path = "/v1beta/models/gemini-2.0-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]}
    with httpx.Client(base_url=emu.url) as http:
        missing = http.post(path, json=body)
        in_query = http.post(path, params={"key": KEY}, json=body)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    assert in_query.status_code == 200


@pytest.mark.parametrize(
    ("fault", "openai_error", "anthropic_error", "gemini_error", "status"),
    [
        ("429", openai.RateLimitError, anthropic.RateLimitError, genai_errors.ClientError, 429),
        (
            "500",
            openai.InternalServerError,
            anthropic.InternalServerError,
            genai_errors.ServerError,
            500,
        ),
        (
            "503",
            openai.InternalServerError,
            anthropic.ServiceUnavailableError,
            genai_errors.ServerError,
            503,
        ),
        (
            "529",
            openai.InternalServerError,
            anthropic.OverloadedError,
            genai_errors.ServerError,
            529,
        ),
    ],
)
def test_faults_raise_each_sdks_error_class(
    fault: str,
    openai_error: type[openai.APIStatusError],
    anthropic_error: type[anthropic.APIStatusError],
    gemini_error: type[genai_errors.APIError],
    status: int,
) -> None:
    with faulty(fault) as emu:
        with pytest.raises(openai_error) as from_openai:
            ask_openai(openai_client(emu))
        with pytest.raises(anthropic_error) as from_anthropic:
            ask_anthropic(anthropic_client(emu))
        with pytest.raises(gemini_error) as from_gemini:
            ask_gemini(gemini_client(emu))
        stats = emu.stats()
    assert from_openai.value.status_code == status
    assert from_anthropic.value.status_code == status
    assert from_gemini.value.code == status
    assert stats["requests"] == 3
    assert stats["served_ok"] == 0
    assert stats["faults"] == {fault: 3}


def test_anthropic_overloaded_is_an_internal_server_error_with_its_type() -> None:
    with faulty("529") as emu, pytest.raises(anthropic.InternalServerError) as caught:
        ask_anthropic(anthropic_client(emu))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "overloaded_error"


def test_spend_limits_are_fatal_in_each_sdk() -> None:
    with faulty("spend-limit") as emu:
        with pytest.raises(openai.RateLimitError) as from_openai:
            ask_openai(openai_client(emu))
        with pytest.raises(anthropic.RateLimitError) as from_anthropic:
            ask_anthropic(anthropic_client(emu))
        with pytest.raises(genai_errors.ClientError) as from_gemini:
            ask_gemini(gemini_client(emu))
    assert from_openai.value.code == "insufficient_quota"
    body = from_anthropic.value.body
    assert isinstance(body, dict)
    assert body["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
    assert "enforced_spend_limit_reached" in body["error"]["message"]
    assert "retry-after" not in from_anthropic.value.response.headers
    details = from_gemini.value.details["error"]["details"]
    quota_ids = [v["quotaId"] for d in details for v in d.get("violations", [])]
    assert quota_ids and all("PerDay" in q for q in quota_ids)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_sdk_retries_after_the_hinted_wait(sdk: str) -> None:
    # retry-after-ms: 200. Without the hint both SDKs would wait 0.375-0.5 s.
    with faulty("429-ms") as emu:
        start = time.perf_counter()
        if sdk == "openai":
            with pytest.raises(openai.RateLimitError):
                ask_openai(openai_client(emu, retries=1))
        else:
            with pytest.raises(anthropic.RateLimitError):
                ask_anthropic(anthropic_client(emu, retries=1))
        elapsed = time.perf_counter() - start
        stats = emu.stats()
    assert stats["requests"] == 2
    assert 0.19 <= elapsed < 0.37


def test_openai_sdk_gives_up_on_a_retry_after_over_its_cap() -> None:
    with faulty("429-long") as emu:
        with pytest.raises(openai.RateLimitError) as caught:
            ask_openai(openai_client(emu, retries=2))
        assert emu.stats()["requests"] == 1
    assert caught.value.response.headers["retry-after"] == "600"


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_sdk_obeys_x_should_retry_false(sdk: str) -> None:
    with faulty("no-retry-5xx") as emu:
        if sdk == "openai":
            with pytest.raises(openai.InternalServerError):
                ask_openai(openai_client(emu, retries=2))
        else:
            with pytest.raises(anthropic.InternalServerError):
                ask_anthropic(anthropic_client(emu, retries=2))
        assert emu.stats()["requests"] == 1


def test_sdks_see_flagged_answers() -> None:
    with faulty("refusal") as emu:
        refused = ask_openai(openai_client(emu)).choices[0].message
        declined = ask_anthropic(anthropic_client(emu))
        stats = emu.stats()
    assert refused.content is None
    assert refused.refusal
    assert declined.stop_reason == "refusal"
    assert stats["served_flagged"] == 2
    assert stats["served_ok"] == 0
    with faulty("content-filter") as emu:
        filtered = ask_gemini(gemini_client(emu))
    (candidate,) = filtered.candidates
    assert candidate.finish_reason == genai_types.FinishReason.SAFETY
    assert candidate.content is None
    assert filtered.text is None


def test_sdks_raise_connection_errors_on_transport_faults() -> None:
    with faulty("reset") as emu:
        with pytest.raises(openai.APIConnectionError):
            ask_openai(openai_client(emu))
        with pytest.raises(anthropic.APIConnectionError):
            ask_anthropic(anthropic_client(emu))
        # python-genai does not wrap transport errors: its HTTP library's error comes through.
        with pytest.raises(Exception) as from_gemini:
            ask_gemini(gemini_client(emu))
        assert emu.stats()["by_status"] == {"reset": 3}
    error = type(from_gemini.value)
    assert error.__module__.partition(".")[0] in {"httpx", "httpx2"}
    assert error.__name__ in {"ReadError", "RemoteProtocolError"}


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/no-such-thing", {"error"}),
        ("/v1/messages/nope", {"type", "error", "request_id"}),
        ("/v1beta/models/gemini-2.0-flash:nope", {"error"}),
        ("/v1/models/gemini-2.0-flash:nope", {"error"}),
    ],
)
def test_unknown_paths_answer_in_the_nearest_formats_shape(
    emu: RunningEmulator, path: str, shape: set[str]
) -> None:
    with httpx.Client(base_url=emu.url) as http:
        response = http.post(path, json={})
    assert response.status_code == 404
    payload = response.json()
    assert set(payload) == shape
    if ":" in path:
        assert payload["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "claude-3-5-haiku", "messages": []}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": []}, "model: Field required"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages: at least one"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
        ),
    ],
)
def test_anthropic_invalid_requests_are_bad_request_errors(
    emu: RunningEmulator, body: dict[str, Any], message: str
) -> None:
    with httpx.Client(base_url=emu.url, headers={"x-api-key": KEY}) as http:
        response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


def test_gemini_invalid_requests_are_invalid_argument(emu: RunningEmulator) -> None:
    path = "/v1beta/models/gemini-2.0-flash:generateContent"
    with httpx.Client(base_url=emu.url, headers={"x-goog-api-key": KEY}) as http:
        no_contents = http.post(path, json={})
        bad_role = http.post(path, json={"contents": [{"role": "bot", "parts": [{"text": "x"}]}]})
        bad_json = http.post(path, content=b"{nope")
    for response in (no_contents, bad_role, bad_json):
        assert response.status_code == 400
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "contents" in no_contents.json()["error"]["message"]
