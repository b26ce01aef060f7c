"""``/workflows`` routes, as OpenAperture/manager's ``web/controllers/workflows.ex`` does them.

What a client meets with the real Manager and must survive:
- ids are UUIDs: ``GET`` of anything else is a 500 (Ecto's cast raises); ``PUT``,
  ``DELETE`` and ``execute`` cast the id first and answer 404 to a value not shaped like
  a UUID, 500 to one shaped like it but not hex;
- ``POST`` makes its own UUID (a given ``id`` is ignored), answers 201 with an empty body
  and a ``Location``, trims the repos, and puts ``config`` in front of ``milestones`` when
  neither ``build`` nor ``config`` is listed;
- ``PUT`` leaves omitted fields as they are, except ``workflow_completed`` which becomes
  false; a null sets a field to null (``workflow_error`` can be null); an over-long repo,
  ref or step is a 500 (PostgreSQL refuses the row), and so is a ``scheduled_start_time``
  Timex cannot parse as RFC 1123;
- ``execute`` publishes the whole workflow plus the Manager's routing ids and the
  exchange overrides made integers, and answers 202 with an empty body (even when the
  publish fails: the real one publishes from a GenServer cast), or 409 in plain text;
- a 404 has an empty body.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .changeset import INTEGER_PREFIX, elixir_to_string, integer_prefix
from .columns import (
    MODEL_FIELDS,
    BadTime,
    Invalid,
    Overflow,
    Undecodable,
    cast,
    parse_rfc1123,
    poison_encode,
    uuid_hex,
    uuid_shaped,
)
from .http import Crash, Handler, HTTPProblem, Request, Response
from .store import render_workflow

if TYPE_CHECKING:
    from .server import ManagerEmulator

log = logging.getLogger("workflow_orchestrator.emulator")

_JSON_TEXT = tuple(c.name for c in MODEL_FIELDS if c.kind == "json_text")
_OVERRIDES = ("build_messaging_exchange_id", "deploy_messaging_exchange_id")

#: ``OpenAperture.WorkflowOrchestratorApi.Workflow`` (the ref the Manager pins): the
#: workflow part of the message ``execute`` publishes, in struct order.
MESSAGE_WORKFLOW_FIELDS: tuple[str, ...] = (
    "id",
    "workflow_id",
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
    "workflow_start_time",
    "step_time",
    "event_log",
    "scheduled_start_time",
    "execute_options",
)
#: ``OpenAperture.WorkflowOrchestratorApi.Request``: the request part, in struct order.
MESSAGE_REQUEST_FIELDS: tuple[str, ...] = (
    "force_build",
    "build_messaging_exchange_id",
    "deploy_messaging_exchange_id",
    "orchestration_queue_name",
    "workflow_orchestration_exchange_id",
    "workflow_orchestration_broker_id",
    "notifications_exchange_id",
    "notifications_broker_id",
    "docker_build_etcd_token",
    "etcd_token",
    "deployable_units",
    "notifications_config",
    "fleet_config",
)


def _not_found() -> HTTPProblem:
    return HTTPProblem(Response.empty(404))


def _location(path_id: str) -> dict[str, str]:
    return {"Location": f"/workflows/{quote(path_id, safe='')}"}


def _id_for_get(path_id: str) -> str:
    """``Repo.get(Workflow, id)`` without a cast first: anything but a UUID raises."""
    if not (uuid_shaped(path_id) and uuid_hex(path_id)):
        raise Crash(f"cannot cast {path_id!r} to Ecto.UUID")
    return path_id.lower()


def _id_after_cast(path_id: str) -> str:
    """``Ecto.UUID.cast`` then ``Repo.get``: unshaped is nil (404), unshaped hex raises."""
    if not uuid_shaped(path_id):
        raise _not_found()
    if not uuid_hex(path_id):
        raise Crash(f"cannot dump {path_id!r} as a UUID")
    return path_id.lower()


def _cast_fields(params: dict[str, Any]) -> dict[str, Any]:
    """Ecto's cast of the model's fields present in ``params``; 400 with every error."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for column in MODEL_FIELDS:
        if column.name in params:
            try:
                values[column.name] = cast(column, params[column.name])
            except Invalid as exc:
                errors[exc.field] = exc.problem
    if errors:
        raise HTTPProblem(Response.json(400, errors))
    return values


def _scheduled(value: Any) -> Any:
    try:
        return parse_rfc1123(value)
    except BadTime as exc:
        raise Crash(f"scheduled_start_time is not RFC 1123: {exc}") from None


def _trim(value: Any) -> Any:
    # trim_trailing/1: surrounding blanks, then trailing slashes, then trailing backslashes.
    if isinstance(value, str):
        return value.strip().rstrip("/").rstrip("\\")
    return value


# -- routes ------------------------------------------------------------------------------


def list_workflows(em: ManagerEmulator, req: Request) -> Response:
    """``GET /workflows?lookback=24&deployment_repo=...|source_repo=...``."""
    lookback = integer_prefix(req.params.get("lookback", "24"), "lookback")
    repo = req.params.get("deployment_repo")
    if repo is None and req.params.get("source_repo") is not None:
        repo = f"{req.params['source_repo']}_docker"
    repo = str(repo) if repo else None
    return Response.json(200, em.store.list_workflows(lookback, repo))


def create_workflow(em: ManagerEmulator, req: Request) -> Response:
    """``POST /workflows``: a new UUID, 201, empty body, ``Location``."""
    p = req.params
    fields: dict[str, Any] = {name: p.get(name) for name in (c.name for c in MODEL_FIELDS)}
    milestones = fields["milestones"]
    if milestones is not None:
        if not isinstance(milestones, list):
            raise Crash("milestones is not a list")  # Enum.filter on it raises
        if "build" not in milestones and "config" not in milestones:
            milestones = ["config", *milestones]
        fields["milestones"] = poison_encode(milestones)
    for name in ("workflow_step_durations", "event_log", "execute_options"):
        if fields[name] is not None:
            fields[name] = poison_encode(fields[name])
    if fields["workflow_completed"] is None:
        fields["workflow_completed"] = False
    if fields["scheduled_start_time"] is not None:
        fields["scheduled_start_time"] = _scheduled(fields["scheduled_start_time"])
    fields["deployment_repo"] = _trim(fields["deployment_repo"])
    fields["source_repo"] = _trim(fields["source_repo"])
    values = _cast_fields(fields)
    workflow_id = new_uuid()
    try:
        em.store.insert_workflow(workflow_id, values)
    except Overflow as exc:
        log.info("emulator: workflow insert refused: %s", exc)
        return Response.empty(500)
    return Response.empty(201, _location(workflow_id))


def get_workflow(em: ManagerEmulator, req: Request) -> Response:
    """``GET /workflows/{id}``."""
    try:
        workflow = em.store.get_workflow(_id_for_get(req.path_params["id"]))
    except Undecodable as exc:
        raise Crash(f"Poison.decode! failed on {exc}") from None
    if workflow is None:
        raise _not_found()
    return Response.json(200, workflow)


def put_workflow(em: ManagerEmulator, req: Request) -> Response:
    """``PUT /workflows/{id}``: omitted fields kept, ``workflow_completed`` false if omitted."""
    workflow_id = _id_after_cast(req.path_params["id"])
    if em.store.workflow_row(workflow_id) is None:
        raise _not_found()
    params = dict(req.params)
    params["id"] = workflow_id
    for name in _JSON_TEXT:
        if params.get(name) is not None:
            params[name] = poison_encode(params[name])
    if params.get("workflow_completed") is None:
        params["workflow_completed"] = False
    if params.get("scheduled_start_time") is not None:
        params["scheduled_start_time"] = _scheduled(params["scheduled_start_time"])
    values = _cast_fields(params)
    try:
        known = em.store.update_workflow(workflow_id, values, body=req.body_params)
    except Overflow as exc:
        log.info("emulator: workflow %s update refused: %s", workflow_id, exc)
        return Response.empty(500)
    if not known:
        raise _not_found()
    return Response.empty(204, _location(req.path_params["id"]))


def delete_workflow(em: ManagerEmulator, req: Request) -> Response:
    """``DELETE /workflows/{id}``."""
    if not em.store.delete_workflow(_id_after_cast(req.path_params["id"])):
        raise _not_found()
    return Response.empty(204)


def execute_workflow(em: ManagerEmulator, req: Request) -> Response:
    """``POST /workflows/{id}/execute``: publish the start message, 202 with no body."""
    workflow_id = _id_after_cast(req.path_params["id"])
    row = em.store.workflow_row(workflow_id)
    if row is None:
        raise _not_found()
    try:
        workflow = render_workflow(row)
    except Undecodable as exc:
        raise Crash(f"Poison.decode! failed on {exc}") from None
    if workflow["workflow_completed"] is True:
        return Response.text(409, "Workflow has already completed")
    if row["current_step"] is not None:
        return Response.text(409, "Workflow has already been started")
    message = start_message(
        workflow,
        req.params,
        exchange_id=em.exchange_id,
        broker_id=em.broker_id,
        queue_name=em.queue_name,
    )
    # The real Manager then saves execute_options through a :string cast of a map, which
    # the changeset refuses: nothing is stored. The options travel in the message only.
    em.publish_start(message)
    return Response.empty(202, _location(req.path_params["id"]))


def start_message(
    workflow: dict[str, Any],
    params: dict[str, Any],
    *,
    exchange_id: str,
    broker_id: str,
    queue_name: str,
) -> dict[str, Any]:
    """The message the real ``execute`` publishes for this workflow and these params."""
    payload = dict(workflow)
    stored = workflow.get("execute_options")
    if stored is None:
        options: dict[str, Any] = {}
        if params.get("force_build") is not None:
            payload["force_build"] = params["force_build"]
        options["force_build"] = payload.get("force_build")
        for name in _OVERRIDES:
            text = elixir_to_string(params.get(name), name)
            if text:
                found = INTEGER_PREFIX.match(text)
                if found:
                    payload[name] = int(found.group(0))
            options[name] = payload.get(name)
        payload["execute_options"] = options
    else:
        if not isinstance(stored, dict):
            raise Crash("stored execute_options is not an object")
        payload["force_build"] = stored.get("force_build")
        for name in _OVERRIDES:
            payload[name] = stored.get(name)
    payload.update(
        notifications_exchange_id=exchange_id,
        notifications_broker_id=broker_id,
        workflow_orchestration_exchange_id=exchange_id,
        workflow_orchestration_broker_id=broker_id,
        orchestration_queue_name=queue_name,
    )
    message = {name: payload.get(name) for name in MESSAGE_WORKFLOW_FIELDS}
    message.update({name: payload.get(name) for name in MESSAGE_REQUEST_FIELDS})
    return message


def new_uuid() -> str:
    """``Ecto.UUID.generate()``."""
    return str(uuid.uuid4())


ROUTES: dict[str, dict[str, Handler]] = {
    "/workflows": {"GET": list_workflows, "POST": create_workflow},
    "/workflows/{id}": {"GET": get_workflow, "PUT": put_workflow, "DELETE": delete_workflow},
    "/workflows/{id}/execute": {"POST": execute_workflow},
}
