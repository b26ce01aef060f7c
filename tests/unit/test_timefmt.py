"""Timestamps in every form a message may carry come out as aware UTC datetimes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from workflow_orchestrator.timefmt import parse_instant, to_iso

MOMENT = datetime(2026, 3, 5, 23, 25, 19, 123456, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (to_iso(MOMENT), MOMENT),  # what the orchestrator writes: the fast path
        ("2026-03-05T23:25:19.123456Z", MOMENT),
        (" 2026-03-05T23:25:19.123456+00:00 ", MOMENT),
        ("2026-03-06T01:25:19.123456+02:00", MOMENT),
        ("2026-03-05T23:25:19.123456", MOMENT),  # naive: read as UTC
        ("2026-03-05", datetime(2026, 3, 5, tzinfo=timezone.utc)),
        ("1772753119.123456", MOMENT),  # epoch seconds as text
        (1772753119.123456, MOMENT),
        ("Thu, 05 Mar 2026 23:25:19 GMT", MOMENT.replace(microsecond=0)),
        ("Thu, 05 Mar 2026 23:25:19 UTC", MOMENT.replace(microsecond=0)),
        ("Fri, 06 Mar 2026 01:25:19 +0200", MOMENT.replace(microsecond=0)),
    ],
)
def test_every_form_reads_as_the_same_utc_instant(value: object, expected: datetime) -> None:
    moment = parse_instant(value)
    assert moment is not None
    assert abs(moment - expected) < timedelta(microseconds=2)
    assert moment.utcoffset() == timedelta(0)
    assert moment.tzinfo is timezone.utc


@pytest.mark.parametrize("value", [None, True, "", "   ", "soon", float("nan"), [], {}])
def test_what_is_no_time_reads_as_none(value: object) -> None:
    assert parse_instant(value) is None
