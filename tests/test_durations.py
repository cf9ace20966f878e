from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillery.generators.durations import parse_go_duration, parse_rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("45.837906927s", 45.837906927),
        ("0", 0.0),
        ("0s", 0.0),
        ("250us", 0.00025),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "6", "s", "1x", "1m 2s", "-1s", "abc", "1.2.3s"])
def test_go_duration_rejects(text: str) -> None:
    assert parse_go_duration(text) is None


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_go_duration_round_trip(hours: int, minutes: int, seconds: int, millis: int) -> None:
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes or hours else ""]
    text = "".join(parts) + f"{seconds}s" + (f"{millis}ms" if millis else "")
    expected = hours * 3600 + minutes * 60 + seconds + millis / 1000
    assert parse_go_duration(text) == pytest.approx(expected)


@given(st.text(max_size=12))
def test_go_duration_never_raises(text: str) -> None:
    result = parse_go_duration(text)
    assert result is None or result >= 0


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)))
def test_rfc3339_round_trip(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    text = aware.isoformat().replace("+00:00", "Z")
    assert parse_rfc3339(text) == aware
    offset = aware.astimezone(timezone(timedelta(hours=-5)))
    assert parse_rfc3339(offset.isoformat()) == aware


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00"])
def test_rfc3339_rejects(text: str) -> None:
    assert parse_rfc3339(text) is None
