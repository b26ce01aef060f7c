"""Through the real orchestrator worker: a build for another region's exchange goes to
that region's broker (another virtual host with its own user and password), and the
orchestrator lives with the Manager's real answers (PUTs refused, `""` steps, rooms)."""

from __future__ import annotations

import json
from collections.abc import Callable

from kombu import Connection

from tests.services import Vhost
from tests.support import wait_for
from workflow_orchestrator.queues import plain_queue
from workflow_orchestrator.worker_api import step_completed

from .conftest import System


def test_a_build_for_another_region_goes_to_its_broker(
    system: System, extra_vhost: Callable[..., Vhost]
) -> None:
    region = extra_vhost("region4")
    emulator = system.emulator
    emulator.add_exchange("4", name="region 4")
    emulator.add_module("4", "builder", hostname="builder-4")
    emulator.add_broker(40, "4", name="region 4's broker")
    emulator.add_broker_connection(
        40, region.host, region.port, region.user, region.password, region.name
    )
    workflow_id = system.new_workflow(["build"])
    system.start(workflow_id, build_messaging_exchange_id="4")

    with Connection(region.url) as conn:
        inbox = plain_queue(system.settings.builder_queue)(conn.default_channel)
        inbox.declare()
        message = wait_for(lambda: inbox.get(no_ack=True), 30, "the build on region 4's broker")
    (request,), _, _ = json.loads(message.body)
    assert message.headers["task"] == system.settings.builder_task
    assert request["current_step"] == "build"
    assert request["workflow_orchestration_broker_id"] == system.settings.broker_id
    assert system.recorder.requests.get(workflow_id) in (None, [])  # not on our own broker

    step_completed(system.caller, request, "built in region 4")
    done = system.wait_completed(workflow_id)
    assert done["workflow_error"] is False
    assert "Dispatching a build request to exchange 4, docker build cluster " in " ".join(
        system.events(workflow_id)
    )
    seen = json.dumps([system.emulator.workflow_puts(workflow_id), system.emulator.system_events()])
    assert region.password not in seen
    assert region.password not in system.orchestrator.log()
    assert system.recorder.requests.get(workflow_id) in (None, [])


def test_refused_saves_do_not_send_the_builder_request_again(system: System) -> None:
    workflow_id = system.new_workflow(["build"])
    system.emulator.fail_next("PUT /workflows/{id}", 3, 500)
    system.start(workflow_id)
    done = system.wait_completed(workflow_id)
    assert done["workflow_error"] is False
    builds = [
        r for r in system.recorder.requests[workflow_id] if r[0] == system.settings.builder_task
    ]
    assert len(builds) == 1, builds


def test_an_empty_current_step_starts_normally(system: System) -> None:
    workflow_id = system.new_workflow(["build"], current_step="")
    system.start(workflow_id, current_step="")
    done = system.wait_completed(workflow_id)
    assert done["workflow_error"] is False
    assert system.events(workflow_id)[:2] == [
        "Starting workflow...",
        "Starting Workflow Milestone: build",
    ]


def test_chats_carry_hipchat_rooms(system: System) -> None:
    rooms = ["Deploys", "Team A"]
    workflow_id = system.new_workflow(["build"])
    system.start(workflow_id, notifications_config={"hipchat": {"room_names": rooms}})
    system.wait_completed(workflow_id)
    chats = wait_for(
        lambda: [c for c in system.recorder.chats[workflow_id] if c["prefix"].endswith("]")],
        what="chats",
    )
    ours = [c for c in chats if c["prefix"].count("][") == 2]  # the orchestrator's own lines
    assert ours and all(c["notifications"] == {"hipchat_rooms": rooms} for c in ours)
    assert all(c["room_names"] == rooms for c in ours)
