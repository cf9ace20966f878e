"""The SDKs' retry rules, with the test vectors from PROVIDERS.md."""

import random
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillery.generators.retry import backoff_s, parse_retry_after, status_is_retryable, wait_s

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
