"""Step deadlines and operator controls in the pure core (docs/behaviour.md §11)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from workflow_orchestrator.queues import wait_lengths, wait_queue, wait_queue_names
from workflow_orchestrator.transition import (
    CARRIED_FIELDS,
    CONTROL_KEY,
    EmailNotification,
    EngineConfig,
    Outcome,
    WorkerRequest,
    email_task_id,
    needs_last_dispatch,
    transition,
    wait_seconds,
)

from .fakes import WID, FakeTopology, stored_workflow

NOW = datetime(2026, 11, 27, 6, 0, 0, tzinfo=timezone.utc)
CONFIG = EngineConfig(ui_url="http://ui.example", step_timeouts={"build": 7200.0})
PREFIX = f"[OA][{WID}][Test-Org/app_docker]"
MAIL = {"email": {"events": {"on_workflow_completed": ["ops@example.com"]}}}


def run(stored: dict[str, Any], message: dict[str, Any], now: datetime = NOW, last: Any = None):
    return transition(
        stored,
        message,
        now=now,
        topology=FakeTopology(),
        config=CONFIG,
        message_key="msg",
        last_dispatch=last,
    )


def lines(decision: Any) -> list[str]:
    return [line.removeprefix(PREFIX + " ") for line in decision.workflow["event_log"]]


def dispatched() -> tuple[Any, WorkerRequest, dict[str, Any]]:
    start = run(stored_workflow(), {"id": WID, "notifications_config": MAIL})
    (build, deadline) = [e for e in start.effects if isinstance(e, WorkerRequest)]
    last = {
        "step": "build",
        **{
            k: build.payload.get(k)
            for k in ("workflow_start_time", "step_time", "notifications_config")
        },
    }
    saved = {**start.workflow}
    saved.pop("notifications_config", None)  # the Manager does not store it
    return saved, deadline, last


def test_a_dispatch_enqueues_its_deadline_with_a_capped_countdown() -> None:
    _, deadline, _ = dispatched()
    assert (deadline.task, deadline.queue) == (CONFIG.orchestrate_task, CONFIG.queue_name)
    assert deadline.countdown == 512  # the largest wait queue under the poll interval
    control = deadline.payload[CONTROL_KEY]
    assert control == {
        "kind": "deadline",
        "step": "build",
        "step_time": "2026-11-27T06:00:00.000000+00:00",
        "due": "2026-11-27T08:00:00.000000+00:00",
        "timeout": 7200.0,
    }
    assert deadline.payload["notifications_config"] == MAIL


def test_a_deadline_not_yet_due_is_enqueued_again() -> None:
    saved, deadline, last = dispatched()
    later = run(saved, deadline.payload, NOW + timedelta(seconds=7000), last)
    assert later.outcome is Outcome.REQUEUE
    (again,) = later.effects
    assert again.countdown == 128 and again.payload == deadline.payload


def test_a_due_deadline_fails_the_workflow_with_its_email() -> None:
    saved, deadline, last = dispatched()
    due = run(saved, deadline.payload, NOW + timedelta(hours=2, seconds=1), last)
    assert due.outcome is Outcome.APPLIED
    assert lines(due)[-4:-1] == [
        "Workflow Milestone Failed: build.  Reason: Milestone worker did not report back within 2 hour(s)",
        "Workflow has failed in 2 hour(s)",
        "Completed Workflow Milestone: build, in 2 hour(s)",
    ]
    (mail,) = [e for e in due.effects if isinstance(e, EmailNotification)]
    assert mail.task_id == email_task_id(WID) and mail.payload["prefix"].startswith("FAILED - ")
    # delivered twice: the second finds the workflow completed
    again = run(due.workflow, deadline.payload, NOW + timedelta(hours=3), last)
    assert again.outcome is Outcome.DUPLICATE
    # and the worker's late report is stale
    late = run(due.workflow, {"id": WID, "current_step": "build", "step_time": last["step_time"]})
    assert late.outcome is Outcome.DUPLICATE


def test_a_deadline_of_a_step_started_again_is_stale() -> None:
    saved, deadline, last = dispatched()
    moved = {**last, "step_time": "2026-11-27T07:00:00.000000+00:00"}
    stale = run(saved, deadline.payload, NOW + timedelta(hours=3), moved)
    assert stale.outcome is Outcome.DUPLICATE


def test_cancel_fails_a_running_workflow_and_nothing_when_completed() -> None:
    saved, _, last = dispatched()
    message = {"id": WID, CONTROL_KEY: {"kind": "cancel", "reason": "wrong branch"}}
    cancelled = run(saved, message, NOW + timedelta(minutes=5), last)
    assert cancelled.outcome is Outcome.APPLIED
    assert (
        "Workflow Milestone Failed: build.  Reason: Cancelled by an operator: wrong branch"
        in lines(cancelled)
    )
    assert any(isinstance(e, EmailNotification) for e in cancelled.effects)  # config remembered
    bare = run(saved, {"id": WID, CONTROL_KEY: {"kind": "cancel"}}, NOW, last)
    assert lines(bare)[-4].endswith("Reason: Cancelled by an operator")
    again = run(cancelled.workflow, message, NOW + timedelta(minutes=6), last)
    assert again.outcome is Outcome.NOTHING and "already completed" in again.summary


def test_retry_runs_the_failed_step_again_with_new_ids() -> None:
    saved, _, last = dispatched()
    failed = run(
        saved,
        {
            "id": WID,
            "current_step": "build",
            "step_time": last["step_time"],
            "workflow_completed": True,
            "workflow_error": True,
        },
        NOW + timedelta(minutes=1),
        last,
    )
    first_build = dispatched()[1]
    retry = {"id": WID, CONTROL_KEY: {"kind": "retry"}}
    retried = run(failed.workflow, retry, NOW + timedelta(minutes=10), last)
    assert retried.outcome is Outcome.APPLIED
    tail = lines(retried)[-3:]
    assert tail[0] == "Retrying Workflow Milestone: build (requested by an operator)"
    assert tail[1] == "Starting Workflow Milestone: build"
    assert tail[2].startswith("Dispatching a build request to exchange 1")
    assert lines(retried).count("Starting Workflow Milestone: build") == 2
    wf = retried.workflow
    assert wf["workflow_completed"] is False and wf["workflow_error"] is False
    assert wf["workflow_start_time"] == last["workflow_start_time"]
    (build, _) = [e for e in retried.effects if isinstance(e, WorkerRequest)]
    assert build.task_id != first_build.task_id
    assert build.payload["step_time"] == "2026-11-27T06:10:00.000000+00:00"
    report = {**build.payload, "etcd_token": "deploy-cluster-9"}
    built = run(wf, report, NOW + timedelta(minutes=12))  # the retried build reports
    (deploy,) = [e for e in built.effects if isinstance(e, WorkerRequest)]
    done = run(built.workflow, deploy.payload, NOW + timedelta(minutes=13))
    assert done.workflow["workflow_error"] is False
    mails = [e for e in done.effects if isinstance(e, EmailNotification)]
    assert mails and mails[0].task_id == email_task_id(WID, 1) != email_task_id(WID)
    assert run(wf, retry, NOW + timedelta(minutes=11), last).outcome is Outcome.NOTHING


def test_a_retried_step_failing_again_for_the_same_reason_logs_it_again() -> None:
    saved, _, last = dispatched()
    report = {"id": WID, "current_step": "build", "workflow_completed": True}
    report["notifications_config"] = MAIL  # the echoed request carries it
    failed = run(saved, {**report, "step_time": last["step_time"], "workflow_error": True})
    retried = run(failed.workflow, {"id": WID, CONTROL_KEY: {"kind": "retry"}}, last=last)
    (build, _) = [e for e in retried.effects if isinstance(e, WorkerRequest)]
    again = run(retried.workflow, {**build.payload, **report, "workflow_error": True})
    failure = "Workflow Milestone Failed: build.  Reason: Milestone worker has reported a failure"
    assert lines(again).count(failure) == 2  # one per run, as each run wrote it
    assert sum(line.startswith("Sending on_workflow_completed") for line in lines(again)) == 2


def test_retry_of_a_workflow_that_failed_before_any_step_does_nothing() -> None:
    failed = run(stored_workflow(milestones=["teleport"]), {"id": WID})
    nothing = run(failed.workflow, {"id": WID, CONTROL_KEY: {"kind": "retry"}})
    assert nothing.outcome is Outcome.NOTHING and "before any step" in nothing.summary


def failed_then_retried(
    retried_at: datetime,
) -> tuple[dict[str, Any], WorkerRequest, Any, WorkerRequest]:
    """A build dispatched, reported failed and retried by an operator at `retried_at`:
    the stored workflow before the failure, the first build request, the retry's
    decision and the retried build request."""
    saved, _, last = dispatched()
    start = run(stored_workflow(), {"id": WID, "notifications_config": MAIL})
    (old_request, _) = [e for e in start.effects if isinstance(e, WorkerRequest)]
    failed = run(
        saved,
        {**old_request.payload, "workflow_completed": True, "workflow_error": True},
        NOW + timedelta(minutes=1),
        last,
    )
    retry = {"id": WID, CONTROL_KEY: {"kind": "retry"}}
    retried = run(failed.workflow, retry, retried_at, last)
    (new_request, _) = [e for e in retried.effects if isinstance(e, WorkerRequest)]
    return saved, old_request, retried, new_request


def test_a_late_report_of_the_failed_run_does_not_complete_the_retried_step() -> None:
    _, old_request, retried, new_request = failed_then_retried(NOW)
    late = run(retried.workflow, {**old_request.payload, "etcd_token": "deploy-cluster-9"})
    assert late.outcome is Outcome.DUPLICATE and "retried since" in late.summary
    ok = run(retried.workflow, {**new_request.payload, "etcd_token": "deploy-cluster-9"})
    assert ok.outcome is Outcome.APPLIED


@given(st.floats(min_value=0.01, max_value=100_000), st.integers(min_value=1, max_value=7200))
def test_every_wait_a_deadline_takes_has_a_named_wait_queue(remaining: float, poll: int) -> None:
    """The demo and the tests delete these names: none may be missed."""
    used = wait_queue("q", wait_seconds(min(remaining, poll))).name
    assert used in wait_queue_names("q", poll)
    assert all(seconds <= poll for seconds in wait_lengths(poll))
    assert wait_queue_names("q", poll) == [wait_queue("q", s).name for s in wait_lengths(poll)]


def test_a_late_report_echoing_no_log_is_told_by_its_step_start() -> None:
    """Without an echoed log, the step start the failed run was dispatched with is
    earlier than the one remembered for the retried run."""
    saved, old_request, retried, new_request = failed_then_retried(NOW + timedelta(minutes=5))
    remembered = {"step": "build", **{k: new_request.payload.get(k) for k in CARRIED_FIELDS}}
    assert needs_last_dispatch(retried.workflow) and not needs_last_dispatch(saved)

    def report(request: WorkerRequest) -> dict[str, Any]:
        fields = {k: v for k, v in request.payload.items() if k != "event_log"}
        return {**fields, "etcd_token": "deploy-cluster-9"}

    late = run(retried.workflow, report(old_request), NOW + timedelta(minutes=6), remembered)
    assert late.outcome is Outcome.DUPLICATE and "retried since" in late.summary
    ok = run(retried.workflow, report(new_request), NOW + timedelta(minutes=6), remembered)
    assert ok.outcome is Outcome.APPLIED
    # Nothing remembered (another host's lock directory, say): the report applies, as before.
    assert run(retried.workflow, report(old_request)).outcome is Outcome.APPLIED
