"""Injected faults over raw HTTP: each looks as the real API sends it, in whichever format was
called, and the stats say exactly what was injected and what was served."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from distillery.cli import app
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.faults import FAULT_NAMES, FLAGGED, HTTP_ERRORS, TRANSPORT, Fault
from distillery.emulator.formats.base import LOADING_BODY
from distillery.generators.tokens import count_tokens

QUESTION = "Describe how tides follow the moon, with one practical example."
FORMATS = ("openai", "anthropic", "gemini")
STATUS = {
    "429": 429,
    "429-ms": 429,
    "429-date": 429,
    "429-long": 429,
    "spend-limit": 429,
    "gemini-retryinfo": 429,
    "gemini-perday": 429,
    "500": 500,
    "502": 502,
    "503": 503,
    "504": 504,
    "529": 529,
    "no-retry-5xx": 500,
    "loading": 503,
    "malformed-json": 200,
    "length": 200,
    "content-filter": 200,
    "empty": 200,
    "refusal": 200,
}
RETRY_HEADERS = ("retry-after", "retry-after-ms")


@dataclass(frozen=True)
class Call:
    """One request in one format."""

    path: str
    body: dict[str, Any]
    model: str


CALLS = {
    "openai": Call(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": QUESTION}]},
        "gpt-4o-mini",
    ),
    "anthropic": Call(
        "/v1/messages",
        {
            "model": "claude-3-5-haiku",
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": QUESTION}],
        },
        "claude-3-5-haiku",
    ),
    "gemini": Call(
        "/v1beta/models/gemini-2.0-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]},
        "gemini-2.0-flash",
    ),
}


def faulty(fault: str | list[str], rate: float = 1.0, hang_s: float = 0.0) -> RunningEmulator:
    faults = [fault] if isinstance(fault, str) else fault
    return RunningEmulator(EmulatorOptions(seed=11, fault_rate=rate, faults=faults, hang_s=hang_s))


# One client for the module: building one costs ~50 ms (its SSL context), a request ~2 ms.
_HTTP = httpx.Client(timeout=5)


def post(emu: RunningEmulator, fmt: str, timeout: float = 5.0) -> httpx.Response:
    call = CALLS[fmt]
    return _HTTP.post(emu.url + call.path, json=call.body, timeout=timeout)


def error_of(fmt: str, response: httpx.Response) -> dict[str, Any]:
    """The error object of ``response``, after checking the format's envelope."""
    payload = response.json()
    if fmt == "openai":
        assert set(payload) == {"error"}
        assert set(payload["error"]) == {"message", "type", "param", "code"}
        assert response.headers["x-request-id"]
    elif fmt == "anthropic":
        assert set(payload) == {"type", "error", "request_id"}
        assert payload["type"] == "error"
        assert payload["request_id"] == response.headers["request-id"]
    else:
        assert set(payload) == {"error"}
        assert payload["error"]["code"] == response.status_code
        assert not any(h in response.headers for h in RETRY_HEADERS)  # Gemini never sends them
    error: dict[str, Any] = payload["error"]
    return error


def gemini_detail(error: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for detail in error.get("details", []):
        if detail["@type"] == f"type.googleapis.com/google.rpc.{kind}":
            found: dict[str, Any] = detail
            return found
    return None


def check_rate_limit(fault: str, fmt: str, response: httpx.Response) -> None:
    error = error_of(fmt, response)
    headers = response.headers
    if fmt == "gemini":
        assert error["status"] == "RESOURCE_EXHAUSTED"
        quota = gemini_detail(error, "QuotaFailure")
        assert quota is not None
        (violation,) = quota["violations"]
        per_day = fault in ("spend-limit", "gemini-perday")
        assert ("PerDay" if per_day else "PerMinute") in violation["quotaId"]
        retry = gemini_detail(error, "RetryInfo")
        delays = {
            "429": "1s",
            "429-ms": "0.2s",
            "429-date": "1s",
            "429-long": "600s",
            "gemini-retryinfo": "1.5s",
            "gemini-perday": "38s",
        }
        assert (retry or {}).get("retryDelay") == delays.get(fault)
        return
    fatal = fault in ("spend-limit", "gemini-perday")
    if fmt == "openai":
        assert error["code"] == ("insufficient_quota" if fatal else "rate_limit_exceeded")
    else:
        assert error["type"] == "rate_limit_error"
        if fatal:
            assert error["details"] == {"error_code": "enforced_spend_limit_reached"}
            assert "enforced_spend_limit_reached" in error["message"]
    present = {h for h in RETRY_HEADERS if h in headers}
    if fatal:
        assert present == set()
    elif fault == "429-ms":
        assert present == {"retry-after-ms"}
        assert headers["retry-after-ms"] == "200"
    elif fault == "429-date":
        moment = email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp()
        assert 0.5 <= moment - time.time() <= 3
    else:
        expected = {"429": "1", "gemini-retryinfo": "1", "429-long": "600"}[fault]
        assert headers["retry-after"] == expected


def check_server_error(fault: str, fmt: str, response: httpx.Response) -> None:
    if fault == "loading":
        assert response.json() == LOADING_BODY
        return
    error = error_of(fmt, response)
    assert response.headers.get("x-should-retry") == ("false" if fault == "no-retry-5xx" else None)
    if fmt == "anthropic":
        kinds = {"504": "timeout_error", "529": "overloaded_error"}
        assert error["type"] == kinds.get(fault, "api_error")
    elif fmt == "gemini":
        statuses = {"500": "INTERNAL", "no-retry-5xx": "INTERNAL", "504": "DEADLINE_EXCEEDED"}
        assert error["status"] == statuses.get(fault, "UNAVAILABLE")
    else:
        assert error["message"]


def check_flagged(fault: str, fmt: str, call: Call, payload: dict[str, Any]) -> None:
    if fmt == "openai":
        (choice,) = payload["choices"]
        message = choice["message"]
        reasons = {"length": "length", "content-filter": "content_filter"}
        assert choice["finish_reason"] == reasons.get(fault, "stop")
        if fault == "length":
            assert message["content"]
        else:
            assert message["content"] == ("" if fault == "empty" else None)
        assert (message["refusal"] is not None) == (fault == "refusal")
        text = message["content"] or message["refusal"] or ""
        completion_tokens = payload["usage"]["completion_tokens"]
    elif fmt == "anthropic":
        reasons = {"length": "max_tokens", "empty": "end_turn"}
        assert payload["stop_reason"] == reasons.get(fault, "refusal")
        text = "".join(block["text"] for block in payload["content"])
        assert (payload["content"] == []) == (fault in ("empty", "content-filter"))
        completion_tokens = payload["usage"]["output_tokens"]
    else:
        (candidate,) = payload["candidates"]
        reasons = {"length": "MAX_TOKENS", "content-filter": "SAFETY"}
        assert candidate["finishReason"] == reasons.get(fault, "STOP")
        parts = candidate.get("content", {}).get("parts", [])
        text = "".join(part["text"] for part in parts)
        if fault == "content-filter":
            assert "content" not in candidate
            assert any(rating.get("blocked") for rating in candidate["safetyRatings"])
        completion_tokens = payload["usageMetadata"].get("candidatesTokenCount", 0)
    assert completion_tokens == count_tokens(text, call.model)
    assert bool(text) == (fault in ("length", "refusal"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fault", sorted(set(FAULT_NAMES) - {f.value for f in TRANSPORT}))
def test_each_fault_looks_as_the_real_api_sends_it(fault: str, fmt: str) -> None:
    call = CALLS[fmt]
    with faulty(fault) as emu:
        response = post(emu, fmt)
        stats = emu.stats()
    assert response.status_code == STATUS[fault]
    assert response.headers["content-type"].startswith("application/json")
    if Fault(fault) in HTTP_ERRORS:
        if response.status_code == 429:
            check_rate_limit(fault, fmt, response)
        else:
            check_server_error(fault, fmt, response)
    elif fault == "malformed-json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    else:
        check_flagged(fault, fmt, call, response.json())
    assert stats["faults"] == {fault: 1}
    assert stats["served_ok"] == 0
    assert stats["served_flagged"] == (1 if Fault(fault) in FLAGGED else 0)
    assert stats["by_status"] == {str(STATUS[fault]): 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_reset_is_a_connection_error(fmt: str) -> None:
    with faulty("reset") as emu:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            post(emu, fmt)
        stats = emu.stats()
    assert stats["by_status"] == {"reset": 1}
    assert stats["faults"] == {"reset": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncate_sends_a_full_length_header_and_part_of_the_body(fmt: str) -> None:
    with faulty("truncate") as emu:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            post(emu, fmt)
        stats = emu.stats()
    assert "incomplete" in str(caught.value) or "complete message body" in str(caught.value)
    assert stats["by_status"] == {"truncate": 1}
    assert stats["served_ok"] == 0
    assert stats["completion_tokens"] == 0  # lost answers are not in the reconcilable totals


def test_truncated_response_has_status_200_headers() -> None:
    seen: list[httpx.Response] = []
    with faulty("truncate") as emu, httpx.Client(base_url=emu.url, timeout=5) as http:
        call = CALLS["openai"]
        with http.stream("POST", call.path, json=call.body) as response:
            seen.append(response)
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
    (response,) = seen
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.headers["x-request-id"]


def test_timeout_hangs_then_closes_without_an_answer() -> None:
    with faulty("timeout", hang_s=2.0) as emu:
        start = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            post(emu, "anthropic", timeout=0.2)
        assert time.perf_counter() - start < 1.0
        assert emu.stats()["by_status"] == {"timeout": 1}
    with faulty("timeout", hang_s=0.2) as emu:
        start = time.perf_counter()
        with pytest.raises(httpx.RemoteProtocolError):
            post(emu, "gemini", timeout=5)
        assert time.perf_counter() - start >= 0.19
        assert emu.stats()["faults"] == {"timeout": 1}


def test_a_retry_of_the_same_request_can_succeed() -> None:
    with faulty("503", rate=0.5) as emu:
        statuses = {post(emu, "openai").status_code for _ in range(20)}
    assert statuses == {200, 503}


def test_no_faults_by_default_and_a_fault_free_emulator_counts_served_ok() -> None:
    assert EmulatorOptions().fault_rate == 0
    with RunningEmulator(EmulatorOptions()) as emu:
        for fmt in FORMATS:
            assert post(emu, fmt).status_code == 200
        stats = emu.stats()
    assert stats["served_ok"] == 3
    assert stats["served_flagged"] == 0
    assert stats["faults"] == {}


async def _mixed_run(emu: RunningEmulator, count: int) -> tuple[Counter[str], int, int]:
    """Send ``count`` requests round-robin over the formats; return what the client saw and the
    usage the parseable answers reported."""
    outcomes: Counter[str] = Counter()
    usage = [0, 0]
    limits = httpx.Limits(max_connections=16)
    # No limit on the wait for one of the 16 connections: on a loaded machine 210 requests
    # queue for seconds, and a pool timeout would end some before the emulator ever saw them
    # (a TransportError the emulator cannot count). Generous on the answer itself too: this
    # test is about accounting, not speed.
    timeout = httpx.Timeout(60.0, pool=None)
    async with httpx.AsyncClient(base_url=emu.url, timeout=timeout, limits=limits) as http:

        async def one(index: int) -> None:
            fmt = FORMATS[index % 3]
            call = CALLS[fmt]
            body = json.loads(json.dumps(call.body).replace("tides", f"tides #{index}"))
            try:
                response = await http.post(call.path, json=body)
            except httpx.TransportError:
                outcomes["transport"] += 1
                return
            outcomes[str(response.status_code)] += 1
            if response.status_code != 200:
                return
            try:
                payload = response.json()
            except json.JSONDecodeError:
                outcomes["malformed"] += 1
                return
            if fmt == "openai":
                usage[0] += payload["usage"]["prompt_tokens"]
                usage[1] += payload["usage"]["completion_tokens"]
            elif fmt == "anthropic":
                usage[0] += payload["usage"]["input_tokens"]
                usage[1] += payload["usage"]["output_tokens"]
            else:
                usage[0] += payload["usageMetadata"]["promptTokenCount"]
                usage[1] += payload["usageMetadata"].get("candidatesTokenCount", 0)

        await asyncio.gather(*(one(i) for i in range(count)))
    return outcomes, usage[0], usage[1]


def test_mixed_faults_add_up() -> None:
    count = 210
    with faulty(list(FAULT_NAMES), rate=0.3, hang_s=0.0) as emu:
        outcomes, prompt_tokens, completion_tokens = asyncio.run(_mixed_run(emu, count))
        stats: dict[str, Any] = emu.stats()
    faults: dict[str, int] = stats["faults"]
    by_status: dict[str, int] = stats["by_status"]
    injected = sum(faults.values())
    assert 0.15 * count <= injected <= 0.45 * count
    assert len(faults) >= 12  # most of the 22 kinds were drawn
    # Every request is counted once, under a status or a transport fault's name.
    assert stats["requests"] == count == sum(by_status.values())
    assert stats["served_ok"] + injected == count
    assert stats["served_flagged"] == sum(faults.get(f.value, 0) for f in FLAGGED)
    malformed = faults.get("malformed-json", 0)
    assert by_status["200"] == stats["served_ok"] + stats["served_flagged"] + malformed
    lost = 0
    for fault in TRANSPORT:
        assert by_status.get(fault.value, 0) == faults.get(fault.value, 0)
        lost += faults.get(fault.value, 0)
    # The client saw the same thing, and can reconcile billed tokens with the stats exactly.
    assert outcomes["transport"] == lost
    assert outcomes["malformed"] == malformed
    for status, seen in outcomes.items():
        if status.isdigit():
            assert by_status[status] == seen
    assert (prompt_tokens, completion_tokens) == (
        stats["prompt_tokens"],
        stats["completion_tokens"],
    )


def test_fault_options_are_validated() -> None:
    with pytest.raises(ValidationError) as caught:
        EmulatorOptions(faults=["429", "bogus", "reset"])
    message = str(caught.value)
    assert "unknown fault 'bogus'" in message
    assert "no-retry-5xx" in message  # the valid names are listed
    assert EmulatorOptions.model_validate({"faults": " 429, reset "}).faults == ["429", "reset"]
    with pytest.raises(ValidationError):
        EmulatorOptions(fault_rate=1.5)
    with pytest.raises(ValidationError):
        EmulatorOptions(faults=[])
    with pytest.raises(ValidationError):
        EmulatorOptions(hang_s=-1)


def test_cli_rejects_an_unknown_fault_in_one_line() -> None:
    result = CliRunner().invoke(app, ["emulator", "--fault-rate", "0.2", "--faults", "429,nope"])
    assert result.exit_code == 2
    assert "--faults" in result.output
    assert "unknown fault 'nope'" in result.output
