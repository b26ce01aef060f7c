"""Reading and writing the timestamps found in workflows and messages (pure).

Messages arrive with ISO 8601, epoch seconds, or RFC 1123 (`Tue, 05 Mar 2013 23:25:19
GMT`, also `UTC` or numeric offsets); everything the orchestrator writes is ISO 8601 UTC.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

_RFC1123_UTC = re.compile(r"\s(UTC|GMT|Z|UT)\s*$", re.IGNORECASE)


def to_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds, the one form the orchestrator writes."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_instant(value: object) -> datetime | None:
    """ISO 8601 or epoch seconds -> aware UTC datetime; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    try:  # the form the orchestrator writes (to_iso) parses as it is: the common case
        moment = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        return moment if moment.tzinfo is timezone.utc else _aware(moment)
    text = value.strip()
    if not text:
        return None
    iso = text.replace("Z", "+00:00")
    if iso != value:  # the value as it is failed above; padded or with a Z, try again
        try:
            return _aware(datetime.fromisoformat(iso))
        except ValueError:
            pass
    try:
        return datetime.fromtimestamp(float(text), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return parse_rfc1123(text)
    except ValueError:
        return None


def parse_rfc1123(text: str) -> datetime:
    """RFC 1123 with GMT, UTC or a numeric offset -> aware UTC datetime; ValueError if not."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not an RFC 1123 time: {text!r}")
    normalised = _RFC1123_UTC.sub(" +0000", text.strip())
    try:
        parsed = parsedate_to_datetime(normalised)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"not an RFC 1123 time: {text!r}") from exc
    if parsed is None:
        raise ValueError(f"not an RFC 1123 time: {text!r}")
    return _aware(parsed)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
