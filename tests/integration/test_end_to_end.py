"""Whole workflows through the real worker, broker, emulator and peer workers."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import requests
from kombu import Connection, Exchange, Producer

from tests.support import wait_for
from workflow_orchestrator.transition import email_task_id

from .conftest import System

EMAIL_CONFIG = {
    "hipchat": {"room_names": ["Deploys"]},
    "email": {
        "groups": {"team": ["a@example.com", "b@example.com"]},
        "events": {"on_workflow_completed": ["team", "c@example.com"]},
    },
}


def test_registers_with_the_manager_on_start(system: System) -> None:
    modules = wait_for(
        lambda: [m for m in system.emulator.modules("1") if m["type"] == "workflow_orchestrator"],
        what="the orchestrator module registration",
    )
    assert modules[0]["status"] == "active"
    assert modules[0]["hostname"] == system.settings.hostname


def test_build_then_deploy(system: System) -> None:
    wid = system.new_workflow(["build", "deploy"])
    system.start(wid, force_build=True, notifications_config=EMAIL_CONFIG)
    wf = system.wait_completed(wid)
    assert wf["workflow_error"] is False
    assert wf["current_step"] == "workflow_completed"
    assert set(wf["workflow_step_durations"]) == {"build", "deploy"}
    events = system.events(wid)
    assert events[:3] == [
        "Starting workflow...",
        "Starting Workflow Milestone: build",
        "Dispatching a build request to exchange 1, docker build cluster build-cluster-1...",
    ]
    assert (
        "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-1..."
        in events
    )
    assert events[-1] == (
        "Sending on_workflow_completed email notification to the following recipient(s): "
        "a@example.com, b@example.com, c@example.com"
    )
    sent = system.recorder.requests[wid]
    assert [(task, req["current_step"]) for task, _, req in sent] == [
        ("builder.build", "build"),
        ("deployer.deploy", "deploy"),
    ]
    # One log line per transition says where its requests went: Celery's `succeeded`
    # line, whose result is what the transition did.
    build_lines = [
        line for line in system.orchestrator.log().splitlines() if f"task id {sent[0][1]}" in line
    ]
    assert len(build_lines) == 1, build_lines
    assert " succeeded in " in build_lines[0]
    # Celery's line carries the transition's ids like the orchestrator's own lines; the
    # next transition of the thread carries its own.
    assert f"[workflow={wid} step=- task=" in build_lines[0]
    (deploy_line,) = [
        line for line in system.orchestrator.log().splitlines() if f"task id {sent[1][1]}" in line
    ]
    assert f"[workflow={wid} step=build task=" in deploy_line
    assert f"workflow {wid}: " in deploy_line and " succeeded in " in deploy_line
    assert f"workflow {wid}: dispatched build to builder.build@" in build_lines[0]
    assert " (on broker 1 127.0.0.1:" in build_lines[0]
    assert "; its deadline waits " in build_lines[0]
    build_request = sent[0][2]
    assert build_request["docker_build_etcd_token"] == "build-cluster-1"
    assert build_request["force_build"] is True
    assert build_request["orchestration_queue_name"] == system.settings.queue_name
    for name in ("notifications", "orchestration", "workflow_orchestration"):
        assert build_request[f"{name}_exchange_id"] == "1"
        assert build_request[f"{name}_broker_id"] == "1"
    mails = wait_for(lambda: system.recorder.emails.get(wid), what="the completion e-mail")
    assert [task_id for task_id, _ in mails] == [email_task_id(wid)]
    assert mails[0][1]["prefix"] == f"SUCCEEDED [OA][{wid}][Test-Org/app_docker]"
    assert mails[0][1]["notifications"]["email_addresses"] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    prefix = f"[OA][{wid}][Test-Org/app_docker] "
    ours = [line.removeprefix(prefix) for line in wf["event_log"] if line.startswith(prefix)]
    wait_for(
        lambda: len(system.recorder.chats.get(wid, [])) >= len(ours), what="chat notifications"
    )
    chats = system.recorder.chats[wid]
    assert sorted(c["message"] for c in chats) == sorted(ours)
    assert all(c["prefix"] == prefix.strip() and c["is_success"] for c in chats)
    assert all(c["room_names"] == ["Deploys"] for c in chats)


def test_config_then_deploy_oa(system: System) -> None:
    wid = system.new_workflow(["config", "deploy_oa"])
    system.start(wid)
    wf = system.wait_completed(wid)
    assert wf["workflow_error"] is False
    tasks = [(task, req["current_step"]) for task, _, req in system.recorder.requests[wid]]
    assert tasks == [("builder.build", "config"), ("deployer.deploy_oa", "deploy_oa")]


def test_deploy_ecs_goes_to_our_exchange(system: System) -> None:
    wid = system.new_workflow(["deploy_ecs"])
    system.start(wid, deploy_messaging_exchange_id=2)
    wf = system.wait_completed(wid)
    assert wf["workflow_error"] is False
    assert "Dispatching an ECS deploy request to exchange 1..." in system.events(wid)
    assert not any("overriden" in e for e in system.events(wid))
    ((task, _, _),) = system.recorder.requests[wid]
    assert task == "deployer.deploy"


def test_builder_failure_fails_the_workflow(system: System) -> None:
    wid = system.new_workflow(["build", "deploy"])
    system.start(wid, test_instructions={"fail_step": "build"}, notifications_config=EMAIL_CONFIG)
    wf = system.wait_completed(wid)
    assert wf["workflow_error"] is True
    assert wf["current_step"] == "build"
    assert (
        "Workflow Milestone Failed: build.  Reason: Milestone worker has reported a failure"
        in system.events(wid)
    )
    mails = wait_for(lambda: system.recorder.emails.get(wid), what="the failure e-mail")
    assert mails[0][1]["prefix"].startswith("FAILED - [OA]")
    assert [t for t, _, _ in system.recorder.requests[wid]] == ["builder.build"]
    failures = wait_for(
        lambda: [c for c in system.recorder.chats.get(wid, []) if not c["is_success"]],
        what="failure chat notifications",
    )
    assert failures


def test_override_exchanges(system: System) -> None:
    wid = system.new_workflow(["build", "deploy"])
    system.start(wid, build_messaging_exchange_id=2, deploy_messaging_exchange_id=2)
    system.wait_completed(wid)
    events = system.events(wid)
    assert (
        "The Workflow request has overriden the default build messaging_exchange_id to 2" in events
    )
    assert (
        "Dispatching a build request to exchange 2, docker build cluster build-cluster-1..."
        in events
    )
    assert (
        "The Workflow request has overriden the default deploy messaging_exchange_id to 2" in events
    )
    assert (
        "Dispatching a deploy request to exchange 2, deployment cluster deploy-cluster-1..."
        in events
    )


def failure_of(system: System, wid: str) -> str:
    wf = system.wait_completed(wid)
    assert wf["workflow_error"] is True
    (line,) = [e for e in system.events(wid) if e.startswith("Workflow Milestone Failed")]
    return line


def test_precondition_failures(system: System) -> None:
    cases = {
        system.new_workflow(["build"]): (
            {"build_messaging_exchange_id": 3},
            "Workflow Milestone Failed: build.  Reason: Unable to request build - no Builders are "
            "currently accessible in exchange 3!",
        ),
        system.new_workflow(["deploy"]): (
            {},
            "Workflow Milestone Failed: deploy.  Reason: Unable to execute deployment - an invalid "
            "deployment cluster was provided!",
        ),
        system.new_workflow(["deploy_oa"]): (
            {"etcd_token": "orphan-cluster"},
            "Workflow Milestone Failed: deploy_oa.  Reason: Unable to request deploy to cluster "
            "orphan-cluster - cluster is not associated with an exchange!",
        ),
        system.new_workflow(["deploy"]): (
            {"etcd_token": "no-such-cluster"},
            "Workflow Milestone Failed: deploy.  Reason: Unable to request deploy to cluster "
            "no-such-cluster - cluster is not associated with an exchange!",
        ),
        system.new_workflow(["deploy"]): (
            {"etcd_token": "deploy-cluster-1", "deploy_messaging_exchange_id": 3},
            "Workflow Milestone Failed: deploy.  Reason: Unable to request deploy - no deploy "
            "clusters are available in exchange 3!",
        ),
        system.new_workflow(["scheduled", "build"]): (
            {},
            "Workflow Milestone Failed: scheduled.  Reason: Unable to execute deployment - the "
            "scheduled milestone was invoked, but no scheduled_start_time was set!",
        ),
        system.new_workflow(["build", "teleport"]): (
            {},
            "Workflow Milestone Failed: none.  Reason: Unknown milestone: teleport",
        ),
        system.new_workflow(["build", "build"]): (
            {},
            "Workflow Milestone Failed: none.  Reason: Milestone listed twice: build",
        ),
    }
    for wid, (fields, _) in cases.items():
        system.start(wid, **fields)
    for wid, (_, expected) in cases.items():
        assert failure_of(system, wid) == expected
        assert not system.recorder.requests.get(wid)
    events = system.emulator.system_events()
    assert not [e for e in events if any(wid in e.get("message", "") for wid in cases)]


def rfc1123(moment: datetime) -> str:
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def test_scheduled_in_the_past_and_a_few_seconds_ahead(system: System) -> None:
    past = system.new_workflow(
        ["scheduled", "build"], scheduled_start_time="Tue, 05 Mar 2013 23:25:19 GMT"
    )
    soon_at = rfc1123(datetime.now(timezone.utc) + timedelta(seconds=3))
    soon = system.new_workflow(["scheduled", "build"], scheduled_start_time=soon_at)
    system.start(past)
    system.start(soon)
    assert system.wait_completed(past)["workflow_error"] is False
    assert "Workflow is now scheduled to start" in system.events(past)
    wf = system.wait_completed(soon, timeout=30)
    assert wf["workflow_error"] is False
    events = system.events(soon)
    waiting = [e for e in events if e.startswith("Workflow is not scheduled to start until")]
    stored_at = wf["scheduled_start_time"]  # the Manager writes its own zone name back
    assert stored_at == soon_at.replace(" GMT", " UTC")
    assert waiting and waiting[0].startswith(
        f"Workflow is not scheduled to start until {stored_at} ("
    )
    assert "Workflow is now scheduled to start" in events
    assert events.index(waiting[0]) < events.index("Workflow is now scheduled to start")
    (request,) = system.recorder.requests[soon]
    assert request[0] == "builder.build"


def test_duplicate_callbacks_give_one_request_per_step_and_one_email(system: System) -> None:
    wid = system.new_workflow(["build", "deploy"])
    system.start(
        wid, test_instructions={"duplicate_callbacks": True}, notifications_config=EMAIL_CONFIG
    )
    wf = system.wait_completed(wid)
    assert wf["workflow_error"] is False
    # each step's second callback arrives and is ignored as a duplicate
    wait_for(
        lambda: (
            system.orchestrator.log().count(f"workflow {wid}: ignored a stale or duplicate message")
            >= 2
        ),
        what="both duplicate callbacks to be ignored",
    )
    steps = [req["current_step"] for _, _, req in system.recorder.requests[wid]]
    assert steps == ["build", "deploy"]
    mails = system.recorder.emails[wid]
    assert {task_id for task_id, _ in mails} == {email_task_id(wid)}
    assert len(mails) == 1
    log = system.workflow(wid)["event_log"]
    assert len(log) == len(set(log))


def test_bare_start_and_empty_milestones(system: System) -> None:
    bare = system.new_workflow(["build"])
    empty = system.new_workflow([])
    system.send({"id": bare})
    system.send({"id": empty})
    assert system.wait_completed(bare)["workflow_error"] is False
    wf = system.wait_completed(empty)
    assert wf["workflow_error"] is False
    assert system.events(empty) == ["Starting workflow...", "Workflow completed in 0 second(s)"]


def test_execute_through_the_manager(system: System) -> None:
    wid = system.new_workflow(["build", "deploy"])
    token = system.emulator.issue_token()
    answer = requests.post(
        f"{system.emulator.url}/workflows/{wid}/execute",
        json={"force_build": True},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert answer.status_code == 202
    assert system.wait_completed(wid)["workflow_error"] is False
    again = requests.post(
        f"{system.emulator.url}/workflows/{wid}/execute",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert again.status_code == 409


def test_poison_messages_are_dead_lettered_and_the_worker_goes_on(system: System) -> None:
    system.dead_letters()  # start from an empty dead-letter queue
    unknown = str(uuid.uuid4())
    poison = [
        "not an object",
        {"no_id": True},
        {"id": ""},
        {"id": str(uuid.uuid4()), "milestones": "build,deploy"},
        {"id": str(uuid.uuid4()), "current_step": 42},
        {"id": unknown},  # the Manager does not know it
    ]
    for payload in poison:
        system.send(payload)
    system.caller.send_task(
        "workflow_orchestrator.no_such_task", args=[{}], queue=system.settings.queue_name
    )
    with Connection(system.settings.celery_broker_url) as conn:
        producer = Producer(
            conn.default_channel, exchange=Exchange(system.settings.queue_name, "direct")
        )
        producer.publish(
            b"\xff\xfe not utf-8 \x80",
            routing_key=system.settings.queue_name,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": system.settings.orchestrate_task, "id": str(uuid.uuid4())},
        )
    good = system.new_workflow(["build"])
    system.start(good)
    assert system.wait_completed(good)["workflow_error"] is False
    expected = len(poison) + 2
    dead: list = []
    wait_for(
        lambda: dead.extend(system.dead_letters()) or len(dead) >= expected, what="dead letters"
    )
    assert len(dead) == expected
    reasons = [m.headers["x-orchestrator-dead-letter-reason"] for m in dead]
    assert all(m.headers.get("x-orchestrator-dead-lettered-at") for m in dead)
    assert any("names task 'workflow_orchestrator.no_such_task'" in r for r in reasons), reasons
    assert any("the body cannot be decoded" in r for r in reasons), reasons
    raw = [m for m in dead if m.body == b"\xff\xfe not utf-8 \x80"]
    assert len(raw) == 1 and raw[0].headers["task"] == system.settings.orchestrate_task
    wanted = {
        "field 'milestones' must be a list or null, got a string": "invalid_message",
        "field 'current_step' must be a string or null, got an integer": "invalid_message",
        f"Workflow {unknown} does not exist in the Manager": "unknown_workflow",
        "the body cannot be decoded": "invalid_message",
        "names task 'workflow_orchestrator.no_such_task', which this worker does not run": (
            "invalid_message"
        ),
    }

    def found() -> dict[str, dict]:
        events = system.emulator.system_events()
        return {text: event for text in wanted for event in events if text in event["message"]}

    wait_for(lambda: len(found()) == len(wanted), what="a system event for each bad message")
    events = list(found().values())
    assert {text: e["data"]["kind"] for text, e in found().items()} == wanted
    assert all(e["type"] == "unhandled_exception" for e in events)
    assert all(e["data"]["component"] == "workflow_orchestration" for e in events)
    assert found()[f"Workflow {unknown} does not exist in the Manager"]["data"]["workflow_id"] == (
        unknown
    )
    assert system.settings.oauth_client_secret not in json.dumps(system.emulator.system_events())


def test_a_vanilla_celery_caller_starts_a_workflow(system: System) -> None:
    """Celery's defaults, a broker URL and nothing of ours: one plain send_task."""
    from celery import Celery

    caller = Celery(
        "vanilla-caller", broker=system.settings.celery_broker_url, set_as_current=False
    )
    workflow_id = system.new_workflow(["build", "deploy"])
    caller.send_task(
        system.settings.orchestrate_task,
        args=[{"id": workflow_id}],
        queue=system.settings.queue_name,
    )
    done = system.wait_completed(workflow_id)
    assert done["workflow_error"] is False
    assert "Workflow completed in " in " ".join(system.events(workflow_id))


def test_credentials_refused_while_running_keep_the_messages(system: System) -> None:
    """Credentials rotated under a running worker: each retry says which settings, no
    message is dead-lettered, and the work completes once the credentials work again."""
    system.dead_letters()
    workflow_id = system.new_workflow(["build"])
    system.emulator.expire_tokens()
    system.emulator.fail_for(4, status=401, include_token=True)
    system.start(workflow_id)
    wait_for(
        lambda: system.orchestrator.log().count("OAUTH_CLIENT_SECRET") >= 2,
        what="retries naming the credentials settings",
    )
    done = system.wait_completed(workflow_id)
    assert done["workflow_error"] is False
    assert system.dead_letters() == []
    lines = [line for line in system.orchestrator.log().splitlines() if "OAUTH_CLIENT" in line]
    assert all("retrying in" in line for line in lines), lines
    assert system.settings.oauth_client_secret not in system.orchestrator.log()
