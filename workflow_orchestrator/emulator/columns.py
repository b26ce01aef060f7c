"""The real Manager's workflows table and its Ecto casting rules, written down on their own.

The columns and sizes come from OpenAperture/manager's migrations
(``priv/repo/migrations/20150217200506_add_workflows_table.exs`` and
``20150818180421_add_scheduled_start_time_to_workflows.exs``), not from the orchestrator's
field list: a field the orchestrator forgets to send must still be stored, rendered and
published here, so that dropping it from the client fails a test.

The casts follow Ecto 1.0 (``Ecto.Type.cast``): strings only for ``:string`` columns
(PostgreSQL ``varchar(n)``, over-long values make the database refuse the row), booleans or
the strings ``"true" "1" "false" "0"`` for ``:boolean``. JSON-text columns hold what
Poison encodes (compact, keys sorted as Elixir's small maps are) and are decoded on read.
``scheduled_start_time`` is a datetime column: RFC 1123 in, wall clock kept, rendered
back with a ``UTC`` zone whatever zone came in (Timex 0.13 drops it).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RFC1123 = re.compile(
    r"^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) ("
    + "|".join(_MONTHS)
    + r") (\d{4}) (\d{2}):(\d{2}):(\d{2}) ([A-Za-z]{1,4})$"
)
#: Zone names Timex 0.13's ``{Zname}`` directive resolves (1 to 4 letters; no offsets).
_ZONE_NAMES = frozenset(
    "Z UT GMT UTC A M N Y EST EDT CST CDT MST MDT PST PDT AKST AKDT HST CET CEST EET EEST "
    "WET WEST BST IST JST KST MSK AEST AEDT ACST ACDT AWST NZST NZDT".split()
)
_UUID_SHAPE = re.compile(rb"^.{8}-.{4}-.{4}-.{4}-.{12}$", re.DOTALL)
_UUID_HEX = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Column:
    """One column of the real table: its Ecto kind and, for varchar, its size."""

    name: str
    kind: str  # "uuid" | "string" | "text" | "json_text" | "boolean" | "datetime"
    size: int | None = None
    in_model: bool = True  # False: in the table but not in the Ecto schema (never cast)


#: The workflows table, in migration order (timestamps apart).
WORKFLOW_TABLE: tuple[Column, ...] = (
    Column("id", "uuid"),
    Column("deployment_repo", "string", 128),
    Column("deployment_repo_git_ref", "string", 256),
    Column("source_repo", "string", 128),
    Column("source_repo_git_ref", "string", 256),
    Column("source_commit_hash", "string", 256),
    Column("milestones", "json_text"),
    Column("current_step", "string", 128),
    Column("elapsed_step_time", "string", 128),
    Column("elapsed_workflow_time", "string", 128),
    Column("workflow_duration", "string", 128),
    Column("workflow_step_durations", "json_text"),
    Column("workflow_error", "boolean"),
    Column("workflow_completed", "boolean"),
    Column("event_log", "json_text"),
    Column("app_name", "string", 64, in_model=False),
    Column("scheduled_start_time", "datetime"),
    Column("execute_options", "json_text"),
)
#: The Ecto schema's optional fields: what a POST or PUT may set.
MODEL_FIELDS: tuple[Column, ...] = tuple(c for c in WORKFLOW_TABLE if c.in_model and c.name != "id")
COLUMNS_BY_NAME = {c.name: c for c in WORKFLOW_TABLE}
#: ``@workflow_sendable_fields`` of the Workflows controller: every GET renders these.
RENDERED_FIELDS: tuple[str, ...] = (
    "id",
    "deployment_repo",
    "deployment_repo_git_ref",
    "source_repo",
    "source_repo_git_ref",
    "source_commit_hash",
    "milestones",
    "current_step",
    "elapsed_step_time",
    "elapsed_workflow_time",
    "workflow_duration",
    "workflow_step_durations",
    "workflow_error",
    "workflow_completed",
    "event_log",
    "inserted_at",
    "updated_at",
    "scheduled_start_time",
    "execute_options",
)


class Invalid(ValueError):
    """A value Ecto's cast refuses (the changeset error ``is invalid``)."""

    def __init__(self, field: str, problem: str = "is invalid") -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


class Overflow(ValueError):
    """A value longer than its varchar column: PostgreSQL refuses the row."""

    def __init__(self, field: str, size: int) -> None:
        self.field = field
        self.size = size
        super().__init__(f"value too long for type character varying({size}) ({field})")


class BadTime(ValueError):
    """A ``scheduled_start_time`` Timex cannot parse as RFC 1123 (it raises: a 500)."""


# -- JSON text (Poison) -------------------------------------------------------------------


def poison_encode(value: Any) -> str:
    """What ``Poison.encode!`` writes: compact, UTF-8 as is, small maps' keys sorted."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class Undecodable(ValueError):
    """A JSON-text column whose text ``Poison.decode!`` rejects (the real GET raises: 500)."""


def poison_decode(text: str | None) -> Any:
    """The decoded column; Undecodable when it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise Undecodable(text[:40]) from None


# -- casts ---------------------------------------------------------------------------------


def cast(column: Column, value: Any) -> Any:
    """Ecto 1.0's cast for the column's type; Invalid when it refuses."""
    if value is None:
        return None
    if column.kind in ("string", "text", "json_text"):
        if isinstance(value, str):
            return value
        raise Invalid(column.name)
    if column.kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise Invalid(column.name)
    if column.kind == "datetime":
        if isinstance(value, datetime):
            return value
        raise Invalid(column.name)
    raise Invalid(column.name)


def check_size(column: Column, value: Any) -> None:
    """Overflow when a string is longer (in characters) than its varchar column."""
    if column.size is not None and isinstance(value, str) and len(value) > column.size:
        raise Overflow(column.name, column.size)


# -- identifiers -----------------------------------------------------------------------------


def uuid_shaped(value: str) -> bool:
    """Ecto 1.0's ``Ecto.UUID.cast``: 36 bytes with dashes at 8, 13, 18, 23 (no hex check)."""
    return bool(_UUID_SHAPE.match(value.encode("utf-8", "surrogateescape")))


def uuid_hex(value: str) -> bool:
    """Whether ``Ecto.UUID.dump`` accepts it (hex digits, either case)."""
    return bool(_UUID_HEX.match(value))


# -- times -----------------------------------------------------------------------------------


def rfc1123(epoch: float | None = None) -> str:
    """``Mon, 17 Aug 2015 20:03:02 UTC``: Timex's ``{RFC1123}`` of a UTC date."""
    t = time.gmtime(time.time() if epoch is None else epoch)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC"
    )


def parse_rfc1123(value: Any) -> datetime:
    """Timex 0.13 ``DateFormat.parse!(value, "{RFC1123}")`` then ``to_erlang_datetime``.

    The wall clock is kept and the zone dropped, as the real Manager does; a numeric
    offset, an unknown zone or a non-string raises BadTime.
    """
    if not isinstance(value, str):
        raise BadTime(repr(value))
    found = _RFC1123.match(value)
    if found is None or found.group(7) not in _ZONE_NAMES:
        raise BadTime(value)
    day, month, year, hour, minute, second = found.group(1, 2, 3, 4, 5, 6)
    try:
        return datetime(
            int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second)
        )
    except ValueError:
        raise BadTime(value) from None


def store_datetime(moment: datetime) -> str:
    """The column's text in SQLite (a naive UTC timestamp, like Ecto.DateTime)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def render_datetime(text: str | None) -> str | None:
    """A stored timestamp as the Manager renders it (RFC 1123, ``UTC``)."""
    if text is None:
        return None
    moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    return rfc1123(calendar.timegm(moment.timetuple()))


def now_text(epoch: float | None = None) -> str:
    """Now (or ``epoch``) as a stored timestamp."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if epoch is None else epoch))
