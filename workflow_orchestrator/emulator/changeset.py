"""Ecto 1.0 and Elixir behaviour the real Manager's controllers lean on, for every route.

``Changeset`` is the part of ``Ecto.Changeset.cast/4`` the routes need (errors in Ecto's
order: optional fields first, then required ones); the error bodies are
``ResponseBodyFormatter``'s; ``path_int`` and ``integer_prefix`` are Ecto's integer cast
and ``Integer.parse``, whose failures the real Manager does not catch (a 500).
"""

from __future__ import annotations

import re
from typing import Any

from .http import Crash, HTTPProblem, Response

INTEGER_PREFIX = re.compile(r"^[+-]?\d+")
INT_TEXT = re.compile(r"^[+-]?\d+$")
_MESSAGES = {
    "not_found": "{item} was not found",
    "internal_server_error": "An unexpected error occured with {item}",
    "conflict": "A {item} already exists with that identifier",
    "bad_request": "An invalid request was made for {item}",
}


def error_body(kind: str, item: str) -> dict[str, Any]:
    """``ResponseBodyFormatter.error_body(kind, item)``."""
    return {"errors": [{"message": _MESSAGES[kind].format(item=item)}]}


def changeset_error_body(errors: list[tuple[str, str]], item: str) -> dict[str, Any]:
    """``ResponseBodyFormatter.error_body(changeset.errors, item)``."""
    head = {"message": f"One or more fields for {item} were invalid"}
    return {"errors": [head, *({key: value} for key, value in errors)]}


def problem(status: int, kind: str, item: str) -> HTTPProblem:
    """An HTTPProblem answering ``error_body(kind, item)``."""
    return HTTPProblem(Response.json(status, error_body(kind, item)))


def path_int(raw: str, what: str) -> int:
    """A path id as Ecto casts it for an integer key (``Integer.parse`` whole), else a 500."""
    if INT_TEXT.match(raw):
        return int(raw)
    raise Crash(f"cannot cast {raw!r} to the {what} id")


class Changeset:
    """The part of ``Ecto.Changeset.cast/4`` the registry needs, errors in Ecto's order."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.values: dict[str, Any] = {}
        self.errors: list[tuple[str, str]] = []

    def field(self, name: str, kind: str, *, required: bool = False) -> None:
        value = self.params.get(name)
        if value is not None:
            cast = _CASTS[kind](value)
            if cast is INVALID:
                self.errors.append((name, "is invalid"))
                return
            value = cast
        if value is None and required:
            self.errors.append((name, "can't be blank"))
            return
        self.values[name] = value

    def min_length(self, name: str, minimum: int) -> None:
        value = self.values.get(name)
        if isinstance(value, str) and len(value) < minimum:
            message = '{"should be at least %{count} characters", [count: ' + f"{minimum}]}}"
            self.errors.append((name, message))

    @property
    def valid(self) -> bool:
        return not self.errors


INVALID = object()


def cast_string(value: Any) -> Any:
    return value if isinstance(value, str) else INVALID


def cast_integer(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and INT_TEXT.match(value):
        return int(value)
    return INVALID


def cast_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    return INVALID


_CASTS = {"string": cast_string, "integer": cast_integer, "boolean": cast_boolean}


def elixir_to_string(value: Any, name: str) -> str:
    """``to_string/1`` of a JSON value; maps and lists raise (a 500)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise Crash(f"to_string/1 of {name}: {type(value).__name__}")


def integer_prefix(value: Any, name: str) -> int:
    """``{int, _} = Integer.parse(value)``: a leading integer, or a MatchError (500)."""
    found = INTEGER_PREFIX.match(value) if isinstance(value, str) else None
    if found is None:
        raise Crash(f"{name} is not an integer: {value!r}")
    return int(found.group(0))
