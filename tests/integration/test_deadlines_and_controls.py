"""Step deadlines and operator controls through the real worker, broker and emulator
(docs/behaviour.md §11): the integration system gives `build` a 3-second deadline."""

from __future__ import annotations

from click.testing import CliRunner
from kombu import Connection

from tests.support import wait_for
from workflow_orchestrator.cli import cli
from workflow_orchestrator.transition import email_task_id
from workflow_orchestrator.worker_api import step_completed

from .conftest import System
from .test_end_to_end import EMAIL_CONFIG

DEADLINE = "Workflow Milestone Failed: build.  Reason: Milestone worker did not report back within 3 second(s)"


def ignored(system: System, workflow_id: str) -> int:
    return system.orchestrator.log().count(f"workflow {workflow_id}: ignored a stale")


def test_a_builder_that_never_reports_fails_at_the_deadline(system: System) -> None:
    wid = system.new_workflow(["build", "deploy"])
    system.start(wid, test_instructions={"silent_step": "build"}, notifications_config=EMAIL_CONFIG)
    done = system.wait_completed(wid, timeout=60)
    assert done["workflow_error"] is True
    events = system.events(wid)
    assert events.count(DEADLINE) == 1
    assert "Workflow has failed in 3 second(s)" in events
    mails = wait_for(lambda: system.recorder.emails[wid], what="the e-mail")
    assert [(task_id, m["prefix"][:8]) for task_id, m in mails] == [
        (email_task_id(wid), "FAILED -")
    ]
    (_, _, request) = system.recorder.requests[wid][0]
    seen = ignored(system, wid)
    step_completed(system.caller, request, "built, too late")  # the late report
    wait_for(lambda: ignored(system, wid) > seen, what="the late report to be ignored")
    assert system.workflow(wid)["event_log"] == done["event_log"]


def orchestration_backlog(system: System) -> int:
    with Connection(system.settings.celery_broker_url) as conn:
        _, waiting, _ = conn.channel().queue_declare(system.settings.queue_name, passive=True)
        return waiting


def test_a_deadline_spanning_a_worker_restart_still_fires(system: System) -> None:
    """The deadline is the broker's, not a sleeping task's: with no orchestrator running
    it comes back to the orchestration queue, and the restarted worker acts on it."""
    wid = system.new_workflow(["build"])
    system.start(wid, test_instructions={"silent_step": "build"}, notifications_config=EMAIL_CONFIG)
    wait_for(lambda: system.recorder.requests[wid], what="the build request")
    wait_for(
        lambda: "Starting Workflow Milestone: build" in system.events(wid),
        what="the dispatch to be saved",
    )
    wait_for(lambda: orchestration_backlog(system) == 0, what="the orchestrator to be idle")
    system.orchestrator.kill()  # a crash: nothing of it is left in memory
    wait_for(
        lambda: orchestration_backlog(system) > 0,
        what="the deadline message to come back while no orchestrator runs",
    )
    assert not system.workflow(wid).get("workflow_completed")
    system.orchestrator.start()
    done = system.wait_completed(wid, timeout=60)
    assert done["workflow_error"] is True
    assert system.events(wid).count(DEADLINE) == 1
    mails = wait_for(lambda: system.recorder.emails[wid], what="the e-mail")
    assert [(task_id, m["prefix"][:8]) for task_id, m in mails] == [
        (email_task_id(wid), "FAILED -")
    ]


def test_cancel_a_running_workflow_then_a_completed_one(system: System) -> None:
    wid = system.new_workflow(["deploy"])
    system.start(wid, etcd_token="deploy-cluster-1", test_instructions={"silent_step": "deploy"})
    wait_for(lambda: system.recorder.requests[wid], what="the deploy request")
    env = system.settings.to_env()
    runner = CliRunner()
    result = runner.invoke(cli, ["cancel", wid, "--reason", "wrong branch"], env=env)
    assert result.exit_code == 0, result.output
    assert "cancelled at deploy" in result.output
    wf = system.workflow(wid)
    assert wf["workflow_completed"] is True and wf["workflow_error"] is True
    assert (
        "Workflow Milestone Failed: deploy.  Reason: Cancelled by an operator: wrong branch"
        in system.events(wid)
    )
    (_, _, request) = system.recorder.requests[wid][0]
    seen = ignored(system, wid)
    step_completed(system.caller, request)
    wait_for(lambda: ignored(system, wid) > seen, what="the late report to be ignored")
    puts = len(system.emulator.workflow_puts(wid))
    again = runner.invoke(cli, ["cancel", wid], env=env)
    assert again.exit_code == 1 and "already completed" in again.output
    assert len(system.emulator.workflow_puts(wid)) == puts  # nothing changed, nothing saved


def test_retry_a_failed_build_that_then_succeeds(system: System) -> None:
    wid = system.new_workflow(["build"])
    system.start(wid, test_instructions={"fail_step": "build"}, notifications_config=EMAIL_CONFIG)
    assert system.wait_completed(wid)["workflow_error"] is True
    env = system.settings.to_env()
    runner = CliRunner()
    not_failed = system.new_workflow(["build"])
    nothing = runner.invoke(cli, ["retry", not_failed], env=env)
    assert nothing.exit_code == 1 and "did not fail" in nothing.output

    result = runner.invoke(cli, ["retry", wid], env=env)
    assert result.exit_code == 0, result.output
    wait_for(
        lambda: (
            (wf := system.workflow(wid))["workflow_completed"] and not wf["workflow_error"] and wf
        ),
        what="the retried workflow to succeed",
    )
    builds = {task_id for _, task_id, _ in system.recorder.requests[wid]}
    assert len(builds) == 2
    mails = wait_for(
        lambda: len(system.recorder.emails[wid]) == 2 and system.recorder.emails[wid],
        what="two e-mails",
    )
    assert [m["prefix"][:9] for _, m in mails] == ["FAILED - ", "SUCCEEDED"]
    assert {task_id for task_id, _ in mails} == {email_task_id(wid), email_task_id(wid, 1)}
    events = system.events(wid)
    at = events.index("Retrying Workflow Milestone: build (requested by an operator)")
    assert events[at + 1] == "Starting Workflow Milestone: build"
    assert events.count("Starting Workflow Milestone: build") == 2
    assert any(e.startswith("Workflow completed in ") for e in events[at:])
