"""``/system_events``, as OpenAperture/manager's ``web/controllers/system_events.ex`` does it.

A ``unique: true`` event is refused (409) when an event of the same ``type`` was posted in
the last hour and either of the two has no ``data`` or their ``data`` are equal (Elixir's
strict ``===``: ``1`` and ``1.0`` differ, so do ``1`` and ``true``). Only the first is kept.
The message plays no part. ``type`` and ``severity`` are required. A creation answers 201
with an empty body and ``Location: /system_events``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .changeset import Changeset, changeset_error_body, integer_prefix, problem
from .columns import Overflow, Undecodable, poison_decode, poison_encode
from .http import Crash, Handler, HTTPProblem, Request, Response

if TYPE_CHECKING:
    from .server import ManagerEmulator

log = logging.getLogger("workflow_orchestrator.emulator")

#: Seconds the unique flag of a system event looks back (``get_events(1, type)``).
UNIQUE_EVENT_WINDOW = 3600.0


def same(a: Any, b: Any) -> bool:
    """Elixir's ``===`` on decoded JSON: equal values of the same type, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def list_events(em: ManagerEmulator, req: Request) -> Response:
    """``GET /system_events?lookback=24`` (0 or less: all)."""
    lookback = integer_prefix(req.params.get("lookback", "24"), "lookback")
    try:
        return Response.json(200, em.store.list_system_events(lookback))
    except Undecodable as exc:
        raise Crash(f"Poison.decode! failed on event data: {exc}") from None


def create_event(em: ManagerEmulator, req: Request) -> Response:
    """``POST /system_events``."""
    data = req.params.get("data")
    params = {
        "type": req.params.get("type"),
        "message": req.params.get("message"),
        "severity": req.params.get("severity"),
        "data": None if data is None else poison_encode(data),
    }
    changes = Changeset(params)
    changes.field("message", "string")
    changes.field("data", "string")
    changes.field("type", "string", required=True)
    changes.field("severity", "string", required=True)
    changes.min_length("type", 1)
    changes.min_length("severity", 1)
    if not changes.valid:
        raise HTTPProblem(Response.json(400, changeset_error_body(changes.errors, "SystemEvent")))
    if req.params.get("unique") is True and not _unique(em, changes.values["type"], data):
        raise problem(409, "conflict", "SystemEvent")
    try:
        em.store.add_system_event(changes.values)
    except Overflow as exc:
        log.info("emulator: system event refused: %s", exc)
        raise problem(500, "internal_server_error", "SystemEvent") from None
    return Response.empty(201, {"Location": "/system_events"})


def _unique(em: ManagerEmulator, type_: str, data: Any) -> bool:
    rows = em.store.recent_event_rows(time.time() - UNIQUE_EVENT_WINDOW, type_)
    for row in rows:
        try:
            existing = poison_decode(row["data"])
        except Undecodable as exc:
            raise Crash(f"Poison.decode! failed on event data: {exc}") from None
        if data is None or existing is None:
            return False
        if not (isinstance(data, dict) and isinstance(existing, dict)):
            raise Crash("Map.equal? of data that is not an object")
        if same(existing, data):
            return False
    return True


ROUTES: dict[str, dict[str, Handler]] = {
    "/system_events": {"GET": list_events, "POST": create_event},
}
