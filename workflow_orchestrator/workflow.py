"""The workflow record: which fields the Manager stores, and how a message merges in (pure)."""

from __future__ import annotations

from typing import Any

#: Fields the Manager persists (docs/behaviour.md §2); a PUT carries exactly these.
WORKFLOW_FIELDS: tuple[str, ...] = (
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
    "scheduled_start_time",
    "execute_options",
)

#: Fields the Manager stores as JSON text and returns decoded.
JSON_TEXT_FIELDS: tuple[str, ...] = (
    "milestones",
    "workflow_step_durations",
    "event_log",
    "execute_options",
)

#: Request fields (docs/behaviour.md §2) carried in messages; unknown keys pass through too.
REQUEST_FIELDS: tuple[str, ...] = (
    "workflow_id",
    "workflow_start_time",
    "step_time",
    "force_build",
    "build_messaging_exchange_id",
    "deploy_messaging_exchange_id",
    "docker_build_etcd_token",
    "etcd_token",
    "deployable_units",
    "notifications_config",
    "fleet_config",
    "aws_config",
    "ecs_task_definition",
)

#: Manager bookkeeping that never travels in a request.
MANAGER_ONLY_FIELDS: tuple[str, ...] = ("inserted_at", "updated_at")


def persisted_view(workflow: dict[str, Any]) -> dict[str, Any]:
    """The PUT body: the persisted fields, `workflow_completed` always present."""
    body = {name: workflow.get(name) for name in WORKFLOW_FIELDS if name != "id"}
    body["workflow_completed"] = bool(workflow.get("workflow_completed"))
    body["workflow_error"] = bool(workflow.get("workflow_error"))
    step = body.get("current_step")
    body["current_step"] = None if step is None else str(step)
    return body


def merge(stored: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """Stored workflow + message: the message's non-null values win; event logs union.

    A null in the message never erases a stored value, and no log line appears twice,
    so a stale copy of the log travelling with a worker cannot shrink the stored one.
    """
    merged = {k: v for k, v in stored.items() if k not in MANAGER_ONLY_FIELDS}
    for key, value in message.items():
        if value is not None and key != "event_log":
            merged[key] = value
    merged["event_log"] = union_log(stored.get("event_log"), message.get("event_log"))
    return merged


def union_log(stored: list[str] | None, *logs: list[str] | None) -> list[str]:
    """Order-preserving union: the stored log as it is (a retried step's lines stand in
    it twice, on purpose), then every other line not already there, once."""
    out: list[str] = list(stored or ())
    seen: set[str] = set(out)
    for log in logs:
        for line in log or ():
            if line not in seen:
                seen.add(line)
                out.append(line)
    return out
