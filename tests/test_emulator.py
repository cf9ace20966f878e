"""The provider emulator over real loopback HTTP: what clients and benchmarks rely on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.formats.openai import go_duration
from distillery.emulator.window import UsageWindow
from distillery.generators.tokens import count_message_tokens, count_tokens

MODEL = "gpt-4o-mini"
PATH = "/v1/chat/completions"
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$")
TOPICS = [
    "volcanoes",
    "sourdough baking",
    "quantum tunnelling",
    "medieval castles",
    "kubernetes autoscaling",
    "honeybee colonies",
    "glacier retreat",
    "jazz improvisation",
    "marathon training",
    "compiler optimisation",
    "coral reefs",
    "renaissance painting",
    "battery chemistry",
    "chess openings",
    "urban gardening",
    "cryptographic hashing",
    "monsoon forecasting",
    "violin making",
    "tidal energy",
    "ancient astronomy",
]


def chat(content: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def prompt(topic: str) -> str:
    return f"Explain {topic} to a curious teenager, with one practical example."


def answer(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(PATH, json=body)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def content(client: httpx.Client, body: dict[str, Any]) -> str:
    text: str = answer(client, body)["choices"][0]["message"]["content"]
    return text


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = payload["error"]
    return error


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(EmulatorOptions(seed=7)) as emu:
        yield emu


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=10) as http:
        yield http


def test_same_request_same_content_even_after_restart() -> None:
    body = chat(prompt("volcanoes"))
    with RunningEmulator(EmulatorOptions(seed=7)) as emu, httpx.Client(base_url=emu.url) as http:
        first, second = answer(http, body), answer(http, body)
    with RunningEmulator(EmulatorOptions(seed=7)) as emu, httpx.Client(base_url=emu.url) as http:
        third = answer(http, body)
    texts = {a["choices"][0]["message"]["content"] for a in (first, second, third)}
    assert len(texts) == 1
    assert first["id"] != second["id"]


def test_different_prompts_give_different_content_about_the_prompt(client: httpx.Client) -> None:
    texts = {topic: content(client, chat(prompt(topic))) for topic in TOPICS}
    assert len(set(texts.values())) == len(TOPICS)
    mentions_topic = 0
    for topic, text in texts.items():
        prompt_words = set(re.findall(r"[a-z]{5,}", prompt(topic).lower()))
        answer_words = set(re.findall(r"[a-z]{5,}", text.lower()))
        assert prompt_words & answer_words, (topic, text)
        mentions_topic += any(word in answer_words for word in topic.split())
    # The shared wording of the prompts competes with the topic, but the topic mostly wins.
    assert mentions_topic >= len(TOPICS) * 3 // 4


def test_emulator_seed_and_request_seed_change_content() -> None:
    body = chat(prompt("coral reefs"))
    texts = []
    for seed in (1, 2):
        with (
            RunningEmulator(EmulatorOptions(seed=seed)) as emu,
            httpx.Client(base_url=emu.url) as http,
        ):
            texts.append(content(http, body))
            texts.append(content(http, {**body, "seed": 99}))
    assert len(set(texts)) == 4


def test_multipart_content_answers_like_plain_text(client: httpx.Client) -> None:
    text = prompt("chess openings")
    parts = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    assert content(client, parts) == content(client, chat(text))


def test_lengths_vary_and_skew_short(client: httpx.Client) -> None:
    counts = [
        len(content(client, chat(f"{prompt(topic)} Variant {i}.")).split())
        for topic in TOPICS
        for i in range(3)
    ]
    assert min(counts) >= 20
    assert max(counts) <= 450
    assert max(counts) >= 150
    assert len(set(counts)) >= 20
    assert statistics.median(counts) < 150


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4"])
def test_usage_equals_tiktoken_counts(client: httpx.Client, model: str) -> None:
    messages = [
        {"role": "system", "content": "You are a patient teacher."},
        {"role": "user", "content": prompt("battery chemistry")},
    ]
    payload = answer(client, {"model": model, "messages": messages})
    text = payload["choices"][0]["message"]["content"]
    usage = payload["usage"]
    assert usage["prompt_tokens"] == count_message_tokens(messages, model)
    assert usage["completion_tokens"] == count_tokens(text, model)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize(
    ("requested", "returned"),
    [
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("gpt-4", "gpt-4-0613"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("my-teacher", r"my-teacher-20\d\d-\d\d-\d\d"),
    ],
)
def test_returned_model_is_a_dated_snapshot(
    client: httpx.Client, requested: str, returned: str
) -> None:
    models = {answer(client, chat("hi", model=requested))["model"] for _ in range(2)}
    assert len(models) == 1
    (model,) = models
    assert re.fullmatch(returned, model)


@pytest.mark.parametrize("param", ["max_completion_tokens", "max_tokens"])
def test_max_tokens_truncates_with_finish_length(client: httpx.Client, param: str) -> None:
    body = chat(prompt("glacier retreat"))
    full = answer(client, body)
    full_text = full["choices"][0]["message"]["content"]
    full_tokens = full["usage"]["completion_tokens"]
    assert full_tokens > 12
    assert full["choices"][0]["finish_reason"] == "stop"

    cut = answer(client, {**body, param: 12})
    cut_text = cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 12 == count_tokens(cut_text, MODEL)
    assert full_text.startswith(cut_text)
    assert len(cut_text) < len(full_text)

    roomy = answer(client, {**body, param: full_tokens})
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["choices"][0]["message"]["content"] == full_text


def test_response_has_openai_shape_and_headers(client: httpx.Client) -> None:
    before = time.time()
    first = client.post(PATH, json=chat(prompt("jazz improvisation")))
    second = client.post(PATH, json=chat(prompt("violin making")))
    payload = first.json()

    assert set(payload) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    }
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{24}", payload["id"])
    assert payload["object"] == "chat.completion"
    assert isinstance(payload["created"], int)
    assert before - 2 <= payload["created"] <= time.time() + 2
    assert re.fullmatch(r"fp_[0-9a-f]{10}", payload["system_fingerprint"])
    (choice,) = payload["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": choice["message"]["content"], "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert isinstance(choice["message"]["content"], str)
    assert set(payload["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",  # as OpenAI sends it, cached_tokens 0 for a short prompt
    }
    assert payload["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}

    headers = first.headers
    assert headers["content-type"].startswith("application/json")
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    assert headers["x-request-id"] != second.headers["x-request-id"]
    assert int(headers["openai-processing-ms"]) >= 0
    assert headers["openai-version"]
    assert headers["x-ratelimit-limit-requests"] == "10000000"
    assert headers["x-ratelimit-limit-tokens"] == "10000000000"
    assert headers["x-ratelimit-remaining-requests"] == "9999999"
    assert second.headers["x-ratelimit-remaining-requests"] == "9999998"
    used = sum(r.json()["usage"]["total_tokens"] for r in (first, second))
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 10_000_000_000 - used
    assert GO_DURATION.match(second.headers["x-ratelimit-reset-requests"])
    assert GO_DURATION.match(second.headers["x-ratelimit-reset-tokens"])


def test_wrong_or_missing_key_is_401_without_echoing_keys() -> None:
    options = EmulatorOptions(require_key="sk-right-0123456789")
    with RunningEmulator(options) as emu, httpx.Client(base_url=emu.url) as http:
        body = chat("hello")
        wrong = http.post(PATH, json=body, headers={"Authorization": "Bearer sk-wrong-9876543210"})
        missing = http.post(PATH, json=body)
        right = http.post(PATH, json=body, headers={"Authorization": "Bearer sk-right-0123456789"})
        stats = emu.stats()
    error = error_of(wrong, 401)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    for key in ("sk-wrong", "9876543210", "sk-right", "0123456789"):
        assert key not in wrong.text
        assert key not in missing.text
    assert error_of(missing, 401)["message"].startswith("You didn't provide an API key")
    assert right.status_code == 200
    assert stats["by_status"] == {"200": 1, "401": 2}
    assert stats["served_ok"] == 1


def test_stats_count_requests_statuses_and_tokens(
    emulator: RunningEmulator, client: httpx.Client
) -> None:
    empty = emulator.stats()
    assert empty["requests"] == 0
    assert empty["first_request_at"] is None
    assert empty["last_request_at"] is None

    started = time.time()
    served = [answer(client, chat(prompt(topic))) for topic in TOPICS[:3]]
    client.post(PATH, content=b"{not json")
    client.post("/v1/no-such-endpoint", json={})
    client.get("/_emulator/stats")  # control routes are not API traffic
    finished = time.time()

    stats = emulator.stats()
    assert stats["requests"] == 5
    assert stats["by_status"] == {"200": 3, "400": 1, "404": 1}
    assert stats["served_ok"] == 3
    assert stats["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in served)
    assert stats["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in served)
    first, last = stats["first_request_at"], stats["last_request_at"]
    assert isinstance(first, float)
    assert isinstance(last, float)
    assert started <= first < last <= finished
    assert client.get("/_emulator/stats").json() == stats

    zeroed = client.post("/_emulator/reset").json()
    assert zeroed["requests"] == 0
    assert zeroed["by_status"] == {}
    assert zeroed["first_request_at"] is None
    assert emulator.stats() == zeroed
    after_reset = client.post(PATH, json=chat("hi"))
    assert after_reset.headers["x-ratelimit-remaining-requests"] == "9999999"


def test_concurrent_requests_are_all_answered_and_counted(emulator: RunningEmulator) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=emulator.url, timeout=10) as http:
            bodies = [chat(f"{prompt('honeybee colonies')} #{i}") for i in range(60)]
            responses = await asyncio.gather(*(http.post(PATH, json=b) for b in bodies))
            return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert statuses == [200] * 60
    stats = emulator.stats()
    assert stats["served_ok"] == 60
    assert stats["requests"] == 60


@pytest.mark.parametrize(
    ("body", "param", "code", "message"),
    [
        (b"{not json", None, None, "We could not parse the JSON body"),
        (b"[1, 2]", None, None, "We could not parse the JSON body"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', None, None, "you must provide"),
        (b'{"model": "gpt-4o-mini"}', "messages", "missing_required_parameter", "Missing"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "messages", "empty_array", "Invalid"),
        (
            b'{"model": "m", "messages": [{"role": "bot", "content": "hi"}]}',
            "messages[0].role",
            "invalid_value",
            "Invalid value",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "max_tokens",
            "integer_below_min_value",
            "Invalid 'max_tokens'",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": "x"}',
            "seed",
            "invalid_type",
            "Invalid type for 'seed'",
        ),
    ],
)
def test_invalid_requests_are_400(
    client: httpx.Client, body: bytes, param: str | None, code: str | None, message: str
) -> None:
    response = client.post(PATH, content=body, headers={"content-type": "application/json"})
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"].startswith(message)


def test_unknown_path_or_method_is_404(client: httpx.Client) -> None:
    error = error_of(client.post("/v1/completions", json=chat("hi")), 404)
    assert error["message"] == "Invalid URL (POST /v1/completions)"
    assert error_of(client.get(PATH), 404)["message"] == f"Invalid URL (GET {PATH})"


def test_latency_is_added_with_jitter() -> None:
    with (
        RunningEmulator(EmulatorOptions(latency_ms=60)) as emu,
        httpx.Client(base_url=emu.url) as http,
    ):
        http.post(PATH, json=chat("warm the connection"))
        elapsed, reported = [], []
        for i in range(8):
            start = time.perf_counter()
            response = http.post(PATH, json=chat(f"question {i}"))
            elapsed.append(time.perf_counter() - start)
            reported.append(int(response.headers["openai-processing-ms"]))
    assert min(elapsed) >= 0.029
    assert min(reported) >= 29
    assert max(elapsed) < 1.0
    assert len(set(reported)) > 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.006, "6ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (6.5, "6.5s"),
        (8.64, "8.64s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_usage_window_forgets_after_a_minute() -> None:
    window = UsageWindow(60)
    window.add(100.2, 10)
    window.add(130.5, 5)
    assert window.used(159.9) == (2, 15)
    assert window.used(160.0) == (1, 5)
    assert window.used(1000.0) == (0, 0)
    window.add(1000.5, 7)
    quota = window.quota(1000.6, limit_requests=60, limit_tokens=600)
    assert (quota.remaining_requests, quota.remaining_tokens) == (59, 593)
    assert quota.reset_requests_s == pytest.approx(1.0)


def test_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "distillery.emulator", "--port", "0", "--seed", "3"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ)) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            match = re.fullmatch(r"emulator listening on (http://127\.0\.0\.1:\d+)", line)
            assert match, line
            with httpx.Client(base_url=match.group(1)) as http:
                served = content(http, chat(prompt("tidal energy")))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    with (
        RunningEmulator(EmulatorOptions(seed=3)) as emu,
        httpx.Client(base_url=emu.url) as http,
    ):
        assert content(http, chat(prompt("tidal energy"))) == served


def test_a_dry_run_retargets_the_judge_too(tmp_path: Path) -> None:
    from distillery.config import JobConfig
    from distillery.emulator.retarget import emulated

    real = {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"}
    job = JobConfig.model_validate(
        {
            "prompts": {"path": str(tmp_path / "prompts.jsonl")},
            "teachers": [{"name": "t", "provider": "openai", "model": "gpt-4o-mini", **real}],
            "curation": {
                "judge": {
                    "teacher": {"name": "j", "provider": "anthropic", "model": "claude-x", **real}
                }
            },
        }
    )
    with emulated(job) as (dry, url):
        judge = dry.curation.judge
        assert judge is not None
        assert judge.teacher.base_url == url
        assert judge.teacher.api_key_env is None
        assert dry.teachers[0].base_url == f"{url}/v1"
        assert dry.teachers[0].api_key_env is None


def test_an_emulator_too_slow_to_start_is_one_line_not_a_timeout_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a machine loaded many times over the emulator's thread can start late; the run then
    ends with one line naming what did not start, instead of a bare TimeoutError."""
    from distillery.emulator import runner
    from distillery.errors import FatalRunError

    real_start = runner._start

    async def late_start(*args: Any) -> Any:
        await asyncio.sleep(0.5)
        return await real_start(*args)

    monkeypatch.setattr(runner, "_START_TIMEOUT_S", 0.1)
    monkeypatch.setattr(runner, "_start", late_start)
    late = RunningEmulator(EmulatorOptions())
    with pytest.raises(FatalRunError, match=r"^the built-in emulator did not start within 0.1 s"):
        late.start()
