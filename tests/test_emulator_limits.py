"""Server-side rate limits of the emulator: sliding windows of requests and tokens, requests in
flight, and each format's 429, over real loopback HTTP. What depends on time passing (windows
sliding, hints coming true, quanta) is tested on a fake clock, against the pure window and the
server's limits; one real-time burst over HTTP (slow) shows the server keeps it."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.limits import Limiter as ServerLimits
from distillery.emulator.limits import (
    Refused,
    SlidingWindow,
    request_allowance,
    token_allowance,
)
from distillery.emulator.window import UsageWindow
from distillery.generators.durations import parse_go_duration
from distillery.generators.tokens import count_message_tokens

MODEL = "gpt-4o-mini"
OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
GEMINI_MODEL = "gemini-2.0-flash"
GEMINI_PATH = f"/v1beta/models/{GEMINI_MODEL}:generateContent"


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def prompt_tokens(content: str) -> int:
    return count_message_tokens([{"role": "user", "content": content}], MODEL)


def hint_ms(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    return int(response.headers["retry-after-ms"])


@pytest.fixture
def ten_per_three_seconds() -> Iterator[RunningEmulator]:
    """A 3 s window, so a burst on a loaded machine still lands inside one window."""
    with RunningEmulator(EmulatorOptions(rpm=200, window_s=3.0)) as emu:
        yield emu


async def _blast(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        bodies = [chat(f"Name a colour, please. #{i}") for i in range(count)]
        return list(await asyncio.gather(*(http.post(OPENAI_PATH, json=b) for b in bodies)))


@pytest.mark.slow  # waits a real hint of up to 3 s; the window's logic is tested on a fake clock
def test_a_burst_gets_exactly_the_allowance_and_true_hints(
    ten_per_three_seconds: RunningEmulator,
) -> None:
    emulator = ten_per_three_seconds
    responses = asyncio.run(_blast(emulator.url, 40))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 30
    refused = [r for r in responses if r.status_code == 429]
    hints = [hint_ms(r) for r in refused]
    assert all(0 < hint <= 3000 for hint in hints)
    for response in refused:
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert response.json()["error"]["type"] == "requests"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"

    with httpx.Client(base_url=emulator.url, timeout=10) as http:
        early = http.post(OPENAI_PATH, json=chat("Too soon?"))
        wait = hint_ms(early)
        assert 0 < wait <= 3000
        time.sleep(wait / 1000)
        again = http.post(OPENAI_PATH, json=chat("And now?"))
    assert again.status_code == 200, again.text

    stats = emulator.stats()
    assert stats["rate_limited"] == 31
    assert stats["by_status"] == {"200": 11, "429": 31}
    assert stats["faults"] == {}
    assert stats["served_ok"] == 11
    assert isinstance(stats["max_in_flight"], int)
    assert 1 <= stats["max_in_flight"] <= 10


def test_no_window_interval_ever_holds_more_than_the_allowance() -> None:
    # The server's limits on a fake clock: 10 per 3 s, paced at 8/s for 5 s (times in eighths
    # of a second, exact in binary). The first 1.25 s's ten get in, the rest are refused until
    # the first one leaves the window at 3 s, then ten more get in, then none.
    usage = UsageWindow()
    limits = ServerLimits(rpm=200, tpm=None, max_concurrency=None, window_s=3.0)
    admitted: list[float] = []
    refused: list[float] = []
    for index in range(40):
        now = index / 8
        refusal = limits.admit(now, 0, usage)
        if refusal is None:
            limits.release()  # answered at once
            admitted.append(now)
        else:
            assert refusal.reason is Refused.REQUESTS
            # The hint is true: until the oldest of the window's ten leaves it.
            within = [t for t in admitted if t > now - 3.0]
            assert refusal.wait_s == pytest.approx(within[0] + 3.0 - now)
            refused.append(now)
    for index, first in enumerate(admitted):
        assert len([t for t in admitted[index:] if t < first + 3.0]) <= 10, first
    # Sliding, and refusals cost nothing: a second ten get in, not 10 in the whole run.
    assert admitted == [i / 8 for i in range(10)] + [3.0 + i / 8 for i in range(10)]
    assert len(refused) == 20
    assert limits.in_flight == 0


def test_a_token_limit_refuses_what_does_not_fit_with_the_tokens_wording() -> None:
    # 1200 tokens per minute over 5 s: 100 tokens per window.
    options = EmulatorOptions(tpm=1200, window_s=5.0)
    text = "Say hi."
    prompt = prompt_tokens(text)
    first_cost = 60
    with RunningEmulator(options) as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        first = http.post(OPENAI_PATH, json=chat(text, max_tokens=first_cost - prompt))
        refused = http.post(OPENAI_PATH, json=chat(text, max_tokens=first_cost - prompt))
        fits = http.post(OPENAI_PATH, json=chat(text, max_tokens=100 - first_cost - prompt))
        too_large = http.post(OPENAI_PATH, json=chat(text, max_tokens=101 - prompt))
        stats = emu.stats()

    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "1200"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - first_cost)
    # Charged at admission: prompt + max_tokens, whatever the answer used.
    assert first.json()["usage"]["total_tokens"] <= first_cost

    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "tokens"
    match = re.fullmatch(
        r"Rate limit reached for gpt-4o-mini in organization org-emulator on tokens per 5s "
        r"\(TPM\): Limit 100, Used 60, Requested 60\. Please try again in (\S+)\. Visit "
        r"https://platform\.openai\.com/account/rate-limits to learn more\.",
        error["message"],
    )
    assert match, error["message"]
    wait = parse_go_duration(match.group(1))
    assert wait is not None
    assert 4.0 < wait <= 5.0
    assert hint_ms(refused) == round(wait * 1000)
    assert refused.headers["retry-after"] == "5"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert parse_go_duration(refused.headers["x-ratelimit-reset-tokens"]) == pytest.approx(wait)

    # Exactly the 40 tokens left still fit: the refused request was not charged.
    assert fits.status_code == 200, fits.text
    assert fits.headers["x-ratelimit-remaining-tokens"] == "0"

    assert too_large.status_code == 429
    assert too_large.json()["error"]["message"].startswith(
        "Request too large for gpt-4o-mini in organization org-emulator on tokens per 5s (TPM): "
        "Limit 100, Requested 101."
    )
    assert too_large.headers["x-should-retry"] == "false"
    assert "retry-after" not in too_large.headers
    assert "retry-after-ms" not in too_large.headers
    assert stats["rate_limited"] == 2
    assert stats["by_status"] == {"200": 2, "429": 2}


def test_without_max_tokens_the_charge_is_the_billed_usage() -> None:
    with (
        RunningEmulator(EmulatorOptions(tpm=600_000, window_s=6.0)) as emu,
        httpx.Client(base_url=emu.url, timeout=10) as http,
    ):
        response = http.post(OPENAI_PATH, json=chat("Tell me about tidal energy."))
    assert response.status_code == 200
    billed = response.json()["usage"]["total_tokens"]
    assert response.headers["x-ratelimit-remaining-tokens"] == str(60_000 - billed)


async def _concurrent(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        bodies = [chat(f"Slow question {i}") for i in range(count)]
        return list(await asyncio.gather(*(http.post(OPENAI_PATH, json=b) for b in bodies)))


def test_max_concurrency_refuses_the_request_over_it() -> None:
    options = EmulatorOptions(max_concurrency=3, latency_ms=300)
    with RunningEmulator(options) as emu:
        responses = asyncio.run(_concurrent(emu.url, 4))
        with httpx.Client(base_url=emu.url, timeout=10) as http:
            after = http.post(OPENAI_PATH, json=chat("One at a time"))
        stats = emu.stats()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 429]
    (refused,) = [r for r in responses if r.status_code == 429]
    # A short hint: mean latency / max_concurrency.
    assert hint_ms(refused) == 100
    assert refused.headers["retry-after"] == "1"
    assert "concurrent" in refused.json()["error"]["message"]
    assert after.status_code == 200
    assert stats["max_in_flight"] == 3
    assert stats["rate_limited"] == 1


def _rfc3339(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def test_each_format_refuses_in_its_providers_shape() -> None:
    # One request per 10 s, shared by every format.
    options = EmulatorOptions(rpm=6, window_s=10.0, require_key="k")
    with RunningEmulator(options) as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        admitted = http.post(
            OPENAI_PATH, json=chat("First!"), headers={"Authorization": "Bearer k"}
        )
        openai_429 = http.post(
            OPENAI_PATH, json=chat("Second"), headers={"Authorization": "Bearer k"}
        )
        anthropic_429 = http.post(
            ANTHROPIC_PATH,
            json={"model": "claude-3-5-haiku", "max_tokens": 64, "messages": chat("x")["messages"]},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
        now = time.time()
        gemini_429 = http.post(
            GEMINI_PATH,
            json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": "k"},
        )
        # Auth comes before the limits: a wrong key is a 401, not a rate limit.
        wrong_key = http.post(
            OPENAI_PATH, json=chat("x"), headers={"Authorization": "Bearer wrong"}
        )
        stats = emu.stats()

    assert admitted.status_code == 200
    assert admitted.headers["x-ratelimit-limit-requests"] == "6"
    assert admitted.headers["x-ratelimit-remaining-requests"] == "0"

    # OpenAI: retry-after-ms and retry-after, x-ratelimit-* showing the exhausted window.
    wait_ms = hint_ms(openai_429)
    assert 9000 < wait_ms <= 10_000
    assert openai_429.headers["retry-after"] == str(math.ceil(wait_ms / 1000))
    assert openai_429.headers["x-ratelimit-limit-requests"] == "6"
    assert openai_429.headers["x-ratelimit-remaining-requests"] == "0"
    reset = parse_go_duration(openai_429.headers["x-ratelimit-reset-requests"])
    assert reset == pytest.approx(wait_ms / 1000)
    assert openai_429.headers["x-ratelimit-limit-tokens"] == "10000000000"  # no tpm: nominal
    error = openai_429.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "on requests per 10s (RPM): Limit 1, Used 1, Requested 1." in error["message"]

    # Anthropic: integer retry-after, rate_limit_error, anthropic-ratelimit-* headers.
    assert anthropic_429.status_code == 429
    body = anthropic_429.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "6 requests per minute" in body["error"]["message"]
    assert body["request_id"] == anthropic_429.headers["request-id"]
    assert anthropic_429.headers["retry-after"] == "10"
    assert "retry-after-ms" not in anthropic_429.headers
    assert anthropic_429.headers["anthropic-ratelimit-requests-limit"] == "6"
    assert anthropic_429.headers["anthropic-ratelimit-requests-remaining"] == "0"
    requests_reset = _rfc3339(anthropic_429.headers["anthropic-ratelimit-requests-reset"])
    assert now + 8 < requests_reset <= now + 11

    # Gemini: no retry header; RetryInfo plus a per-minute QuotaFailure.
    assert gemini_429.status_code == 429
    assert "retry-after" not in gemini_429.headers
    error = gemini_429.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    by_type = {detail["@type"].rsplit(".", 1)[-1]: detail for detail in error["details"]}
    delay = parse_go_duration(by_type["RetryInfo"]["retryDelay"])
    assert delay is not None
    assert 8.0 < delay <= 10.0
    (violation,) = by_type["QuotaFailure"]["violations"]
    assert "PerMinute" in violation["quotaId"]
    assert violation["quotaValue"] == "6"
    assert violation["quotaDimensions"]["model"] == GEMINI_MODEL
    assert f"Please retry in {by_type['RetryInfo']['retryDelay']}." in error["message"]

    assert wrong_key.status_code == 401
    assert stats["rate_limited"] == 3
    assert stats["by_status"] == {"200": 1, "401": 1, "429": 3}


def test_success_headers_show_the_configured_limits() -> None:
    options = EmulatorOptions(rpm=1200, tpm=600_000, window_s=6.0)
    anthropic_body = {
        "model": "claude-3-5-haiku",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}],
    }
    with RunningEmulator(options) as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        first = http.post(OPENAI_PATH, json=chat("hello", max_tokens=100))
        second = http.post(ANTHROPIC_PATH, json=anthropic_body)
    headers = first.headers
    assert headers["x-ratelimit-limit-requests"] == "1200"
    assert headers["x-ratelimit-limit-tokens"] == "600000"
    # Remaining: what the (6 s) window still admits, so a client can tell when it will be refused.
    assert headers["x-ratelimit-remaining-requests"] == "119"
    assert headers["x-ratelimit-remaining-tokens"] == str(60_000 - prompt_tokens("hello") - 100)
    # Reset: until another such request would be admitted, i.e. now.
    assert headers["x-ratelimit-reset-requests"] == "0s"
    assert headers["x-ratelimit-reset-tokens"] == "0s"
    assert second.status_code == 200
    assert second.headers["anthropic-ratelimit-requests-limit"] == "1200"
    assert second.headers["anthropic-ratelimit-requests-remaining"] == "118"
    for kind in ("tokens", "input-tokens", "output-tokens"):
        assert second.headers[f"anthropic-ratelimit-{kind}-limit"] == "600000"
        assert second.headers[f"anthropic-ratelimit-{kind}-remaining"] == "59000"


def test_limits_come_before_faults_and_reset_empties_the_window() -> None:
    options = EmulatorOptions(rpm=6, window_s=10.0, fault_rate=1.0, faults=["500"])
    with RunningEmulator(options) as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        faulted = http.post(OPENAI_PATH, json=chat("a"))
        limited = http.post(OPENAI_PATH, json=chat("b"))
        stats = emu.stats()
        emu.reset()
        after_reset = http.post(OPENAI_PATH, json=chat("c"))
    assert faulted.status_code == 500  # admitted, then faulted: it used the window's request
    assert limited.status_code == 429
    assert stats["faults"] == {"500": 1}
    assert stats["rate_limited"] == 1
    assert after_reset.status_code == 500


def test_without_limits_nothing_is_tracked() -> None:
    with RunningEmulator() as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        assert http.post(OPENAI_PATH, json=chat("hi")).status_code == 200
        stats = emu.stats()
    assert stats["rate_limited"] == 0
    assert stats["max_in_flight"] is None


def test_options_validate_the_limits() -> None:
    assert request_allowance(1200, 6.0) == 120
    assert request_allowance(600, 0.1) == 1  # not 2, for float noise
    assert request_allowance(1000, 1.0) == 17  # a client pacing at exactly rpm is never refused
    assert token_allowance(1000, 1.0) == 16  # a window never holds more tokens than the rate
    for bad in ({"rpm": 0}, {"tpm": -1}, {"max_concurrency": 0}, {"window_s": 0.0}):
        with pytest.raises(ValidationError):
            EmulatorOptions.model_validate(bad)
    with pytest.raises(ValidationError, match="less than one token"):
        EmulatorOptions(tpm=30, window_s=1.0)


# The pure window: integer-valued times (think milliseconds) keep the arithmetic exact.
events = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=60)),
    min_size=1,
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    events=events,
    window=st.integers(min_value=1, max_value=1000),
    max_requests=st.none() | st.integers(min_value=1, max_value=12),
    max_tokens=st.none() | st.integers(min_value=1, max_value=300),
)
def test_the_window_never_admits_more_than_the_allowance_and_hints_exactly(
    events: list[tuple[int, int]], window: int, max_requests: int | None, max_tokens: int | None
) -> None:
    limits = SlidingWindow(float(window), max_requests, max_tokens)
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for step, tokens in events:
        now += step
        refusal = limits.check(now, tokens)
        if refusal is None:
            limits.record(now, tokens)
        if refusal is None:
            admitted.append((now, tokens))
            continue
        if refusal.reason is Refused.TOO_LARGE:
            assert max_tokens is not None
            assert tokens > max_tokens
            assert math.isinf(refusal.wait_s)
            continue
        # The hint is exact: refused until then, admitted from then on (absent other traffic).
        wait = refusal.wait_s
        assert 0 < wait <= window
        assert copy.deepcopy(limits).check(now + wait, tokens) is None
        assert copy.deepcopy(limits).check(now + wait - 1, tokens) is not None
    for index, (start, _) in enumerate(admitted):
        inside = [t for moment, t in admitted[index:] if moment < start + window]
        if max_requests is not None:
            assert len(inside) <= max_requests
        if max_tokens is not None:
            assert sum(inside) <= max_tokens
    requests, tokens_used = limits.used(now)
    assert requests == sum(1 for moment, _ in admitted if moment > now - window)
    assert tokens_used == sum(t for moment, t in admitted if moment > now - window)


def test_quantized_limits_hold_over_every_quantum_too() -> None:
    # 60,000 RPM enforced as 1,000 per second (OpenAI: limits "may be quantized"): a minute's
    # allowance is not a second's.
    usage = UsageWindow()
    quantized = ServerLimits(
        rpm=60_000, tpm=None, max_concurrency=None, window_s=60.0, quantum_s=1.0
    )
    plain = ServerLimits(rpm=60_000, tpm=None, max_concurrency=None, window_s=60.0)
    for index in range(1000):
        assert quantized.admit(index / 2000, 0, usage) is None  # 1,000 in half a second
        assert plain.admit(index / 2000, 0, usage) is None
    refusal = quantized.admit(0.5, 0, usage)
    assert refusal is not None and refusal.reason is Refused.REQUESTS
    assert refusal.per == "1s" and refusal.allowance == 1000 and refusal.limit == 60_000
    assert refusal.wait_s == pytest.approx(0.5)  # the first of the second's 1,000 leaves then
    assert plain.admit(0.5, 0, usage) is None  # the minute alone would take it
    assert quantized.admit(1.0, 0, usage) is None
    # Paced at the limit's rate (a hair under: float times), nothing is refused.
    paced = ServerLimits(rpm=60_000, tpm=None, max_concurrency=None, window_s=60.0, quantum_s=1.0)
    assert all(paced.admit(i / 999.99, 0, usage) is None for i in range(3000))
    # Tokens too; a request larger than a quantum's tokens (not the window's) fits an empty one.
    tokens = ServerLimits(rpm=None, tpm=6000, max_concurrency=None, window_s=6.0, quantum_s=1.0)
    assert tokens.admit(0.0, 150, usage) is None
    refused = tokens.admit(0.1, 100, usage)  # 100 per 1 s quantum
    assert refused is not None and refused.reason is Refused.TOKENS
    assert tokens.admit(1.0, 150, usage) is None
    tokens.clear()
    assert tokens.admit(1.0, 100, usage) is None


def test_quantized_emulator_refuses_a_burst_over_http_and_validates_its_quantum() -> None:
    # 120 RPM quantized to 10 s: 20 per 10 s, not the minute's 120 at once. (A 10 s quantum, so
    # that the burst lands inside one however loaded the machine; the fake-clock test above
    # covers a 1 s one.)
    options = EmulatorOptions(rpm=120, window_s=60.0, quantum_s=10.0)
    with RunningEmulator(options) as emu:
        responses = asyncio.run(_blast(emu.url, 40))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 20
    refused = [r for r in responses if r.status_code == 429]
    assert all(0 < hint_ms(r) <= 10_000 for r in refused)
    assert "per 10s" in refused[0].json()["error"]["message"]
    with pytest.raises(ValidationError, match="longer than window_s"):
        EmulatorOptions(rpm=60, window_s=6.0, quantum_s=10.0)
    with pytest.raises(ValidationError, match="less than one token"):
        EmulatorOptions(tpm=30, window_s=60.0, quantum_s=1.0)
