from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow_orchestrator.durations import describe_seconds, elapsed, round_half_away

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 second(s)"),
        (0.49, "0 second(s)"),
        (0.5, "1 second(s)"),
        (2.5, "3 second(s)"),  # banker's round() would say 2
        (59.4, "59 second(s)"),
        (59.5, "60 second(s)"),
        (60, "1 minute(s)"),
        (89, "1 minute(s)"),
        (90, "2 minute(s)"),
        (89.5 * 60, "1 hour(s)"),  # 89.5 min is 1.49 h
        (59 * 60 + 45, "60 minute(s)"),
        (3600, "1 hour(s)"),
        (6000, "2 hour(s)"),
        (5400, "2 hour(s)"),  # 1.5 h rounds away from zero
        (86399, "24 hour(s)"),
        (86400, "1 day(s)"),
        (3.5 * 86400, "4 day(s)"),
        (7 * 86400 - 1, "7 day(s)"),
        (7 * 86400, "1 week(s)"),
        (10.5 * 7 * 86400, "11 week(s)"),
    ],
)
def test_describe_seconds_edges(seconds: float, text: str) -> None:
    assert describe_seconds(seconds) == text


def test_round_half_away_from_zero() -> None:
    assert [round_half_away(x) for x in (0.5, 1.5, 2.5, -0.5, -2.5, 2.4999)] == [1, 2, 3, -1, -3, 2]


def test_negative_elapsed_reads_as_zero() -> None:
    assert describe_seconds(-5) == "0 second(s)"


@pytest.mark.parametrize("start", [None, "", "not a time", []])
def test_unknown_start(start: object) -> None:
    assert elapsed(start, NOW) == "<unknown>"


@pytest.mark.parametrize(
    "start",
    [
        (NOW - timedelta(seconds=90)).isoformat(),
        (NOW - timedelta(seconds=90)).timestamp(),
        str((NOW - timedelta(seconds=90)).timestamp()),
        "Fri, 27 Nov 2026 11:58:30 GMT",
        (NOW - timedelta(seconds=90)).isoformat().replace("+00:00", "Z"),
    ],
)
def test_elapsed_reads_every_timestamp_form(start: object) -> None:
    assert elapsed(start, NOW) == "2 minute(s)"


@given(st.floats(min_value=0, max_value=10 * 365 * 86400, allow_nan=False))
def test_unit_is_the_largest_with_count_at_least_one(seconds: float) -> None:
    count, unit = describe_seconds(seconds).split(" ")
    limits = {"second(s)": 60, "minute(s)": 60, "hour(s)": 24, "day(s)": 7}
    sizes = {"second(s)": 1, "minute(s)": 60, "hour(s)": 3600, "day(s)": 86400, "week(s)": 604800}
    value = seconds / sizes[unit]
    assert unit == "second(s)" or value >= 1
    if unit in limits:
        assert value < limits[unit]
    assert int(count) == int(value + 0.5)
