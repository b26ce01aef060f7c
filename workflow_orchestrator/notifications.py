"""Chat and e-mail notification payloads (docs/behaviour.md §7.1 and §7.4), pure."""

from __future__ import annotations

from typing import Any


def event_prefix(workflow: dict[str, Any]) -> str:
    """`[OA][{id}][{deployment_repo or Unknown}]`, the prefix of every event line."""
    repo = workflow.get("deployment_repo") or "Unknown"
    return f"[OA][{workflow.get('id')}][{repo}]"


def _section(config: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def room_names(workflow: dict[str, Any]) -> list[Any] | None:
    rooms = _section(workflow.get("notifications_config"), "hipchat", "room_names")
    return rooms if isinstance(rooms, list) and rooms else None


def chat_note(
    prefix: str, message: str, is_success: bool, rooms: list[Any] | None
) -> dict[str, Any]:
    """The chat task's argument. OpenAperture's Notifications reads extra rooms from
    `notifications.hipchat_rooms` and ignores `room_names`: both are sent."""
    payload: dict[str, Any] = {
        "is_success": is_success,
        "prefix": prefix,
        "message": message,
        "room_names": rooms,
    }
    if rooms:
        payload["notifications"] = {"hipchat_rooms": list(rooms)}
    return payload


def chat_payload(workflow: dict[str, Any], message: str, is_success: bool) -> dict[str, Any]:
    """A chat line of the orchestrator's own, prefixed like its event lines."""
    return chat_note(event_prefix(workflow), message, is_success, room_names(workflow))


def completion_recipients(workflow: dict[str, Any]) -> list[Any] | None:
    """`on_workflow_completed` expanded through the groups; None when not configured."""
    email = _section(workflow.get("notifications_config"), "email")
    wanted = _section(email, "events", "on_workflow_completed")
    if not isinstance(wanted, list):
        return None
    groups = _section(email, "groups")
    groups = groups if isinstance(groups, dict) else {}
    recipients: list[Any] = []
    for entry in wanted:  # a group name becomes its members; anything else stays as is
        members = groups.get(entry) if isinstance(entry, str) else None
        if isinstance(members, list):
            recipients.extend(members)
        elif members is not None:
            recipients.append(members)
        else:
            recipients.append(entry)
    return recipients


def completion_email(
    workflow: dict[str, Any], recipients: list[Any], ui_url: str
) -> dict[str, Any]:
    """The `notifications.email` argument sent when a workflow finishes."""
    prefix = event_prefix(workflow)
    failed = bool(workflow.get("workflow_error"))
    subject = f"FAILED - {prefix}" if failed else f"SUCCEEDED {prefix}"
    source, ref = workflow.get("source_repo"), workflow.get("source_repo_git_ref")
    if source and ref:
        body = f"Source Commit:\n{source}/commit/{ref}"
    elif source:
        body = f"Source Repo:\n{source}"
    else:
        body = f"Deployment Repo:\nhttps://github.com/{workflow.get('deployment_repo')}"
    link = f"{ui_url.rstrip('/')}/index.html#/oa/workflows/workflows/{workflow.get('id')}"
    body += f"\n\nFor more information, please see:\n{link}"
    return {
        "prefix": subject,
        "message": body,
        "notifications": {"email_addresses": recipients},
    }
