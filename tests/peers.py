"""Peer workers for system tests, run as their own process:

    PEERS_RECORD=/tmp/rec.jsonl PEERS_QUEUES=builder,deployer,... \
        CELERY_BROKER_URL=amqp://... celery -A tests.peers worker -P threads -c 8

They behave like OpenAperture's builder, deployer and notification workers: a build or
deploy request is answered at once with `step_completed` (or `step_failed` when the
request's `test_instructions.fail_step` names the step); PEERS_DUPLICATE=1 sends every
callback twice, from two threads at once. Every request, chat and e-mail received is
appended to PEERS_RECORD as one JSON line, for the test to check afterwards.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from workflow_orchestrator.worker_api import step_completed, step_failed, worker_app

#: Always the test's own broker URL, given by the test: no default, so the peers can never
#: fall back to the machine's shared vhost `/`.
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
if not BROKER_URL:
    raise RuntimeError("tests.peers needs CELERY_BROKER_URL (the test's own virtual host)")
RECORD = os.environ.get("PEERS_RECORD", "/tmp/peers-record.jsonl")
DUPLICATE = os.environ.get("PEERS_DUPLICATE") == "1"
Q = {
    name: os.environ.get(f"PEERS_{name.upper()}_QUEUE", default)
    for name, default in (
        ("builder", "builder"),
        ("deployer", "deployer"),
        ("deploy_oa", "deploy_oa"),
        ("hipchat", "notifications_hipchat"),
        ("email", "notifications_email"),
        ("orchestration", "workflow_orchestration"),
    )
}

app = worker_app(
    "test-peers",
    BROKER_URL,
    queues=[Q["builder"], Q["deployer"], Q["deploy_oa"], Q["hipchat"], Q["email"]],
    orchestration_queue=Q["orchestration"],
)
_write_lock = threading.Lock()


def record(kind: str, **fields: Any) -> None:
    line = json.dumps({"kind": kind, **fields}) + "\n"
    with _write_lock, open(RECORD, "a") as handle:
        handle.write(line)


def behave(task: Any, request: dict[str, Any]) -> None:
    step = request.get("current_step")
    record(
        "request", task=task.name, task_id=task.request.id, workflow=request.get("id"), step=step
    )
    instructions = request.get("test_instructions") or {}
    if instructions.get("fail_step") == step:
        step_failed(app, request, f"{step} failed on a test peer", "exit status 1")
        return
    reply = dict(request)
    if task.name == "builder.build" and not reply.get("etcd_token"):
        reply["etcd_token"] = "deploy-cluster-1"
    if DUPLICATE:
        twin = threading.Thread(target=step_completed, args=(app, reply))
        twin.start()
        step_completed(app, reply)
        twin.join()
    else:
        step_completed(app, reply)


@app.task(name="builder.build", bind=True, shared=False)
def build(self: Any, request: dict[str, Any]) -> None:
    behave(self, request)


@app.task(name="deployer.deploy", bind=True, shared=False)
def deploy(self: Any, request: dict[str, Any]) -> None:
    behave(self, request)


@app.task(name="deployer.deploy_oa", bind=True, shared=False)
def deploy_oa(self: Any, request: dict[str, Any]) -> None:
    behave(self, request)


@app.task(name="notifications.hipchat", bind=True, shared=False)
def hipchat(self: Any, note: dict[str, Any]) -> None:
    record("chat", task_id=self.request.id, prefix=note.get("prefix"), message=note.get("message"))


@app.task(name="notifications.email", bind=True, shared=False)
def email(self: Any, mail: dict[str, Any]) -> None:
    workflow = str(mail.get("prefix", "")).split("[OA][", 1)[-1].split("]", 1)[0]
    record("email", task_id=self.request.id, workflow=workflow, subject=mail.get("prefix"))
