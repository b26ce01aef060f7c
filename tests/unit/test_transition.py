"""The pure transition against every row of docs/behaviour.md §3, §4 and §7."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from workflow_orchestrator.milestones import Target, build_registry
from workflow_orchestrator.transition import (
    TASK_ID_NAMESPACE,
    ChatNotification,
    Decision,
    EmailNotification,
    EngineConfig,
    Outcome,
    WorkerRequest,
    derived_task_id,
    email_task_id,
    transition,
)
from workflow_orchestrator.workflow import persisted_view

from .fakes import WID, FakeTopology, stored_workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"  # the contract's examples
NOW = datetime(2026, 11, 27, 6, 0, 0, 150000, tzinfo=timezone.utc)
PREFIX = f"[OA][{WID}][Test-Org/app_docker]"
CONFIG = EngineConfig(ui_url="http://ui.example")


def run(
    stored: dict[str, Any],
    message: dict[str, Any],
    *,
    now: datetime = NOW,
    topology: FakeTopology | None = None,
    config: EngineConfig = CONFIG,
    key: str = "msg-1",
    ahead_since: datetime | None = None,
) -> Decision:
    return transition(
        stored,
        message,
        now=now,
        topology=topology or FakeTopology(),
        config=config,
        message_key=key,
        ahead_since=ahead_since,
    )


def lines(decision: Decision) -> list[str]:
    assert decision.workflow is not None
    return [line.removeprefix(PREFIX + " ") for line in decision.workflow["event_log"]]


def requests(decision: Decision) -> list[WorkerRequest]:
    return [e for e in decision.effects if isinstance(e, WorkerRequest)]


def chats(decision: Decision) -> list[dict[str, Any]]:
    return [e.payload for e in decision.effects if isinstance(e, ChatNotification)]


def emails(decision: Decision) -> list[EmailNotification]:
    return [e for e in decision.effects if isinstance(e, EmailNotification)]


def saved(decision: Decision) -> dict[str, Any]:
    """What the Manager would hold after the save (plus the id and Manager fields)."""
    assert decision.workflow is not None
    return {"id": decision.workflow["id"], **persisted_view(decision.workflow)}


def started(**changes: Any) -> Decision:
    return run(stored_workflow(**changes), {"id": WID, "force_build": True})


def callback(decision: Decision, **changes: Any) -> dict[str, Any]:
    """What a worker sends back: the request it got, possibly changed."""
    payload = dict(requests(decision)[0].payload)
    payload.update(changes)
    return payload


# -- start -----------------------------------------------------------------------------


def test_start_dispatches_the_example_builder_request() -> None:
    decision = run(
        {**json.loads((EXAMPLES / "manager-workflow.json").read_text())},
        json.loads((EXAMPLES / "start-message.json").read_text()),
    )
    assert decision.outcome is Outcome.APPLIED
    (request,) = requests(decision)
    assert (request.task, request.queue, request.countdown) == ("builder.build", "builder", None)
    expected = json.loads((EXAMPLES / "builder-request.json").read_text())
    expected["workflow_start_time"] = expected["step_time"]  # illustrative in the example
    assert request.payload == expected
    assert request.exchange_id == 1


def test_start_logs_sets_times_and_notifies_each_line() -> None:
    decision = started()
    assert lines(decision) == [
        "Starting workflow...",
        "Starting Workflow Milestone: build",
        "Dispatching a build request to exchange 1, docker build cluster 123abc...",
    ]
    wf = decision.workflow
    assert wf["current_step"] == "build"
    assert wf["workflow_start_time"] == wf["step_time"] == "2026-11-27T06:00:00.150000+00:00"
    assert [c["message"] for c in chats(decision)] == lines(decision)
    assert all(c["is_success"] and c["prefix"] == PREFIX for c in chats(decision))
    assert chats(decision)[0]["room_names"] is None


def test_start_keeps_a_given_workflow_start_time_and_writes_iso() -> None:
    epoch = (NOW - timedelta(minutes=2)).timestamp()
    decision = run(stored_workflow(), {"id": WID, "workflow_start_time": epoch})
    assert decision.workflow["workflow_start_time"] == "2026-11-27T05:58:00.150000+00:00"


def test_task_ids_are_deterministic_per_message() -> None:
    a = run(stored_workflow(), {"id": WID}, key="m1")
    b = run(stored_workflow(), {"id": WID}, key="m1", now=NOW + timedelta(seconds=3))
    c = run(stored_workflow(), {"id": WID}, key="m2")
    assert requests(a)[0].task_id == requests(b)[0].task_id != requests(c)[0].task_id


def test_stored_execute_options_fill_a_bare_start() -> None:
    decision = run(
        stored_workflow(execute_options={"build_messaging_exchange_id": 7}),
        {"id": WID},
        topology=FakeTopology(modules={"7": ["builder"]}),
    )
    assert requests(decision)[0].exchange_id == 7


def test_routing_fields_are_strings_of_our_own_ids() -> None:
    config = EngineConfig(exchange_id="12", broker_id="34", queue_name="orch")
    decision = run(stored_workflow(), {"id": WID}, config=config)
    payload = requests(decision)[0].payload
    for name in ("notifications", "orchestration", "workflow_orchestration"):
        assert payload[f"{name}_exchange_id"] == "12"
        assert payload[f"{name}_broker_id"] == "34"
    assert payload["orchestration_queue_name"] == "orch"


# -- step completed / workflow completed ---------------------------------------------------


def test_step_completed_records_duration_and_dispatches_next() -> None:
    first = started()
    message = json.loads((EXAMPLES / "callback-step-completed.json").read_text())
    decision = run(saved(first), message, now=NOW + timedelta(seconds=75), key="msg-2")
    assert decision.outcome is Outcome.APPLIED
    assert lines(decision)[-3:] == [
        "Completed Workflow Milestone: build, in 1 minute(s)",
        "Starting Workflow Milestone: deploy",
        "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-9...",
    ]
    assert decision.workflow["workflow_step_durations"] == {"build": "1 minute(s)"}
    # the builder's own line is kept, once
    builder_line = f"[OA][{WID}] Build/Config request is being processed by Builder builder-host-1"
    assert decision.workflow["event_log"].count(builder_line) == 1
    (request,) = requests(decision)
    assert (request.task, request.queue) == ("deployer.deploy", "deployer")
    assert "docker_build_etcd_token" in request.payload  # carried over, not recomputed
    assert request.payload["current_step"] == "deploy"
    assert request.payload["step_time"] == "2026-11-27T06:01:15.150000+00:00"
    rooms = chats(decision)[0]["room_names"]
    assert rooms == ["OpenAperture-Workflow Events"]


def test_last_step_completed_finishes_with_email() -> None:
    first = started()
    message = json.loads((EXAMPLES / "callback-step-completed.json").read_text())
    second = run(saved(first), message, now=NOW + timedelta(seconds=75), key="m2")
    third = run(saved(second), callback(second), now=NOW + timedelta(seconds=400), key="m3")
    wf = third.workflow
    assert wf["workflow_completed"] is True and wf["workflow_error"] is False
    assert wf["current_step"] == "workflow_completed"
    assert wf["workflow_duration"] == "7 minute(s)"
    assert wf["workflow_step_durations"] == {"build": "1 minute(s)", "deploy": "5 minute(s)"}
    assert lines(third)[-3:] == [
        "Completed Workflow Milestone: deploy, in 5 minute(s)",
        "Workflow completed in 7 minute(s)",
        "Sending on_workflow_completed email notification to the following recipient(s): "
        "a@example.com, b@example.com, c@example.com",
    ]
    (email,) = emails(third)
    assert email.payload == json.loads((EXAMPLES / "notification-email.json").read_text())
    assert email.task_id == email_task_id(WID)
    assert requests(third) == []
    assert third.before_save == (email,)


def test_empty_milestones_complete_at_once() -> None:
    decision = run(stored_workflow(milestones=[]), {"id": WID})
    assert lines(decision) == ["Starting workflow...", "Workflow completed in 0 second(s)"]
    assert decision.workflow["workflow_completed"] is True
    assert decision.workflow["current_step"] == "workflow_completed"
    assert requests(decision) == []
    assert emails(decision) == []


def test_missing_milestones_complete_at_once() -> None:
    """No milestone list means no step: nothing is left, so the workflow completes."""
    decision = run(stored_workflow(milestones=None), {"id": WID})
    assert decision.workflow["workflow_completed"] is True
    assert decision.workflow["workflow_error"] is False
    assert lines(decision) == ["Starting workflow...", "Workflow completed in 0 second(s)"]
    assert requests(decision) == []


def test_worker_reported_completion_finishes() -> None:
    first = started()
    decision = run(saved(first), callback(first, workflow_completed=True), key="m2")
    assert decision.workflow["workflow_completed"] is True
    assert decision.workflow["workflow_error"] is False
    assert lines(decision)[-1] == "Workflow completed in 0 second(s)"
    assert requests(decision) == []


# -- failures ------------------------------------------------------------------------------


def test_worker_failure_fails_the_workflow() -> None:
    first = started()
    message = json.loads((EXAMPLES / "callback-step-failed.json").read_text())
    message["notifications_config"] = {
        "email": {"events": {"on_workflow_completed": ["ops@example.com"]}}
    }
    decision = run(saved(first), message, now=NOW + timedelta(seconds=30), key="m2")
    wf = decision.workflow
    assert wf["workflow_completed"] is True and wf["workflow_error"] is True
    assert wf["current_step"] == "build"
    assert wf["workflow_duration"] == "30 second(s)"
    assert wf["workflow_step_durations"] == {"build": "30 second(s)"}
    assert lines(decision)[-4:] == [
        "Workflow Milestone Failed: build.  Reason: Milestone worker has reported a failure",
        "Workflow has failed in 30 second(s)",
        "Completed Workflow Milestone: build, in 30 second(s)",
        "Sending on_workflow_completed email notification to the following recipient(s): "
        "ops@example.com",
    ]
    successes = [c["is_success"] for c in chats(decision)]
    assert successes == [False, False, True, True]
    (email,) = emails(decision)
    assert email.payload["prefix"] == f"FAILED - {PREFIX}"
    assert requests(decision) == []
    assert decision.system_events == ()


@pytest.mark.parametrize(
    ("milestones", "reason"),
    [
        (["build", "launch_rockets"], "Unknown milestone: launch_rockets"),
        (["build", "deploy", "build"], "Milestone listed twice: build"),
        ([":build"], "Unknown milestone: :build"),
    ],
)
def test_bad_milestone_lists_fail_at_start(milestones: list[str], reason: str) -> None:
    decision = run(stored_workflow(milestones=milestones), {"id": WID})
    assert lines(decision) == [
        "Starting workflow...",
        f"Workflow Milestone Failed: none.  Reason: {reason}",
        "Workflow has failed in 0 second(s)",
    ]
    assert decision.workflow["workflow_error"] is True
    assert decision.workflow["current_step"] is None
    assert requests(decision) == []


def test_corrupt_stored_milestones_fail_the_workflow() -> None:
    decision = run(stored_workflow(milestones="build"), {"id": WID})
    assert decision.workflow["workflow_error"] is True
    assert "Invalid milestones" in lines(decision)[1]


# -- preconditions (docs/behaviour.md §4), every reason verbatim -----------------------------


def failure_reason(decision: Decision) -> str:
    failed = [line for line in lines(decision) if line.startswith("Workflow Milestone Failed")]
    assert len(failed) == 1, lines(decision)
    assert decision.workflow["workflow_error"] is True
    assert requests(decision) == []
    return failed[0].split("Reason: ", 1)[1]


def at_deploy(step: str = "deploy", **changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored workflow at `build` and the builder's completion, heading to `step`."""
    stored = stored_workflow(
        milestones=["build", step],
        current_step="build",
        event_log=[f"{PREFIX} Starting workflow..."],
    )
    message = {"id": WID, "current_step": "build", "step_time": NOW.isoformat(), **changes}
    return stored, message


@pytest.mark.parametrize("step", ["build", "config"])
def test_build_without_clusters(step: str) -> None:
    decision = run(
        stored_workflow(milestones=[step]), {"id": WID}, topology=FakeTopology(build_clusters=[])
    )
    assert (
        failure_reason(decision) == f"Unable to request {step} - no build clusters are available!"
    )
    assert decision.workflow["current_step"] == step
    assert lines(decision)[-2:] == [
        "Workflow has failed in 0 second(s)",
        f"Completed Workflow Milestone: {step}, in 0 second(s)",
    ]


@pytest.mark.parametrize("step", ["build", "config"])
def test_build_without_builder_module(step: str) -> None:
    decision = run(
        stored_workflow(milestones=[step]),
        {"id": WID},
        topology=FakeTopology(modules={"1": ["deployer"]}),
    )
    assert failure_reason(decision) == (
        f"Unable to request {step} - no Builders are currently accessible in exchange 1!"
    )


def test_build_override_exchange() -> None:
    decision = run(
        stored_workflow(),
        {"id": WID, "build_messaging_exchange_id": 5},
        topology=FakeTopology(modules={"5": ["builder"]}),
    )
    assert lines(decision)[2:] == [
        "The Workflow request has overriden the default build messaging_exchange_id to 5",
        "Dispatching a build request to exchange 5, docker build cluster 123abc...",
    ]
    (request,) = requests(decision)
    assert request.exchange_id == 5
    assert request.payload["docker_build_etcd_token"] == "123abc"
    assert request.payload["event_log"][-1].endswith("docker build cluster 123abc...")


def test_an_override_line_written_twice_stands_twice() -> None:
    """build and config overridden to one exchange write the same line: the contract
    appends what a transition writes, it does not merge it as a union."""
    topology = FakeTopology(modules={"5": ["builder"]})
    override = "The Workflow request has overriden the default build messaging_exchange_id to 5"
    first = run(
        stored_workflow(milestones=["build", "config"]),
        {"id": WID, "build_messaging_exchange_id": 5},
        topology=topology,
    )
    assert lines(first).count(override) == 1
    done = {"current_step": "build", "workflow_step_durations": {}}
    second = run(saved(first), callback(first, **done), topology=topology, key="msg-2")
    assert second.outcome is Outcome.APPLIED
    assert lines(second).count(override) == 2
    assert requests(second)[0].payload["event_log"].count(f"{PREFIX} {override}") == 2


def test_build_override_without_builder_there() -> None:
    decision = run(
        stored_workflow(), {"id": WID, "build_messaging_exchange_id": 5}, topology=FakeTopology()
    )
    assert failure_reason(decision) == (
        "Unable to request build - no Builders are currently accessible in exchange 5!"
    )


@pytest.mark.parametrize("step", ["deploy", "deploy_oa"])
@pytest.mark.parametrize("token", [None, "", "   "])
def test_deploy_without_cluster_token(step: str, token: str | None) -> None:
    stored, message = at_deploy(step, etcd_token=token)
    assert failure_reason(run(stored, message)) == (
        "Unable to execute deployment - an invalid deployment cluster was provided!"
    )


@pytest.mark.parametrize("step", ["deploy", "deploy_oa"])
@pytest.mark.parametrize(
    "clusters", [{}, {"c9": {"etcd_token": "c9", "messaging_exchange_id": None}}]
)
def test_deploy_to_cluster_without_exchange(step: str, clusters: dict[str, Any]) -> None:
    stored, message = at_deploy(step, etcd_token="c9")
    decision = run(stored, message, topology=FakeTopology(clusters=clusters))
    assert failure_reason(decision) == (
        "Unable to request deploy to cluster c9 - cluster is not associated with an exchange!"
    )


@pytest.mark.parametrize("step", ["deploy", "deploy_oa"])
def test_deploy_without_deployer_module(step: str) -> None:
    stored, message = at_deploy(step, etcd_token="deploy-cluster-9")
    decision = run(stored, message, topology=FakeTopology(modules={"1": ["builder"]}))
    assert failure_reason(decision) == (
        "Unable to request deploy - no deploy clusters are available in exchange 1!"
    )


@pytest.mark.parametrize(
    ("step", "task", "queue"),
    [("deploy", "deployer.deploy", "deployer"), ("deploy_oa", "deployer.deploy_oa", "deploy_oa")],
)
def test_deploy_dispatch(step: str, task: str, queue: str) -> None:
    stored, message = at_deploy(step, etcd_token="deploy-cluster-9")
    decision = run(stored, message)
    (request,) = requests(decision)
    assert (request.task, request.queue, request.exchange_id) == (task, queue, 1)
    assert lines(decision)[-1] == (
        "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-9..."
    )


def test_deploy_override_skips_the_cluster_lookup() -> None:
    stored, message = at_deploy(etcd_token="c9", deploy_messaging_exchange_id="8")
    topology = FakeTopology(clusters={}, modules={"8": ["deployer"]})
    decision = run(stored, message, topology=topology)
    assert lines(decision)[-2:] == [
        "The Workflow request has overriden the default deploy messaging_exchange_id to 8",
        "Dispatching a deploy request to exchange 8, deployment cluster c9...",
    ]
    assert not [c for c in topology.calls if c[0] == "cluster"]


def test_deploy_ecs_uses_our_exchange_and_ignores_the_override() -> None:
    stored, message = at_deploy("deploy_ecs", deploy_messaging_exchange_id="8")
    decision = run(
        stored,
        message,
        config=EngineConfig(exchange_id="3"),
        topology=FakeTopology(modules={"3": ["deployer"]}),
    )
    assert lines(decision)[-1] == "Dispatching an ECS deploy request to exchange 3..."
    assert not any("overriden" in line for line in lines(decision))
    (request,) = requests(decision)
    assert (request.task, request.queue, request.exchange_id) == (
        "deployer.deploy",
        "deployer",
        "3",
    )


def test_deploy_ecs_without_deployer() -> None:
    stored, message = at_deploy("deploy_ecs")
    decision = run(stored, message, topology=FakeTopology(modules={}))
    assert failure_reason(decision) == (
        "Unable to request deploy to ECS - no deploy clusters are available in exchange 1!"
    )


def test_refused_lookup_fails_the_workflow_and_posts_a_system_event() -> None:
    decision = run(stored_workflow(), {"id": WID}, topology=FakeTopology(refuse=True))
    reason = failure_reason(decision)
    assert reason.startswith("Unable to request build - the Manager refused a lookup:")
    assert "403" in reason
    (event,) = decision.system_events
    assert WID in event.message


def test_configured_milestone() -> None:
    registry = build_registry(extra=[("smoke_test", Target("tester.smoke", "smoke"))])
    config = EngineConfig(registry=registry)
    decision = run(stored_workflow(milestones=["smoke_test"]), {"id": WID}, config=config)
    (request,) = requests(decision)
    assert (request.task, request.queue) == ("tester.smoke", "smoke")
    assert request.payload["orchestration_queue_name"] == "workflow_orchestration"


# -- scheduled -----------------------------------------------------------------------------


def test_scheduled_in_the_past_continues_in_the_same_transition() -> None:
    decision = run(
        stored_workflow(
            milestones=["scheduled", "build"], scheduled_start_time="Tue, 05 Mar 2013 23:25:19 GMT"
        ),
        {"id": WID},
    )
    assert lines(decision) == [
        "Starting workflow...",
        "Starting Workflow Milestone: scheduled",
        "Workflow is now scheduled to start",
        "Completed Workflow Milestone: scheduled, in 0 second(s)",
        "Starting Workflow Milestone: build",
        "Dispatching a build request to exchange 1, docker build cluster 123abc...",
    ]
    assert decision.workflow["workflow_step_durations"] == {"scheduled": "0 second(s)"}
    assert requests(decision)[0].task == "builder.build"


@pytest.mark.parametrize(
    ("stamp", "remain", "countdown", "poll"),
    [
        ("Fri, 27 Nov 2026 06:00:06 GMT", 6, 6, 600),  # 5.15 s left: rounded up, not to 5
        ("Fri, 27 Nov 2026 09:00:00 GMT", 10800, 600, 600),  # capped by the poll interval
        ("Fri, 27 Nov 2026 06:01:31 GMT", 91, 30, 30),
    ],
)
def test_scheduled_in_the_future_reenqueues(
    stamp: str, remain: int, countdown: int, poll: int
) -> None:
    config = EngineConfig(schedule_poll_seconds=poll)
    decision = run(
        stored_workflow(milestones=["scheduled", "build"], scheduled_start_time=stamp),
        {"id": WID},
        config=config,
        now=datetime(2026, 11, 27, 6, 0, 0, 850000, tzinfo=timezone.utc),
    )
    assert lines(decision)[-1] == (
        f"Workflow is not scheduled to start until {stamp} ({remain} seconds remain).  "
        f"Next evaluation will occur in {countdown} seconds"
    )
    (request,) = requests(decision)
    assert (request.task, request.queue) == (config.orchestrate_task, config.queue_name)
    assert request.countdown == countdown
    assert request.payload["current_step"] == "scheduled"
    assert decision.workflow["workflow_completed"] is False


def test_scheduled_reevaluation_starts_once_the_time_has_come() -> None:
    stamp = "Fri, 27 Nov 2026 06:00:10 GMT"
    first = run(
        stored_workflow(milestones=["scheduled", "build"], scheduled_start_time=stamp),
        {"id": WID},
    )
    again = run(saved(first), requests(first)[0].payload, now=NOW + timedelta(seconds=5), key="m2")
    assert lines(again)[-1].startswith("Workflow is not scheduled to start until")
    assert "(5 seconds remain)" in lines(again)[-1]
    assert requests(again)[0].countdown == 5
    assert "Starting Workflow Milestone: scheduled" not in lines(again)[3:]
    later = run(saved(again), requests(again)[0].payload, now=NOW + timedelta(seconds=11), key="m3")
    assert lines(later)[-4:] == [
        "Workflow is now scheduled to start",
        "Completed Workflow Milestone: scheduled, in 11 second(s)",
        "Starting Workflow Milestone: build",
        "Dispatching a build request to exchange 1, docker build cluster 123abc...",
    ]


def test_scheduled_without_time() -> None:
    decision = run(stored_workflow(milestones=["scheduled"]), {"id": WID})
    assert failure_reason(decision) == (
        "Unable to execute deployment - the scheduled milestone was invoked, "
        "but no scheduled_start_time was set!"
    )


def test_scheduled_with_an_unreadable_time_names_it() -> None:
    decision = run(
        stored_workflow(milestones=["scheduled"], scheduled_start_time="next tuesday"), {"id": WID}
    )
    assert "'next tuesday'" in failure_reason(decision)


def test_an_unreadable_time_from_a_message_is_named_but_never_saved() -> None:
    """The Manager stores a time or nothing: the PUT keeps the stored value, or the
    real Manager would refuse the save and the workflow would never be marked failed."""
    stamp = "Tue, 05 Mar 2013 23:25:19 GMT"
    for stored_value in (None, stamp):
        decision = run(
            stored_workflow(milestones=["scheduled"], scheduled_start_time=stored_value),
            {"id": WID, "scheduled_start_time": "next tuesday"},
        )
        assert "'next tuesday'" in failure_reason(decision)
        assert decision.workflow["workflow_error"] is True
        assert decision.workflow["scheduled_start_time"] == stored_value


@pytest.mark.parametrize(
    "stamp",
    [
        "Tue, 05 Mar 2013 23:25:19 GMT",
        "Tue, 05 Mar 2013 23:25:19 UTC",
        "Tue, 05 Mar 2013 23:25:19 +0100",
    ],
)
def test_scheduled_time_forms(stamp: str) -> None:
    decision = run(
        stored_workflow(milestones=["scheduled"], scheduled_start_time=stamp), {"id": WID}
    )
    assert "Workflow is now scheduled to start" in lines(decision)
    assert decision.workflow["workflow_completed"] is True


# -- duplicates, stale and out-of-order messages --------------------------------------------


def test_completed_workflow_ignores_everything() -> None:
    stored = stored_workflow(workflow_completed=True, current_step="workflow_completed")
    decision = run(stored, {"id": WID, "current_step": "deploy", "workflow_completed": True})
    assert decision.outcome is Outcome.DUPLICATE
    assert decision.workflow is None and decision.effects == ()


def test_stale_message_is_ignored() -> None:
    first = started()
    second = run(saved(first), callback(first), key="m2")  # now at deploy
    again = run(saved(second), callback(first), key="m3")  # build callback once more
    assert again.outcome is Outcome.DUPLICATE
    start_again = run(saved(second), {"id": WID}, key="m4")
    assert start_again.outcome is Outcome.DUPLICATE


def test_message_ahead_of_the_store_waits_then_is_inconsistent() -> None:
    first = started()
    early = callback(first)
    decision = run(stored_workflow(), early, key="m2")  # the save has not landed yet
    assert decision.outcome is Outcome.AHEAD and decision.effects == ()
    later = run(stored_workflow(), early, key="m2", ahead_since=NOW - timedelta(seconds=299))
    assert later.outcome is Outcome.AHEAD
    expired = run(stored_workflow(), early, key="m2", ahead_since=NOW - timedelta(seconds=301))
    assert expired.outcome is Outcome.INCONSISTENT
    assert "300 seconds" in expired.summary


def test_message_reporting_an_unknown_step_is_inconsistent() -> None:
    stored = stored_workflow(current_step="build")
    decision = run(stored, {"id": WID, "current_step": "bake"})
    assert decision.outcome is Outcome.INCONSISTENT
    assert "'bake'" in decision.summary


def test_duplicate_completion_keeps_one_email_id() -> None:
    first = started(milestones=["build"], event_log=[])
    message = callback(
        first,
        notifications_config={"email": {"events": {"on_workflow_completed": ["x@example.com"]}}},
    )
    done = run(saved(first), message, key="m2")
    redelivered = run(saved(first), message, key="m2")
    other_copy = run(saved(first), message, key="m3")
    ids = {e.task_id for d in (done, redelivered, other_copy) for e in emails(d)}
    assert ids == {email_task_id(WID)}
    assert run(saved(done), message, key="m3").outcome is Outcome.DUPLICATE


# -- merge and notifications -------------------------------------------------------------------


def test_null_in_message_never_erases_stored_values() -> None:
    decision = run(stored_workflow(), {"id": WID, "deployment_repo": None, "source_repo": None})
    assert decision.workflow["deployment_repo"] == "Test-Org/app_docker"
    assert decision.workflow["source_repo"] == "Test-Org/app"


def test_event_log_is_an_ordered_union() -> None:
    stored = stored_workflow(event_log=["a", "b"])
    decision = run(stored, {"id": WID, "event_log": ["b", "c", "a"]})
    assert decision.workflow["event_log"][:3] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("repos", "body_start"),
    [
        ({}, "Source Commit:\nTest-Org/app/commit/abc123"),
        ({"source_repo_git_ref": None}, "Source Repo:\nTest-Org/app"),
        ({"source_repo": None}, "Deployment Repo:\nhttps://github.com/Test-Org/app_docker"),
    ],
)
def test_email_body_variants(repos: dict[str, Any], body_start: str) -> None:
    stored = stored_workflow(milestones=[], **repos)
    config = {
        "email": {
            "events": {"on_workflow_completed": ["g", "z@x"]},
            "groups": {"g": ["a@x", "b@x"]},
        }
    }
    decision = run(stored, {"id": WID, "notifications_config": config})
    (email,) = emails(decision)
    assert email.payload["message"] == (
        f"{body_start}\n\nFor more information, please see:\n"
        f"http://ui.example/index.html#/oa/workflows/workflows/{WID}"
    )
    assert email.payload["notifications"] == {"email_addresses": ["a@x", "b@x", "z@x"]}
    assert email.payload["prefix"] == f"SUCCEEDED {PREFIX}"


def test_unknown_repo_prefix() -> None:
    decision = run(stored_workflow(deployment_repo=None), {"id": WID})
    assert decision.workflow["event_log"][0] == f"[OA][{WID}][Unknown] Starting workflow..."


def test_no_email_without_the_event_list() -> None:
    config = {"email": {"events": {"on_workflow_completed": "ops@example.com"}}}
    decision = run(stored_workflow(milestones=[]), {"id": WID, "notifications_config": config})
    assert emails(decision) == []


@pytest.mark.parametrize(
    "email",
    [
        {"events": {"on_workflow_completed": []}},
        {"events": {"on_workflow_completed": ["g"]}, "groups": {"g": []}},
    ],
)
def test_an_empty_event_list_is_a_list_the_email_goes_out(email: dict[str, Any]) -> None:
    """Section 7.4 sends whenever the entry is a list, as OpenAperture's module does."""
    config = {"email": email}
    decision = run(stored_workflow(milestones=[]), {"id": WID, "notifications_config": config})
    (sent,) = emails(decision)
    assert sent.payload["notifications"] == {"email_addresses": []}
    assert decision.workflow["event_log"][-1] == (
        f"{PREFIX} Sending on_workflow_completed email notification to the following recipient(s): "
    )


def test_saved_view_always_carries_workflow_completed() -> None:
    body = persisted_view({"id": WID})
    assert body["workflow_completed"] is False
    assert "id" not in body and "step_time" not in body


def test_recipients_expand_groups_and_keep_other_entries_as_they_are() -> None:
    config = {
        "email": {
            "groups": {"team": ["a@x", "b@x"], "solo": "s@x"},
            "events": {"on_workflow_completed": ["team", "unknown-group", 42, "solo", "a@x"]},
        }
    }
    decision = run(stored_workflow(milestones=[]), {"id": WID, "notifications_config": config})
    (email,) = emails(decision)
    assert email.payload["notifications"]["email_addresses"] == [
        "a@x",
        "b@x",
        "unknown-group",
        42,
        "s@x",
        "a@x",
    ]
    assert lines(decision)[-1].endswith("recipient(s): a@x, b@x, unknown-group, 42, s@x, a@x")


def test_build_cluster_is_fixed_per_run_and_spread_over_runs() -> None:
    clusters = [{"etcd_token": f"build-{i}", "messaging_exchange_id": 1} for i in range(3)]

    def chosen(workflow_id: str, started: str) -> str:
        stored = stored_workflow(id=workflow_id, workflow_start_time=started)
        decision = run(stored, {"id": workflow_id}, topology=FakeTopology(build_clusters=clusters))
        (request,) = requests(decision)
        return request.payload["docker_build_etcd_token"]

    started = "2026-11-27T05:00:00Z"
    # a transition redone from the same state picks the same cluster, every time
    assert len({chosen(WID, started) for _ in range(5)}) == 1
    runs = {chosen(f"00000000-0000-4000-8000-{i:012d}", started) for i in range(40)}
    assert runs == {"build-0", "build-1", "build-2"}


@pytest.mark.parametrize(
    ("stored_step", "message_step"), [("", None), (None, ""), ("", ""), ("", "ignored-absent")]
)
def test_an_empty_current_step_means_no_step(stored_step: Any, message_step: Any) -> None:
    message: dict[str, Any] = {"id": WID}
    if message_step != "ignored-absent":
        message["current_step"] = message_step
    decision = run(stored_workflow(current_step=stored_step), message)
    assert decision.outcome is Outcome.APPLIED
    assert lines(decision)[:2] == ["Starting workflow...", "Starting Workflow Milestone: build"]
    assert requests(decision)[0].payload["current_step"] == "build"


def test_chats_carry_the_rooms_where_notifications_reads_them() -> None:
    rooms = {"hipchat": {"room_names": ["Deploys", "Team A"]}}
    decision = run(stored_workflow(), {"id": WID, "notifications_config": rooms})
    chats = [e.payload for e in decision.effects if isinstance(e, ChatNotification)]
    assert chats and all(c["room_names"] == ["Deploys", "Team A"] for c in chats)
    assert all(c["notifications"] == {"hipchat_rooms": ["Deploys", "Team A"]} for c in chats)
    plain = run(stored_workflow(), {"id": WID})
    chats = [e.payload for e in plain.effects if isinstance(e, ChatNotification)]
    assert all(c["room_names"] is None and "notifications" not in c for c in chats)


@pytest.mark.parametrize(
    "parts",
    [
        (WID, "build", "request", "2026-01-01T00:00:00.000000+00:00"),
        (WID, "on_workflow_completed"),
        (WID, "on_workflow_completed", 2),
        ("é\u00e9 ünïcode", None, 3.5),
        (),
    ],
)
def test_derived_task_ids_are_the_uuid5_of_their_parts(parts: tuple[object, ...]) -> None:
    name = "\x1f".join(str(p) for p in parts)
    expected = str(uuid.uuid5(TASK_ID_NAMESPACE, name))
    assert derived_task_id(*parts) == expected
    assert uuid.UUID(expected).version == 5
