"""The status view of a workflow, as `status`, `watch` and the demo show it (pure).

A stored workflow (as the Manager returns it) becomes a plain view (`describe_workflow`,
the shape of `status --json`) and lines of text; nothing here does I/O, so the shape
documented in docs/cli.md is pinned by unit tests.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from .transition import CANCELLED_REASON, DEADLINE_REASON

#: Exit codes of every command (and the demo): 0 success, 1 the thing looked at failed,
#: 2 the command could not do its job, 130 interrupted.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: The states a milestone has in the status view.
MILESTONE_STATES = ("done", "running", "failed", "pending")
#: Workflow states of the status view.
WORKFLOW_STATES = ("pending", "running", "succeeded", "failed")
#: The `current_step` the orchestrator writes once every milestone is done.
COMPLETED_STEP = "workflow_completed"

_FAILED = re.compile(r"Workflow Milestone Failed: (?P<step>.*?)\.  Reason: (?P<reason>.*)\Z", re.S)
_WORKER_FAILED = re.compile(r"Workflow step failed: (?P<reason>.*)\Z", re.S)
# `[OA][{id}][{repo}] ` (orchestrator lines) or `[OA][{id}] ` (worker lines).
_WORKER_LINE = re.compile(r"\A\[OA\]\[[^\]]*\] ")  # a worker's line: no [repo] part
#: The failure reason of a failure a worker reported (its own reason is in its lines).
WORKER_REPORTED = "Milestone worker has reported a failure"
#: How a failed workflow ended, from its failure reason (docs/behaviour.md §11): an
#: operator's cancel and a step deadline are told apart from a failure.
FAILURE_KINDS = {CANCELLED_REASON: "cancelled", DEADLINE_REASON: "timed_out"}
#: The verb of each failure kind in `status`, `watch` and the demo.
FAILURE_VERBS = {"cancelled": "cancelled", "timed_out": "timed out", "failed": "failed"}
_PREFIX = re.compile(r"\A\[OA\]\[[^\]]*\](?:\[[^\]]*\])?\s?")


def event_message(line: Any) -> str:
    """An event-log line without its `[OA][id][repo]` prefix: what a person reads."""
    return _PREFIX.sub("", str(line), count=1)


def _milestones(workflow: dict[str, Any]) -> list[str]:
    value = workflow.get("milestones")
    return [str(m) for m in value] if isinstance(value, list) else []


def _worker_reason(log: list[Any]) -> str | None:
    """The reason a worker gave for its failure, from its own lines (`[OA][{id}] ...`,
    no repo part) before the orchestrator's failure line: OpenAperture's workers write
    the reason, then their message; older ones wrote `Workflow step failed: {reason}`."""
    lines = [str(line) for line in log]
    end = next((i for i, line in enumerate(lines) if _FAILED.match(event_message(line))), None)
    before = lines[:end] if end is not None else lines
    marked = [m for m in (_WORKER_FAILED.match(event_message(x)) for x in before) if m]
    if marked:
        return marked[-1]["reason"]
    worker = [event_message(x) for x in before if _WORKER_LINE.match(x)]
    if not worker:
        return None
    return worker[-2] if len(worker) >= 2 else worker[-1]


def _failure(events: list[str], log: list[Any], current_step: Any) -> dict[str, Any]:
    """The failure line's step and reason, and the worker's own reason when it gave one."""
    step: str | None = None if current_step in (None, COMPLETED_STEP) else str(current_step)
    reason: str | None = None
    for message in reversed(events):
        found = _FAILED.match(message)
        if found:
            step = None if found["step"] == "none" else found["step"]
            reason = found["reason"]
            break
    worker = _worker_reason(log) if reason == WORKER_REPORTED else None
    kind = next((k for start, k in FAILURE_KINDS.items() if (reason or "").startswith(start)), None)
    return {
        "kind": kind or "failed",
        "step": step,
        "reason": reason or "unknown (no failure line in the event log)",
        "worker_reason": worker,
    }


def _failed_verb(view: dict[str, Any]) -> str:
    return FAILURE_VERBS.get((view.get("failure") or {}).get("kind"), "failed")


def outcome_text(view: dict[str, Any]) -> str:
    """The state in one word or two: a failed workflow says how it failed
    (`failed`, `timed out`, `cancelled`); otherwise the view's state."""
    return _failed_verb(view) if view.get("state") == "failed" else str(view.get("state"))


def describe_workflow(workflow: dict[str, Any], events: int = 5) -> dict[str, Any]:
    """A stored workflow (as the Manager returns it) -> the status view of `status --json`.

    Pure, so the shape documented in docs/cli.md is pinned by unit tests. Milestone
    states come from the position of `current_step` in `milestones`: the ones before
    it are done, it is running (or failed when the workflow failed), the ones after it
    are pending; a succeeded workflow has every milestone done.
    """
    milestones = _milestones(workflow)
    step = workflow.get("current_step")
    completed = bool(workflow.get("workflow_completed"))
    error = bool(workflow.get("workflow_error"))
    log = workflow.get("event_log")
    messages = [event_message(line) for line in log] if isinstance(log, list) else []
    durations = workflow.get("workflow_step_durations")
    durations = durations if isinstance(durations, dict) else {}

    if completed:
        state = "failed" if error else "succeeded"
    elif step is None:
        state = "pending"
    else:
        state = "running"
    at = milestones.index(step) if step in milestones else None
    if state == "succeeded":
        at = len(milestones)

    rows = []
    for index, name in enumerate(milestones):
        if at is None or index > at:
            row_state = "pending"
        elif index < at:
            row_state = "done"
        else:
            row_state = "failed" if state == "failed" else "running"
        duration = durations.get(name)
        rows.append(
            {
                "name": name,
                "state": row_state,
                "duration": None if duration is None else str(duration),
            }
        )

    if state == "succeeded":
        index = len(milestones)
    elif at is not None:
        index = at + 1
    else:
        index = 0
    shown = max(0, events)
    return {
        "id": workflow.get("id"),
        "deployment_repo": workflow.get("deployment_repo"),
        "deployment_repo_git_ref": workflow.get("deployment_repo_git_ref"),
        "state": state,
        "finished": completed,
        "current_step": step,
        "milestone_index": index,
        "milestone_count": len(milestones),
        "milestones": rows,
        "duration": workflow.get("workflow_duration") if completed else None,
        "elapsed": workflow.get("elapsed_workflow_time"),
        "failure": _failure(messages, log if isinstance(log, list) else [], step)
        if state == "failed"
        else None,
        "events": messages[-shown:] if shown else [],
        "event_count": len(messages),
        "updated_at": workflow.get("updated_at"),
    }


def failure_text(view: dict[str, Any]) -> str:
    """`Reason (worker: detail)` for a failed view, '' otherwise."""
    failure = view.get("failure")
    if not failure:
        return ""
    text = failure["reason"]
    if failure.get("worker_reason") and failure["worker_reason"] not in text:
        text += f" (worker: {failure['worker_reason']})"
    return text


def state_text(view: dict[str, Any]) -> str:
    """One phrase for where the workflow is: `running deploy (milestone 2 of 3)`."""
    k, n = view["milestone_index"], view["milestone_count"]
    if view["state"] == "succeeded":
        return f"succeeded in {view['duration'] or '<unknown>'} ({n} of {n} milestones)"
    if view["state"] == "failed":
        step = (view["failure"] or {}).get("step")
        where = f"at {step} (milestone {k} of {n})" if step and k else "before any milestone"
        return f"{_failed_verb(view)} {where} after {view['duration'] or '<unknown>'}"
    if view["state"] == "running":
        return f"running {view['current_step']} (milestone {k} of {n})"
    return f"pending: not started ({n} milestones)"


def render_status(view: dict[str, Any]) -> str:
    """The status view as text, for a person."""
    title = f"Workflow {view['id']}"
    if view.get("deployment_repo"):
        ref = view.get("deployment_repo_git_ref")
        title += f"  {view['deployment_repo']}" + (f" @ {ref}" if ref else "")
    lines = [title, f"State:    {state_text(view)}"]
    if view["state"] == "failed":
        lines.append(f"Reason:   {failure_text(view)}")
    elif view["state"] == "running" and view.get("elapsed"):
        lines.append(f"Elapsed:  {view['elapsed']} (at the last update)")
    if view["milestones"]:
        width = max(len(m["name"]) for m in view["milestones"])
        lines += ["", "Milestones:"]
        for m in view["milestones"]:
            # a running step's stored duration is an earlier run's (before a retry)
            duration = m["duration"] if m["duration"] and m["state"] in ("done", "failed") else ""
            lines.append(f"  {m['name']:<{width}}  {m['state']:<8} {duration}".rstrip())
    if view["events"]:
        lines += ["", f"Last {len(view['events'])} of {view['event_count']} events:"]
        lines += [f"  {event}" for event in view["events"]]
    return "\n".join(lines)


def seconds_text(seconds: float) -> str:
    """`4.2s`, `1m05s`, `2h03m`: a clock a person reads at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_text(view: dict[str, Any], elapsed: float) -> str:
    """The one-line progress of `watch` and `demo`: `[2/3] deploy running  4.2s`."""
    k, n = view["milestone_index"], view["milestone_count"]
    if view["state"] == "succeeded":
        return f"[{n}/{n}] succeeded in {view['duration'] or seconds_text(elapsed)}"
    if view["state"] == "failed":
        step = (view["failure"] or {}).get("step") or "start"
        return f"[{k}/{n}] {_failed_verb(view)} at {step}: {failure_text(view)}"
    if view["state"] == "running":
        return f"[{k}/{n}] {view['current_step']} running  {seconds_text(elapsed)}"
    return f"[0/{n}] waiting for the orchestrator  {seconds_text(elapsed)}"


# -- terminal output --------------------------------------------------------------------


def terminal_width() -> int:
    """Columns usable on the terminal without wrapping (wrapping breaks a redraw)."""
    try:
        return max(20, shutil.get_terminal_size().columns - 1)
    except (OSError, ValueError):
        return 79


def fit(text: str, width: int) -> str:
    """`text` cut to `width` columns."""
    return text if len(text) <= width else text[: width - 3] + "..."
