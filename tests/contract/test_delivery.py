"""§3.3, §6 system events, §9 errors and delivery: what a plain client and a raw AMQP
publisher see, to the letter."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection, Exchange, Producer, Queue

from tests.support import wait_for

from .conftest import ORCHESTRATE, Contract, celery_queue

REASON = "x-orchestrator-dead-letter-reason"
AT = "x-orchestrator-dead-lettered-at"


def events_for(contract: Contract, message_id: str) -> list[dict]:
    return [
        e for e in contract.emulator.system_events() if e["data"].get("message_id") == message_id
    ]


def test_queues_are_declared_as_any_celery_client_declares_them(contract: Contract) -> None:
    """§9: durable, the same-named durable direct exchange, no x-arguments: a plain
    declaration of each queue must not be refused (PRECONDITION_FAILED)."""
    names = [
        contract.settings.queue_name,
        contract.settings.error_queue_name,
        contract.settings.builder_queue,
        contract.settings.hipchat_queue,
    ]
    contract.dead_letters()  # makes sure the error queue exists
    with Connection(contract.settings.celery_broker_url) as conn:
        for name in names:
            channel = conn.channel()
            Queue(
                name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True
            )(channel).declare()
            channel.close()


def test_an_ahead_message_past_the_timeout_is_inconsistent(contract: Contract) -> None:
    """§3.3: retried, then (OUT_OF_ORDER_TIMEOUT, 1 s here) a system event and a dead letter."""
    contract.dead_letters()
    wid = contract.new_workflow(["build", "deploy"])
    task_id = contract.send({"id": wid, "current_step": "deploy"})
    dead: list = []
    wait_for(lambda: dead.extend(contract.dead_letters()) or dead, what="the dead letter")
    (message,) = dead
    assert message.headers["id"] == task_id
    assert message.headers[AT] and message.headers[REASON]
    wait_for(lambda: events_for(contract, task_id), what="the system event")
    (event,) = events_for(contract, task_id)
    assert event["type"] == "unhandled_exception" and event["severity"] == "error"
    assert event["data"] == {
        "component": "workflow_orchestration",
        "exchange_id": "1",
        "hostname": contract.settings.hostname,
        "kind": "inconsistent_message",
        "workflow_id": wid,
        "message_id": task_id,
    }
    assert contract.workflow(wid)["current_step"] in (None, "")


@pytest.mark.parametrize(
    "body",
    [{"id": "x"}, "just a string", None, [[{"id": "x"}], {}]],
    ids=["object", "string", "null", "two-items"],
)
def test_a_task_header_with_a_body_that_is_not_args_kwargs_embed(
    contract: Contract, body: object
) -> None:
    """§9: dead-lettered (body and headers unchanged), a system event, the worker goes on."""
    contract.dead_letters()
    task_id = str(uuid.uuid4())
    raw = json.dumps(body).encode()
    with Connection(contract.settings.celery_broker_url) as conn:
        Producer(conn.default_channel).publish(
            raw,
            exchange=Exchange(contract.settings.queue_name, "direct"),
            routing_key=contract.settings.queue_name,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": ORCHESTRATE, "id": task_id, "lang": "py"},
        )
    dead: list = []
    wait_for(lambda: dead.extend(contract.dead_letters()) or dead, what="the dead letter")
    (message,) = dead
    assert message.body in (raw, raw.decode())
    assert message.headers["task"] == ORCHESTRATE and message.headers["id"] == task_id
    assert message.content_type == "application/json"
    wait_for(lambda: events_for(contract, task_id), what="the system event")
    assert events_for(contract, task_id)[0]["data"]["kind"] == "invalid_message"
    assert contract.orchestrator.alive()
    good = contract.new_workflow(["build"])
    contract.send({"id": good})
    assert contract.wait_completed(good)["workflow_error"] is False


def test_an_invalid_message_names_the_field_and_is_dead_lettered_once(contract: Contract) -> None:
    """§9 invalid input; §6 `message_id` is the Celery task id, `workflow_id` null when
    the id is not usable, the workflow's id when only another field is wrong; the worker
    carries on."""
    contract.dead_letters()
    workflow_id = str(uuid.uuid4())
    task_id = contract.send({"id": workflow_id, "milestones": ["build", 7]})
    no_id = contract.send({"force_build": True})
    dead: list = []
    wait_for(lambda: dead.extend(contract.dead_letters()) or len(dead) >= 2, what="dead letters")
    assert {m.headers["id"] for m in dead} == {task_id, no_id}
    reasons = {m.headers["id"]: m.headers[REASON] for m in dead}
    assert "milestones" in reasons[task_id]
    assert "id" in reasons[no_id]
    wait_for(lambda: events_for(contract, no_id), what="the system event")
    (event,) = events_for(contract, no_id)
    assert event["data"]["kind"] == "invalid_message" and event["data"]["workflow_id"] is None
    wait_for(lambda: events_for(contract, task_id), what="the other system event")
    (event,) = events_for(contract, task_id)  # its id is usable: the event names it
    assert event["data"]["kind"] == "invalid_message"
    assert event["data"]["workflow_id"] == workflow_id


def test_a_dead_letter_keeps_the_message_properties(contract: Contract) -> None:
    contract.dead_letters()
    task_id = str(uuid.uuid4())
    with Connection(contract.settings.celery_broker_url) as conn:
        Producer(conn.default_channel).publish(
            json.dumps("not celery's envelope").encode(),
            exchange=Exchange(contract.settings.queue_name, "direct"),
            routing_key=contract.settings.queue_name,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": ORCHESTRATE, "id": task_id},
            correlation_id=task_id,
            app_id="a-plain-publisher",
            type="orchestration",
        )
    dead: list = []
    wait_for(lambda: dead.extend(contract.dead_letters()) or dead, what="the dead letter")
    (message,) = dead
    assert message.properties.get("correlation_id") == task_id
    assert message.properties.get("type") == "orchestration"
    assert message.properties.get("app_id") == "a-plain-publisher"


def test_an_unknown_workflow_is_dead_lettered_without_retrying(contract: Contract) -> None:
    """§3.2: a 404 on GET /workflows/{id}: system event, dead letter, no retry."""
    contract.dead_letters()
    unknown = str(uuid.uuid4())
    before = contract.emulator.counters().get("GET /workflows/{id}", 0)
    task_id = contract.send({"id": unknown})
    dead: list = []
    wait_for(lambda: dead.extend(contract.dead_letters()) or dead, what="the dead letter")
    assert dead[0].headers["id"] == task_id
    wait_for(lambda: events_for(contract, task_id), what="the system event")
    assert events_for(contract, task_id)[0]["data"]["kind"] == "unknown_workflow"
    assert events_for(contract, task_id)[0]["data"]["workflow_id"] == unknown
    assert contract.emulator.counters().get("GET /workflows/{id}", 0) - before == 1


def test_the_plain_celery_queue_of_the_peers_gets_the_request(contract: Contract) -> None:
    """§1: a builder that only runs `celery worker -Q builder` (Celery's automatic queue)."""
    queue = celery_queue(contract.settings.builder_queue)
    assert queue.exchange.name == contract.settings.builder_queue
