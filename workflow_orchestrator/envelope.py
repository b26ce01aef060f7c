"""Is this AMQP message a Celery task call the orchestrator can run? (pure)

Stock Celery trusts the shape of a message whose `task` header it knows: a body that is
not `[args, kwargs, embed]` raises inside the consumer ("Unrecoverable error") and kills
the worker, on every restart, since the message goes back to the queue. The consumer
asks `envelope_problem` first and dead-letters whatever it names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from typing import Any

#: Headers Celery reads with a fixed type, and the types it needs.
_TYPED_HEADERS: dict[str, tuple[type, ...]] = {
    "retries": (int,),
    "shadow": (str, type(None)),
    "root_id": (str, type(None)),
    "parent_id": (str, type(None)),
    "group": (str, type(None)),
    "origin": (str, type(None)),
    "stamped_headers": (list, type(None)),
    "stamps": (dict, type(None)),
    "replaced_task_nesting": (int,),
}


def _kind(value: Any) -> str:
    names = {dict: "a JSON object", list: "a list", str: "a string", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def _time_limits(value: Any) -> bool:
    if value is None:
        return True
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value
        )
    )


def envelope_problem(
    headers: Any, decode: Callable[[], Any], accepted_tasks: Collection[str]
) -> str | None:
    """Why the message cannot be run as one of `accepted_tasks`, or None when it can.

    `decode` returns the decoded body (it may raise: the body cannot be decoded).
    """
    if not isinstance(headers, dict):
        return "the message has no headers table, so it is not a Celery task message"
    task = headers.get("task")
    if task is None:
        return "the message has no `task` header (not a Celery protocol 2 task message)"
    if not isinstance(task, str) or task not in accepted_tasks:
        return f"the message names task {str(task)[:120]!r}, which this worker does not run"
    if not isinstance(headers.get("id"), str):
        return f"header `id` is missing or not a string ({_kind(headers.get('id'))})"
    for name, types in _TYPED_HEADERS.items():
        value = headers.get(name)
        if name in headers and (
            not isinstance(value, types) or (isinstance(value, bool) and int in types)
        ):
            return f"header `{name}` has the wrong type ({_kind(value)})"
    if not _time_limits(headers.get("timelimit")):
        return "header `timelimit` is not a pair of numbers"
    try:
        body = decode()
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises
        return f"the body cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        size = f" of {len(body)} items" if isinstance(body, (list, tuple)) else ""
        return f"the body is not Celery's [args, kwargs, embed] (got {_kind(body)}{size})"
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        return f"the body's args are not a list (got {_kind(args)})"
    if not isinstance(kwargs, dict):
        return f"the body's kwargs are not an object (got {_kind(kwargs)})"
    if not isinstance(embed, dict):
        return f"the body's embed part is not an object (got {_kind(embed)})"
    return None


def message_identity(headers: Any, body: bytes | str | None) -> str:
    """The Celery task id of a message, else a digest of its body (docs/behaviour.md §6)."""
    if isinstance(headers, dict) and isinstance(headers.get("id"), str) and headers["id"]:
        return headers["id"]
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else (body or b"")
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def workflow_id_of(body: Any) -> str | None:
    """The workflow id a decoded task body names, when it names one."""
    if isinstance(body, (list, tuple)) and body and isinstance(body[0], (list, tuple)) and body[0]:
        payload = body[0][0]
        if isinstance(payload, dict) and isinstance(payload.get("id"), str):
            return payload["id"]
    return None


#: Keyword arguments the orchestrator carries across its own retries of one message: the
#: retry count, the credentials retry count, when it was first found ahead of the store.
RETRY_KWARGS = ("attempts", "credential_retries", "ahead_since")


def with_fresh_retry_budget(body: bytes, content_type: str | None) -> bytes:
    """A dead letter's body as a replay sends it: without RETRY_KWARGS, so a message
    that gave up after MAX_RETRIES gets the whole budget again instead of giving up at
    its first failure. Anything that is not a JSON Celery call is returned unchanged."""
    if content_type != "application/json":
        return body
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[1], dict)):
        return body
    kwargs = {k: v for k, v in value[1].items() if k not in RETRY_KWARGS}
    if kwargs == value[1]:
        return body
    return json.dumps([value[0], kwargs, value[2]]).encode("utf-8")
