"""The SDKs' retry rules, with the test vectors from PROVIDERS.md."""

import asyncio
import random
import time
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillery.config import TeacherConfig
from distillery.generators.client import Outcome, TeacherClient
from distillery.generators.http import make_http_client
from distillery.generators.providers.registry import get_provider
from distillery.generators.retry import backoff_s, parse_retry_after, status_is_retryable, wait_s

from .conftest import serving

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "0"}, None),
        ({"retry-after": "-10"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({}, None),
    ],
)
def test_retry_after_vectors(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_retry_after_http_date_20s_ahead() -> None:
    headers = {"retry-after": formatdate(NOW + 20, usegmt=True)}
    assert parse_retry_after(headers, now=NOW) == pytest.approx(20.0, abs=1.0)


def test_unusable_hints_fall_back_to_half_a_second() -> None:
    rng = random.Random(0)
    for raw in ["0", "-10", "inf", "nan", ""]:
        waited = wait_s(parse_retry_after({"retry-after": raw}, now=NOW), 0, rng)
        assert 0.375 <= waited <= 0.5


def test_no_header_backoff_doubles_then_caps() -> None:
    class Zero(random.Random):
        def random(self) -> float:
            return 0.0

    assert [wait_s(None, n, Zero()) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_hint_over_limit_is_ignored() -> None:
    assert wait_s(600.0, 0, random.Random(1)) <= 0.5
    assert wait_s(20.0, 0, random.Random(1)) == 20.0


@given(
    st.integers(min_value=0, max_value=50), st.floats(min_value=0, max_value=1, exclude_max=True)
)
def test_backoff_bounds(retries: int, draw: float) -> None:
    class Fixed(random.Random):
        def random(self) -> float:
            return draw

    value = backoff_s(retries, Fixed())
    ceiling = min(0.5 * 2.0**retries, 8.0)
    assert 0.75 * ceiling <= value <= ceiling


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_parse_never_returns_nonpositive(seconds: float) -> None:
    hint = parse_retry_after({"retry-after": repr(seconds)}, now=NOW)
    assert hint is None or hint > 0


@pytest.mark.parametrize(
    ("status", "headers", "retry"),
    [
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (529, {}, True),
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (413, {}, False),
        (422, {}, False),
        (400, {"x-should-retry": "true"}, True),
        (503, {"x-should-retry": "false"}, False),
    ],
)
def test_status_rules(status: int, headers: dict[str, str], retry: bool) -> None:
    assert status_is_retryable(status, headers) is retry


def _scripted_teacher_run(
    answers: list[tuple[int, dict[str, str]]], max_attempts: int
) -> tuple[Outcome, list[float]]:
    """One TeacherClient request against a loopback server answering ``answers`` in turn
    (then 200s); returns the outcome and when each request arrived (server clock)."""
    from aiohttp import web

    arrivals: list[float] = []
    ok = {
        "id": "x",
        "model": "m",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    async def chat(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        if len(arrivals) <= len(answers):
            status, headers = answers[len(arrivals) - 1]
            return web.json_response({"error": {"message": "busy"}}, status=status, headers=headers)
        return web.json_response(ok)

    async def scenario() -> Outcome:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        async with serving(app) as url:
            spec = TeacherConfig.model_validate(
                {
                    "name": "t",
                    "provider": "openai",
                    "model": "m",
                    "base_url": f"{url}/v1",
                    "max_attempts": max_attempts,
                }
            )
            http = make_http_client("aiohttp", 2, 10.0, spec.base_url)
            try:
                client = TeacherClient(spec, get_provider("openai"), http)
                return await client.complete([{"role": "user", "content": "hello"}])
            finally:
                await http.aclose()

    return asyncio.run(scenario()), arrivals


def test_the_client_waits_the_backoff_of_each_retry_in_turn() -> None:
    """The first attempt runs outside tenacity (client.py): the wait after attempt 1 is the
    first backoff (0.375-0.5 s) and the one after attempt 2 the second (0.75-1 s) — an
    off-by-one in handing over to tenacity would swap or repeat them."""
    outcome, arrivals = _scripted_teacher_run([(503, {}), (503, {"retry-after-ms": "100"})], 5)
    assert outcome.completion is not None and outcome.failure is None
    assert outcome.attempts == 3
    assert outcome.attempt_statuses == ["503", "503", "200"]
    first_wait, second_wait = arrivals[1] - arrivals[0], arrivals[2] - arrivals[1]
    assert 0.37 <= first_wait < 0.74
    assert second_wait >= 0.74  # the hint (0.1 s) is shorter than the backoff: backoff wins
    # Both backoffs and the two failed attempts are retry time, not the teacher's latency
    # (the answering attempt alone) nor queue time (no limiter: nothing waits for admission).
    assert outcome.retry_ms >= 375 + 750
    assert outcome.latency_ms < outcome.retry_ms and outcome.queue_ms == 0.0


def test_a_request_that_fails_for_good_reports_its_last_attempts_time_as_latency() -> None:
    outcome, _ = _scripted_teacher_run([(503, {})] * 2, 2)
    assert outcome.failure is not None and outcome.attempts == 2
    assert outcome.retry_ms >= 375  # the first attempt and the backoff after it
    assert 0 < outcome.latency_ms < outcome.retry_ms


def test_a_server_hint_longer_than_the_backoff_is_obeyed_on_the_first_retry() -> None:
    outcome, arrivals = _scripted_teacher_run([(429, {"retry-after-ms": "900"})], 3)
    assert outcome.attempts == 2 and outcome.completion is not None
    assert arrivals[1] - arrivals[0] >= 0.89


@pytest.mark.parametrize(
    ("answers", "max_attempts", "attempts", "status"),
    [
        ([(503, {})] * 3, 2, 2, 503),  # retries run out: the last failure is reported
        ([(400, {})], 5, 1, 400),  # not retryable: one attempt
        ([(503, {})], 1, 1, 503),  # max_attempts 1: no retry machinery at all
    ],
)
def test_failures_end_after_the_attempts_they_deserve(
    answers: list[tuple[int, dict[str, str]]], max_attempts: int, attempts: int, status: int
) -> None:
    outcome, arrivals = _scripted_teacher_run(answers, max_attempts)
    assert outcome.completion is None and outcome.failure is not None
    assert outcome.failure.http_status == status
    assert outcome.attempts == attempts == len(arrivals)
