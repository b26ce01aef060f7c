"""Validating an orchestration message before any I/O (docs/behaviour.md §2 and §9), pure.

A message that fails here is dead-lettered with an error naming the field, so an
operator can fix the sender; nothing about the workflow is loaded or changed.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from .errors import InvalidRequest

_STR = (str,)
_ID = (str, int)

#: field -> accepted JSON types (None is always accepted: "absent").
_TYPES: dict[str, tuple[type, ...]] = {
    "workflow_id": _ID,
    "deployment_repo": _STR,
    "deployment_repo_git_ref": _STR,
    "source_repo": _STR,
    "source_repo_git_ref": _STR,
    "source_commit_hash": _STR,
    "milestones": (list,),
    "current_step": _STR,
    "elapsed_step_time": _STR,
    "elapsed_workflow_time": _STR,
    "workflow_duration": _STR,
    "workflow_step_durations": (dict,),
    "workflow_error": (bool,),
    "workflow_completed": (bool,),
    "event_log": (list,),
    "scheduled_start_time": _STR,
    "execute_options": (dict,),
    "workflow_start_time": (str, int, float),
    "step_time": (str, int, float),
    "build_messaging_exchange_id": _ID,
    "deploy_messaging_exchange_id": _ID,
    "docker_build_etcd_token": _STR,
    "etcd_token": _STR,
    "notifications_config": (dict,),
    "orchestration_queue_name": _STR,
}

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
    bool: "a boolean",
}

MAX_ID_LENGTH = 255


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _check_type(name: str, value: Any, accepted: tuple[type, ...]) -> None:
    # The usual case first: null, or exactly a type the field takes (a bool is not taken
    # for an int this way, and a float still goes on to be checked for being finite).
    if value is None or (type(value) in accepted and type(value) is not float):
        return
    ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        wanted = " or ".join(_TYPE_NAMES[t] for t in accepted)
        raise InvalidRequest(name, f"must be {wanted} or null, got {_kind(value)}")


def _check_str_list(name: str, value: Any) -> None:
    if value is None:
        return
    for position, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidRequest(
                name, f"must be a list of strings; item {position} is {_kind(item)}"
            )


def parse_request(payload: Any) -> dict[str, Any]:
    """Check a message; return a copy with `workflow_id` filled in.

    Unknown keys are kept (they pass through to workers); known keys must have the
    JSON type the contract gives them.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest(None, f"must be a JSON object, got {_kind(payload)}")
    workflow_id = payload.get("id")
    if not isinstance(workflow_id, str) or not workflow_id.strip():
        if "id" not in payload or workflow_id is None:
            raise InvalidRequest("id", "is required (a non-empty string)")
        raise InvalidRequest("id", f"must be a non-empty string, got {_kind(workflow_id)}")
    if len(workflow_id) > MAX_ID_LENGTH:
        raise InvalidRequest("id", f"is longer than {MAX_ID_LENGTH} characters")
    try:  # the Manager keys workflows by UUID and answers 500, not 404, to anything else
        uuid.UUID(workflow_id)
    except ValueError:
        raise InvalidRequest("id", f"must be a UUID, got {workflow_id[:80]!r}") from None
    for name, accepted in _TYPES.items():
        if name in payload:
            _check_type(name, payload[name], accepted)
    _check_str_list("milestones", payload.get("milestones"))
    _check_str_list("event_log", payload.get("event_log"))
    durations = payload.get("workflow_step_durations") or {}
    for step, duration in durations.items():
        if not isinstance(duration, str):
            raise InvalidRequest(
                "workflow_step_durations",
                f"must map step names to duration strings; {step!r} is {_kind(duration)}",
            )
    request = dict(payload)
    if request.get("current_step") == "":  # OpenAperture's own saves write "" for none
        request["current_step"] = None
    workflow_id_field = request.get("workflow_id")
    if workflow_id_field is not None and str(workflow_id_field) != workflow_id:
        raise InvalidRequest("workflow_id", f"must equal id {workflow_id!r}")
    request["workflow_id"] = workflow_id
    return request


def describe_payload(payload: Any) -> str:
    """A short, safe description of a payload for logs and system events."""
    if isinstance(payload, dict):
        wid = payload.get("id")
        step = payload.get("current_step")
        return f"workflow={str(wid)[:80]!s} step={str(step)[:80]!s}"
    return f"<{_kind(payload)}>"
