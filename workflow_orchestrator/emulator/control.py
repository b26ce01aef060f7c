"""``/_emulator/*``: the emulator's own control routes, no auth, for out-of-process tests.

They steer the fault switches, read and reset the call counters, and list the PUT bodies
a workflow received. The real Manager has none of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .http import Handler, HTTPProblem, Request, Response

if TYPE_CHECKING:
    from .server import ManagerEmulator


def get_faults(em: ManagerEmulator, req: Request) -> Response:
    """The fault switches now."""
    return Response.json(200, em.faults.snapshot())


def set_faults(em: ManagerEmulator, req: Request) -> Response:
    """``{"reset", "expire_tokens", "fail_for", "status", "latency", "drop_for", "include_token"}``."""
    body = req.body_params
    include_token = bool(body.get("include_token", False))
    try:
        if body.get("reset"):
            em.reset_faults()
        if body.get("expire_tokens"):
            em.expire_tokens()
        if body.get("fail_for") is not None:
            status = int(body.get("status", 503))
            em.fail_for(float(body["fail_for"]), status, include_token=include_token)
        if body.get("latency") is not None:
            em.set_latency(float(body["latency"]))
        if body.get("drop_for") is not None:
            em.drop_connections_for(float(body["drop_for"]), include_token=include_token)
    except (TypeError, ValueError):
        raise HTTPProblem(Response.json(400, {"error": "fault values must be numbers"})) from None
    return get_faults(em, req)


def get_counters(em: ManagerEmulator, req: Request) -> Response:
    """Calls per route key, plus ``total``."""
    return Response.json(200, em.counters())


def reset_counters(em: ManagerEmulator, req: Request) -> Response:
    """Count from zero."""
    em.reset_counters()
    return Response.empty(204)


def workflow_puts(em: ManagerEmulator, req: Request) -> Response:
    """Every accepted PUT body of a workflow."""
    return Response.json(200, em.workflow_puts(req.path_params["id"]))


ROUTES: dict[str, dict[str, Handler]] = {
    "/_emulator/faults": {"GET": get_faults, "POST": set_faults},
    "/_emulator/counters": {"GET": get_counters, "DELETE": reset_counters},
    "/_emulator/workflows/{id}/puts": {"GET": workflow_puts},
}
