"""Whole workflows, asserted to the letter of CONTRACT.md §2-§7 and examples/."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from tests.support import wait_for

from .conftest import Contract

EXAMPLES = Path("/work/shared/examples")
DURATION = r"(\d+ (second|minute|hour|day|week)\(s\)|<unknown>)"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)$")
NOTIFICATIONS = {
    "hipchat": {"room_names": ["Deploys", "Team A"]},
    "email": {
        "groups": {"build-notifications": ["a@example.com", "b@example.com"]},
        "events": {"on_workflow_completed": ["build-notifications", "c@example.com"]},
    },
}


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def routing_fields(contract: Contract) -> dict:
    return {
        "notifications_exchange_id": "1",
        "notifications_broker_id": "1",
        "orchestration_exchange_id": "1",
        "orchestration_broker_id": "1",
        "workflow_orchestration_exchange_id": "1",
        "workflow_orchestration_broker_id": "1",
        "orchestration_queue_name": contract.settings.queue_name,
    }


def test_a_bare_start_runs_build_then_deploy_to_the_letter(contract: Contract) -> None:
    """§2-§5: a start message of only `{"id"}` from a plain client; plain peers."""
    wid = contract.new_workflow(
        ["build", "deploy"],
        execute_options={"force_build": True},
    )
    contract.send({"id": wid})
    wf = contract.wait_completed(wid)
    assert wf["workflow_error"] is False
    assert wf["current_step"] == "workflow_completed"
    assert set(wf["workflow_step_durations"]) == {"build", "deploy"}
    assert re.fullmatch(DURATION, wf["workflow_duration"])
    events = contract.events(wid)
    patterns = [
        re.escape("Starting workflow..."),
        re.escape("Starting Workflow Milestone: build"),
        re.escape(
            "Dispatching a build request to exchange 1, docker build cluster build-cluster-1..."
        ),
        f"Completed Workflow Milestone: build, in {DURATION}",
        re.escape("Starting Workflow Milestone: deploy"),
        re.escape(
            "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-1..."
        ),
        f"Completed Workflow Milestone: deploy, in {DURATION}",
        f"Workflow completed in {DURATION}",
    ]
    assert len(events) == len(patterns), events
    for line, pattern in zip(events, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    # the workers' own lines are kept, in order, between the orchestrator's
    log = contract.lines(wid)
    worker_line = f"[OA][{wid}] build done by a plain peer"
    assert worker_line in log
    assert log.index(worker_line) < log.index(
        f"[OA][{wid}][Test-Org/app_docker] Starting Workflow Milestone: deploy"
    )

    received = contract.recorder.requests[wid]
    assert [(r.task, r.routing_key, r.payload["current_step"]) for r in received] == [
        ("builder.build", contract.settings.builder_queue, "build"),
        ("deployer.deploy", contract.settings.deployer_queue, "deploy"),
    ]
    build, deploy = (r.payload for r in received)
    assert set(example("builder-request.json")) <= set(build), set(
        example("builder-request.json")
    ) - set(build)
    for request in (build, deploy):
        for name, value in routing_fields(contract).items():
            assert request[name] == value, name
        assert request["id"] == request["workflow_id"] == wid
        assert ISO_UTC.match(request["step_time"]), request["step_time"]
        assert ISO_UTC.match(request["workflow_start_time"]), request["workflow_start_time"]
        assert request["force_build"] is True  # from the stored execute_options, passed through
        assert request["milestones"] == ["build", "deploy"]
    assert build["docker_build_etcd_token"] == "build-cluster-1"
    assert build["event_log"][-1] == (
        f"[OA][{wid}][Test-Org/app_docker] Dispatching a build request to exchange 1, "
        "docker build cluster build-cluster-1..."
    )
    assert deploy["workflow_start_time"] == build["workflow_start_time"]
    assert deploy["etcd_token"] == "deploy-cluster-1"
    assert deploy["workflow_step_durations"].keys() == {"build"}

    # §7.1: one chat per orchestrator line, exactly these keys, rooms absent
    wait_for(lambda: len(contract.recorder.chats[wid]) >= len(events), what="the chats")
    chats = [c.payload for c in contract.recorder.chats[wid]]
    prefix = f"[OA][{wid}][Test-Org/app_docker]"
    assert all(
        c == {"is_success": True, "prefix": prefix, "message": c["message"], "room_names": None}
        for c in chats
    ), chats
    assert sorted(c["message"] for c in chats) == sorted(events)
    assert all(
        c.routing_key == contract.settings.hipchat_queue for c in contract.recorder.chats[wid]
    )
    # §6: every PUT sends workflow_completed, current_step a string or null
    puts = contract.emulator.workflow_puts(wid)
    assert puts and all("workflow_completed" in body for body in puts)
    assert all(isinstance(body.get("current_step"), (str, type(None))) for body in puts)
    assert not contract.recorder.emails.get(wid)  # no e-mail configured


def test_a_failed_build_fails_the_workflow_with_email_and_chats(contract: Contract) -> None:
    """§7.1, §7.2, §7.4: the failure lines, chat flags, rooms and the FAILED e-mail."""
    wid = contract.new_workflow(["build", "deploy"])
    contract.send(
        {
            "id": wid,
            "notifications_config": NOTIFICATIONS,
            "test_instructions": {"fail_step": "build"},
        }
    )
    wf = contract.wait_completed(wid)
    assert wf["workflow_error"] is True
    assert wf["current_step"] == "build"  # stays at the step that failed
    assert set(wf["workflow_step_durations"]) == {"build"}
    events = contract.events(wid)
    recipients = "a@example.com, b@example.com, c@example.com"
    tail = events[-4:]
    assert tail[0] == (
        "Workflow Milestone Failed: build.  Reason: Milestone worker has reported a failure"
    )
    assert re.fullmatch(f"Workflow has failed in {DURATION}", tail[1]), tail
    assert re.fullmatch(f"Completed Workflow Milestone: build, in {DURATION}", tail[2]), tail
    assert tail[3] == (
        "Sending on_workflow_completed email notification to the following recipient(s): "
        + recipients
    )
    assert wf["workflow_duration"] == tail[1].removeprefix("Workflow has failed in ")
    # the worker's two lines, reason then message, are in the stored log
    log = contract.lines(wid)
    assert log.index(f"[OA][{wid}] docker build exited with status 1") < log.index(
        f"[OA][{wid}] build failed on a plain peer"
    )

    wait_for(lambda: contract.recorder.emails.get(wid), what="the completion e-mail")
    (mail,) = contract.recorder.emails[wid]
    prefix = f"[OA][{wid}][Test-Org/app_docker]"
    assert mail.routing_key == contract.settings.email_queue
    assert mail.payload == {
        "prefix": f"FAILED - {prefix}",
        "message": "Source Commit:\nTest-Org/app/commit/abc123\n\nFor more information, please "
        f"see:\nhttp://ui.example/index.html#/oa/workflows/workflows/{wid}",
        "notifications": {"email_addresses": ["a@example.com", "b@example.com", "c@example.com"]},
    }

    def mine():
        return [c.payload for c in contract.recorder.chats[wid] if c.payload["prefix"] == prefix]  # noqa: E731

    wait_for(lambda: len(mine()) >= len(events), what="the orchestrator's chats")
    failures = sorted(c["message"] for c in mine() if c["is_success"] is False)
    assert failures == sorted(tail[:2])
    for chat in mine():
        assert chat["room_names"] == ["Deploys", "Team A"]
        assert chat["notifications"] == {"hipchat_rooms": ["Deploys", "Team A"]}
        assert set(chat) == {"is_success", "prefix", "message", "room_names", "notifications"}


def test_success_email_body_falls_back_to_the_repositories(contract: Contract) -> None:
    """§7.4: `Source Repo:` without a ref, `Deployment Repo:` without a source repo."""
    only_repo = contract.new_workflow(["build"], source_repo_git_ref=None)
    no_source = contract.new_workflow(["build"], source_repo=None, source_repo_git_ref=None)
    config = {"email": {"events": {"on_workflow_completed": ["x@example.com"]}}}
    for wid in (only_repo, no_source):
        contract.send({"id": wid, "notifications_config": config})
    for wid in (only_repo, no_source):
        assert contract.wait_completed(wid)["workflow_error"] is False
    wait_for(
        lambda: contract.recorder.emails.get(only_repo) and contract.recorder.emails.get(no_source),
        what="both e-mails",
    )
    link = "\n\nFor more information, please see:\nhttp://ui.example/index.html#/oa/workflows/workflows/"
    (first,) = contract.recorder.emails[only_repo]
    (second,) = contract.recorder.emails[no_source]
    assert first.payload["prefix"] == f"SUCCEEDED [OA][{only_repo}][Test-Org/app_docker]"
    assert first.payload["message"] == f"Source Repo:\nTest-Org/app{link}{only_repo}"
    assert second.payload["message"] == (
        f"Deployment Repo:\nhttps://github.com/Test-Org/app_docker{link}{no_source}"
    )
    assert first.payload["notifications"] == {"email_addresses": ["x@example.com"]}


def test_config_deploy_oa_and_deploy_ecs_with_overrides(contract: Contract) -> None:
    """§4: targets, override lines, `deploy_ecs` ignores the deploy override."""
    oa = contract.new_workflow(["config", "deploy_oa"])
    ecs = contract.new_workflow(["deploy_ecs"])
    contract.send(
        {
            "id": oa,
            "build_messaging_exchange_id": 1,
            "deploy_messaging_exchange_id": "1",
            "etcd_token": "deploy-cluster-1",
        }
    )
    contract.send({"id": ecs, "deploy_messaging_exchange_id": 3})
    assert contract.wait_completed(oa)["workflow_error"] is False
    assert contract.wait_completed(ecs)["workflow_error"] is False
    events = contract.events(oa)
    assert (
        "The Workflow request has overriden the default build messaging_exchange_id to 1" in events
    )
    assert (
        "The Workflow request has overriden the default deploy messaging_exchange_id to 1" in events
    )
    assert (
        "Dispatching a config request to exchange 1, docker build cluster build-cluster-1..."
        in events
    )
    assert (
        "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-1..."
        in events
    )
    assert [(r.task, r.routing_key) for r in contract.recorder.requests[oa]] == [
        ("builder.build", contract.settings.builder_queue),
        ("deployer.deploy_oa", contract.settings.deploy_oa_queue),
    ]
    ecs_events = contract.events(ecs)
    assert "Dispatching an ECS deploy request to exchange 1..." in ecs_events
    assert not [e for e in ecs_events if "overriden" in e]
    assert [(r.task, r.routing_key) for r in contract.recorder.requests[ecs]] == [
        ("deployer.deploy", contract.settings.deployer_queue)
    ]


def rfc1123(moment: datetime) -> str:
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def test_scheduled_waits_then_starts_and_records_its_duration(contract: Contract) -> None:
    """§4 `scheduled`: the waiting line to the letter, then the step's own duration."""
    at = rfc1123(datetime.now(timezone.utc) + timedelta(seconds=3))
    wid = contract.new_workflow(["scheduled", "build"], scheduled_start_time=at)
    contract.send({"id": wid})
    wf = contract.wait_completed(wid)
    assert wf["workflow_error"] is False
    stored = wf["scheduled_start_time"]
    events = contract.events(wid)
    waiting = [e for e in events if e.startswith("Workflow is not scheduled")]
    assert waiting, events
    found = re.fullmatch(
        re.escape(f"Workflow is not scheduled to start until {stored} (")
        + r"(\d+) seconds remain\)\.  Next evaluation will occur in (\d+) seconds",
        waiting[0],
    )
    assert found, waiting[0]
    assert found.group(1) == found.group(2) and 1 <= int(found.group(1)) <= 3
    start = events.index("Workflow is now scheduled to start")
    assert re.fullmatch(
        f"Completed Workflow Milestone: scheduled, in {DURATION}", events[start + 1]
    )
    assert events[start + 2] == "Starting Workflow Milestone: build"
    assert "scheduled" in wf["workflow_step_durations"]


def test_an_unparsable_scheduled_time_fails_the_workflow(contract: Contract) -> None:
    bad = contract.new_workflow(["scheduled", "build"])  # the Manager stores only valid times
    contract.send({"id": bad, "scheduled_start_time": "next tuesday-ish"})
    failed = contract.wait_completed(bad, timeout=15)
    assert failed["workflow_error"] is True
    (line,) = [e for e in contract.events(bad) if e.startswith("Workflow Milestone Failed")]
    assert line.startswith("Workflow Milestone Failed: scheduled.  Reason: ")
    assert "next tuesday-ish" in line


def test_times_in_any_form_come_out_iso_and_nulls_erase_nothing(contract: Contract) -> None:
    """§2 epoch seconds accepted; §9 timestamps written ISO 8601 UTC; §3.2 nulls."""
    wid = contract.new_workflow(["build"])
    contract.send({"id": wid, "workflow_start_time": 1764223200, "deployment_repo": None})
    assert contract.wait_completed(wid)["workflow_error"] is False
    (build,) = contract.recorder.requests[wid]
    assert build.payload["workflow_start_time"] in (
        "2025-11-27T06:00:00.000000+00:00",
        "2025-11-27T06:00:00+00:00",
        "2025-11-27T06:00:00Z",
    )
    assert build.payload["deployment_repo"] == "Test-Org/app_docker"
    assert contract.events(wid)[0] == "Starting workflow..."


def test_a_manager_outage_on_the_load_is_retried_not_lost(contract: Contract) -> None:
    """§6/§9: 5xx and 429 are transient: the message is kept and retried."""
    wid = contract.new_workflow(["build"])
    contract.emulator.fail_next("GET /workflows/{id}", 2, status=503)
    contract.emulator.fail_next("PUT /workflows/{id}", 1, status=429)
    contract.send({"id": wid})
    assert contract.wait_completed(wid)["workflow_error"] is False
    assert len(contract.recorder.requests[wid]) == 1
