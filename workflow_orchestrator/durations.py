"""Human durations for the event log (docs/behaviour.md §7.3), pure.

Rounding is half away from zero, never Python's banker's `round()`: 59.5 s must read
`60 second(s)` exactly as the original did.
"""

from __future__ import annotations

import math
from datetime import datetime

from .timefmt import parse_instant

UNKNOWN = "<unknown>"

_UNITS = (("minute(s)", 60.0, 60.0), ("hour(s)", 24.0, 3600.0), ("day(s)", 7.0, 86400.0))


def round_half_away(value: float) -> int:
    """Round half away from zero: 0.5 -> 1, 2.5 -> 3, -0.5 -> -1."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def describe_seconds(seconds: float) -> str:
    """Seconds -> `N unit(s)`; the unit is the largest whose count is at least 1."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{round_half_away(seconds)} second(s)"
    for unit, limit, size in _UNITS:
        if seconds / size < limit:
            return f"{round_half_away(seconds / size)} {unit}"
    return f"{round_half_away(seconds / 604800.0)} week(s)"


def elapsed(start: object, now: datetime) -> str:
    """Duration since `start` (ISO 8601 / epoch / datetime), `<unknown>` when missing."""
    moment = start if isinstance(start, datetime) else parse_instant(start)
    if moment is None:
        return UNKNOWN
    return describe_seconds((now - moment).total_seconds())
